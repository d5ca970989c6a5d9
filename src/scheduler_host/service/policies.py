"""The limits and tunings the use cases apply, as small values: the composition root builds them
from the settings, so no use case reads configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulePolicy:
    """What a schedule may be, and how many an install may have."""

    min_interval_seconds: int
    max_schedules_per_install: int


@dataclass(frozen=True)
class AccessPolicy:
    """Who may call, and how often."""

    runner_tokens: tuple[str, ...]
    admin_tokens: tuple[str, ...]
    mutations_per_minute: int
    reads_per_minute: int
    manual_runs_per_minute: int


@dataclass(frozen=True)
class DispatchPolicy:
    """When and how the dispatcher fires."""

    catchup_seconds: int
    runner_timeout_seconds: float
    # Wait before the first retry of a failed Runner call; each further retry waits twice as long.
    runner_retry_base_seconds: float
    # Added to the longest a run can take to make its claim's lease.
    lease_margin_seconds: float
    poll_seconds: float
    batch_size: int
    max_in_flight: int
