"""What the dispatcher decides without I/O: what a due schedule does now (run, skip, disable,
wait for its install), how long a claim is leased, how long to back off, which key names an
occurrence."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from functools import lru_cache

from scheduler_host.domain.endpoints import unschedulable_reason
from scheduler_host.domain.runs import RunTrigger
from scheduler_host.domain.timing import Timing, next_fire, timing_of
from scheduler_host.service.policies import DispatchPolicy
from scheduler_host.service.ports import ClaimPlan, RunTarget, SkippedOccurrence

log = logging.getLogger("scheduler_host.dispatch")

MAX_ATTEMPTS = 3
# A run taken over more often than this (its process died each time, or it cannot be recorded)
# is finished as an error instead of being run again.
MAX_TAKEOVERS = 3
RUN_HISTORY_LIMIT = 100
ENDPOINT_MISSING = "Schedule endpoint not found; disabling schedule"
SKIPPED_IN_FLIGHT = "Skipped: the previous run was still in flight"
SKIPPED_MISSED = "Skipped: missed occurrences older than the catch-up window"
UNEVALUABLE = "Schedule cron or time zone could not be evaluated; disabling schedule"
SKIPPED_INSTALL_DISABLED = "Skipped: the install was disabled before the run could be retried"
_IDEMPOTENCY_NAMESPACE = uuid.UUID("0f4a4c52-2d55-4a8e-9a57-6c1e3b8e5d21")


def abandoned(attempts: int) -> str:
    return f"abandoned after {attempts} attempts"


def idempotency_key(schedule_id: uuid.UUID, trigger: RunTrigger, scheduled_time: datetime) -> str:
    """The same for every attempt and every takeover of one occurrence, in every process."""
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{schedule_id}/{trigger}/{scheduled_time}"))


@lru_cache(maxsize=8192)
def _next_after(timing: Timing, after: datetime) -> datetime | None:
    # Many schedules share a timing (those without a jitter share it across ids) and fall due
    # at the same instant: a burst computes each following fire once.
    return next_fire(timing, after)


@lru_cache(maxsize=4096)
def endpoint_unschedulable(method: str, path: str) -> bool:
    return bool(unschedulable_reason(method, path))


def plan_claim(target: RunTarget, now: datetime, catchup: timedelta) -> ClaimPlan:
    """Decide what a due schedule does now: run, skip, disable or wait for its install.

    Fires from next_run_time up to now are due. Those older than the catch-up window make one
    skipped record; of those inside it, only the latest runs (or is skipped when a run is still
    in flight). The schedule then continues with the first fire after now, computed by the same
    function PreviewSchedule uses; a one-time schedule, whose single fire has passed, is then
    complete (disabled, no next run).
    """
    schedule = target.schedule
    if not target.install.enabled:
        # Kept, but off the due index until UpsertInstall enables the install and recomputes it.
        return ClaimPlan(park=True)
    if not target.endpoint_found or endpoint_unschedulable(
        schedule.endpoint_method, schedule.endpoint_path
    ):
        return ClaimPlan(disable_error=ENDPOINT_MISSING)
    first = schedule.next_run_time
    assert first is not None  # the due query selects only schedules with one
    timing = timing_of(schedule)
    window_start = now - catchup
    skipped: list[SkippedOccurrence] = []
    candidate: datetime | None = first
    if first < window_start:
        skipped.append(SkippedOccurrence(first, SKIPPED_MISSED))
        candidate = _next_after(timing, window_start - timedelta(microseconds=1))
    latest: datetime | None = None
    while candidate is not None and candidate <= now:
        latest = candidate
        candidate = _next_after(timing, candidate)
    done = schedule.run_at is not None and candidate is None
    if latest is not None and target.run_in_flight:
        skipped.append(SkippedOccurrence(latest, SKIPPED_IN_FLIGHT))
        latest = None
    return ClaimPlan(tuple(skipped), latest, candidate, complete=done)


def safe_plan(target: RunTarget, now: datetime, catchup: timedelta) -> ClaimPlan:
    """plan_claim; a schedule whose rules cannot be evaluated (say, a zone gone from the tz
    database) must not fail the whole batch again and again: it is disabled with a reason the
    operator can see."""
    try:
        return plan_claim(target, now, catchup)
    except Exception:
        log.exception("cannot evaluate schedule %s; disabling it", target.schedule.id)
        return ClaimPlan(disable_error=UNEVALUABLE)


def retry_delay(policy: DispatchPolicy, attempt: int) -> float:
    """Exponential backoff after call number `attempt` failed."""
    return float(policy.runner_retry_base_seconds * 2 ** (attempt - 1))


def lease_length(policy: DispatchPolicy) -> timedelta:
    """Longer than any run can take, so only a dead process's claim expires."""
    calls = MAX_ATTEMPTS * policy.runner_timeout_seconds
    backoff = sum(retry_delay(policy, n) for n in range(1, MAX_ATTEMPTS))
    return timedelta(seconds=calls + backoff + policy.lease_margin_seconds)
