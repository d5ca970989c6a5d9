"""PreviewSchedule: the next run times of an expression in a time zone, or of a stored schedule
(bounds and jitter included), computed by the same functions the dispatcher fires with."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from scheduler_host.domain.errors import FieldViolation, ScheduleNotFound, ValidationFailed
from scheduler_host.domain.install import InstallContext
from scheduler_host.domain.schedule import validate_uuid
from scheduler_host.domain.timing import (
    SCHEDULE_SPEC_INVALID,
    Timing,
    fires_after,
    min_interval,
    timing_of,
)
from scheduler_host.service.policies import SchedulePolicy
from scheduler_host.service.ports import Clock, UnitOfWorkFactory
from scheduler_host.service.schedule_input import ScheduleFields, check_fields

DEFAULT_PREVIEW_COUNT = 10
MAX_PREVIEW_COUNT = 100
START_TIME_INVALID = "START_TIME_INVALID"
_NO_SEED = uuid.UUID(int=0)


@dataclass(frozen=True)
class Preview:
    run_times: list[datetime]
    min_interval: timedelta


@dataclass(frozen=True)
class PreviewRequest:
    """`start_time` is a FieldViolation when the transport could not read it as a time."""

    cron: str
    timezone: str
    count: int
    start_time: datetime | FieldViolation | None
    schedule_id: str = ""


def start_time_violation(description: str) -> FieldViolation:
    return FieldViolation("start_time", START_TIME_INVALID, description)


def _common(request: PreviewRequest, violations: list[FieldViolation]) -> int:
    """The count to preview; the count and start_time violations added."""
    if request.count < 0:
        violations.append(FieldViolation("count", "COUNT_INVALID", "count must not be negative"))
    if isinstance(request.start_time, FieldViolation):
        violations.append(request.start_time)
    return DEFAULT_PREVIEW_COUNT if request.count == 0 else min(request.count, MAX_PREVIEW_COUNT)


async def preview_schedule(
    ctx: InstallContext,
    request: PreviewRequest,
    *,
    policy: SchedulePolicy,
    clock: Clock,
    uow_factory: UnitOfWorkFactory,
) -> Preview:
    """The run times strictly after the start (default now), as the dispatcher fires them."""
    if request.schedule_id:
        return await _preview_stored(ctx, request, uow_factory=uow_factory, clock=clock)
    fields = ScheduleFields(cron=request.cron, timezone=request.timezone)
    checked = check_fields(fields, frozenset({"cron", "timezone"}), policy, "")
    if not request.cron.strip():
        checked.add(FieldViolation("cron", "CRON_INVALID", "cron expression is empty"))
    count = _common(request, checked.violations)
    if checked.violations:
        raise ValidationFailed(checked.violations)
    assert checked.cron is not None
    timing = Timing.recurring(_NO_SEED, checked.cron, ZoneInfo(checked.timezone))
    return _preview(timing, request.start_time, count, clock)


async def _preview_stored(
    ctx: InstallContext,
    request: PreviewRequest,
    *,
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
) -> Preview:
    violations: list[FieldViolation] = []
    for name in ("cron", "timezone"):
        if getattr(request, name).strip():
            violations.append(
                FieldViolation(
                    name, SCHEDULE_SPEC_INVALID, f"{name} must be empty when schedule_id is set"
                )
            )
    sid = validate_uuid(request.schedule_id, "schedule_id")
    if isinstance(sid, FieldViolation):
        violations.append(sid)
    count = _common(request, violations)
    if violations:
        raise ValidationFailed(violations)
    assert isinstance(sid, uuid.UUID)
    async with uow_factory(autocommit=True) as uow:
        schedule = await uow.schedules.get(ctx.tenant_id, ctx.install_id, sid, for_update=False)
    if schedule is None:
        raise ScheduleNotFound(str(sid))
    return _preview(timing_of(schedule), request.start_time, count, clock)


def _preview(
    timing: Timing, start: datetime | FieldViolation | None, count: int, clock: Clock
) -> Preview:
    after = start if isinstance(start, datetime) else clock()
    return Preview(fires_after(timing, after, count), min_interval(timing))
