"""The run executor: one claimed run, from the Runner call (with its retries) to its recorded
outcome, with the log line and the metrics observation."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from scheduler_host.domain.runs import RunState, ScheduleRun
from scheduler_host.domain.schedule import truncate_error
from scheduler_host.service.dispatch.planning import (
    ENDPOINT_MISSING,
    MAX_ATTEMPTS,
    MAX_TAKEOVERS,
    SKIPPED_INSTALL_DISABLED,
    abandoned,
    endpoint_unschedulable,
    idempotency_key,
    retry_delay,
)
from scheduler_host.service.dispatch.recorder import OutcomeRecorder
from scheduler_host.service.policies import DispatchPolicy
from scheduler_host.service.ports import (
    CallOutcome,
    ClaimedRun,
    Clock,
    DispatchStore,
    RunnerCall,
    RunnerClient,
    RunOutcome,
)

log = logging.getLogger("scheduler_host.dispatch")

# observe(status, lateness_seconds): told of every run recorded (for metrics).
Observer = Callable[[str, float | None], None]


@dataclass(frozen=True)
class RunExecutor:
    """What a run needs, shared with the claim loop that builds it."""

    store: DispatchStore
    runner: RunnerClient
    recorder: OutcomeRecorder
    policy: DispatchPolicy
    clock: Clock
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    observe: Observer | None = None

    async def execute(self, claim: ClaimedRun) -> ScheduleRun | None:
        """Make the run and record it; None when the claim was lost to another process."""
        run, target = claim.run, claim.target
        started = time.monotonic()
        calls_made = run.attempt - 1  # on a taken-over run, the count includes the call to come
        if claim.takeovers > MAX_TAKEOVERS:
            return await self._finish(claim, RunState.ERROR, abandoned(calls_made), calls_made)
        if not target.install.enabled:
            return await self._finish(claim, RunState.SKIPPED, SKIPPED_INSTALL_DISABLED, calls_made)
        schedule = target.schedule
        if not target.endpoint_found or endpoint_unschedulable(
            schedule.endpoint_method, schedule.endpoint_path
        ):
            return await self._finish(
                claim, RunState.ERROR, ENDPOINT_MISSING, run.attempt, disable=True
            )
        outcome, attempt = await self._call(claim)
        if outcome is None:
            log.warning("run %s was taken over by another process", run.id)
            return None
        status = RunState.SUCCESS if outcome.ok else RunState.ERROR
        return await self._finish(claim, status, outcome.error, attempt, started=started)

    async def _call(self, claim: ClaimedRun) -> tuple[CallOutcome | None, int]:
        """Call the Runner until it succeeds, fails for good or MAX_ATTEMPTS calls were made;
        None when the claim was lost between two attempts."""
        run, policy = claim.run, self.policy
        key = idempotency_key(run.schedule_id, run.trigger, run.scheduled_time)
        attempt = run.attempt
        while True:
            call = RunnerCall(
                claim.target, run.trigger, key, str(uuid.uuid4()), policy.runner_timeout_seconds
            )
            outcome = await self.runner.execute(call)
            if outcome.ok or not outcome.retryable or attempt >= MAX_ATTEMPTS:
                return outcome, attempt
            await self.sleep(retry_delay(policy, attempt))
            attempt += 1
            if not await self.store.record_attempt(claim, attempt):
                return None, attempt

    async def _finish(
        self,
        claim: ClaimedRun,
        status: RunState,
        error: str | None,
        attempt: int,
        *,
        disable: bool = False,
        started: float | None = None,
    ) -> ScheduleRun | None:
        run = claim.run
        error = truncate_error(error) if error else None
        outcome = RunOutcome(
            claim, status, error, attempt, self.clock(), ENDPOINT_MISSING if disable else None
        )
        finished = await self.recorder.record(outcome)
        log.info(
            "run %s schedule=%s install=%s trigger=%s scheduled=%s status=%s attempts=%d "
            "duration=%.3fs%s",
            run.id,
            run.schedule_id,
            run.install_id,
            run.trigger.value,
            run.scheduled_time.isoformat(),
            status.value if finished is not None else "lost-claim",
            attempt,
            time.monotonic() - started if started is not None else 0.0,
            f" error={error!r}" if error else "",
        )
        if finished is not None and self.observe is not None:
            lateness = (
                (finished.start_time - finished.scheduled_time).total_seconds()
                if finished.start_time is not None
                else None
            )
            self.observe(finished.status.value, lateness)
        return finished
