"""Run records: one per occurrence fired, skipped or run by hand."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class RunTrigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class ScheduleRun:
    id: uuid.UUID
    tenant_id: str
    install_id: uuid.UUID
    schedule_id: uuid.UUID
    trigger: RunTrigger
    scheduled_time: datetime
    start_time: datetime | None
    finish_time: datetime | None
    status: RunState
    attempt: int
    error: str | None
