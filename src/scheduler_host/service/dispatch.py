"""The dispatcher (SPEC §7): claims due occurrences, calls the Runner, records each run.

Also the `RunScheduleNow` use case, which makes a manual run through the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from scheduler_host.config import Settings
from scheduler_host.domain.cron import CronExpression, parse_cron
from scheduler_host.domain.endpoints import unschedulable_reason
from scheduler_host.domain.errors import (
    DatabaseUnavailable,
    InstallDisabled,
    InstallNotFound,
    ScheduleNotFound,
    ValidationFailed,
)
from scheduler_host.domain.occurrences import next_occurrence
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.domain.schedule import truncate_error
from scheduler_host.service.access import count_call
from scheduler_host.service.deps import UseCaseDeps
from scheduler_host.service.ports import (
    ClaimedRun,
    ClaimPlan,
    Clock,
    DispatchStore,
    RunnerCall,
    RunnerClient,
    RunOutcome,
    RunTarget,
    SkippedOccurrence,
)
from scheduler_host.service.runs import parse_schedule_ids

log = logging.getLogger("scheduler_host.dispatch")

MAX_ATTEMPTS = 3
RUN_HISTORY_LIMIT = 100
ENDPOINT_MISSING = "Schedule endpoint not found; disabling schedule"
SKIPPED_IN_FLIGHT = "Skipped: the previous run was still in flight"
SKIPPED_MISSED = "Skipped: missed occurrences older than the catch-up window"
UNEVALUABLE = "Schedule cron or time zone could not be evaluated; disabling schedule"
SKIPPED_INSTALL_DISABLED = "Skipped: the install was disabled before the run could be retried"
# Manual runs are recorded at the request time; this many microsecond steps resolve two manual
# runs of one schedule requested in the same microsecond.
_MANUAL_TIME_PROBES = 5
_IDEMPOTENCY_NAMESPACE = uuid.UUID("0f4a4c52-2d55-4a8e-9a57-6c1e3b8e5d21")
# Finished runs are written together: the first of a group waits this long for others, and
# those that finish while a write is under way go in the next one.
FINISH_GATHER_SECONDS = 0.005
FINISH_BATCH_LIMIT = 500
CLAIMERS = 3  # claim transactions one process keeps under way in a burst


def idempotency_key(schedule_id: uuid.UUID, trigger: RunTrigger, scheduled_time: datetime) -> str:
    """The same for every attempt and every takeover of one occurrence, in every process."""
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{schedule_id}/{trigger}/{scheduled_time}"))


@lru_cache(maxsize=4096)
def _cron(source: str) -> CronExpression:
    # Stored expressions were validated when written; the interval rule is not re-applied.
    return parse_cron(source)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=8192)
def _next_after(cron: str, timezone: str, after: datetime) -> datetime | None:
    # Many schedules share an expression and fall due at the same instant: a burst computes
    # each following occurrence once.
    return next_occurrence(_cron(cron), _zone(timezone), after)


@lru_cache(maxsize=4096)
def _endpoint_unschedulable(method: str, path: str) -> bool:
    return bool(unschedulable_reason(method, path))


def plan_claim(target: RunTarget, now: datetime, catchup: timedelta) -> ClaimPlan:
    """Decide what a due schedule does now: run, skip, disable or wait for its install.

    Occurrences from next_run_time up to now are due. Those older than the catch-up window make
    one skipped record; of those inside it, only the latest runs (or is skipped when a run is
    still in flight). The schedule then continues with the first occurrence after now, computed
    by the same function PreviewSchedule uses.
    """
    schedule = target.schedule
    if not target.install.enabled:
        # Kept, but off the due index until UpsertInstall enables the install and recomputes it.
        return ClaimPlan(park=True)
    if not target.endpoint_found or _endpoint_unschedulable(
        schedule.endpoint_method, schedule.endpoint_path
    ):
        return ClaimPlan(disable_error=ENDPOINT_MISSING)
    first = schedule.next_run_time
    assert first is not None  # the due query selects only schedules with one
    window_start = now - catchup
    skipped: list[SkippedOccurrence] = []
    candidate: datetime | None = first
    if first < window_start:
        skipped.append(SkippedOccurrence(first, SKIPPED_MISSED))
        candidate = _next_after(
            schedule.cron, schedule.timezone, window_start - timedelta(microseconds=1)
        )
    latest: datetime | None = None
    while candidate is not None and candidate <= now:
        latest = candidate
        candidate = _next_after(schedule.cron, schedule.timezone, candidate)
    if latest is None:
        return ClaimPlan(tuple(skipped), None, candidate)
    if target.run_in_flight:
        skipped.append(SkippedOccurrence(latest, SKIPPED_IN_FLIGHT))
        return ClaimPlan(tuple(skipped), None, candidate)
    return ClaimPlan(tuple(skipped), latest, candidate)


def _safe_plan(target: RunTarget, now: datetime, catchup: timedelta) -> ClaimPlan:
    # A schedule whose rules cannot be evaluated (say, a zone gone from the tz database) must not
    # fail the whole batch again and again: it is disabled with a reason the operator can see.
    try:
        return plan_claim(target, now, catchup)
    except Exception:
        log.exception("cannot evaluate schedule %s; disabling it", target.schedule.id)
        return ClaimPlan(disable_error=UNEVALUABLE)


def retry_delay(settings: Settings, attempt: int) -> float:
    """Exponential backoff after call number `attempt` failed."""
    return float(settings.runner_retry_base_seconds * 2 ** (attempt - 1))


def lease_length(settings: Settings) -> timedelta:
    """Longer than any run can take, so only a dead process's claim expires."""
    calls = MAX_ATTEMPTS * settings.runner_timeout_seconds
    backoff = sum(retry_delay(settings, n) for n in range(1, MAX_ATTEMPTS))
    return timedelta(seconds=calls + backoff + settings.dispatch_lease_margin_seconds)


class Dispatcher:
    """Fires due schedules of this process; `run_once` is the step the loop repeats."""

    def __init__(
        self,
        store: DispatchStore,
        runner: RunnerClient,
        settings: Settings,
        clock: Clock,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observe: Callable[[str, float | None], None] | None = None,
    ) -> None:
        """`observe(status, lateness_seconds)` is told of every run recorded (for metrics)."""
        self._observe = observe
        self._store = store
        self._runner = runner
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._in_flight: dict[asyncio.Task[ScheduleRun | None], ClaimedRun] = {}
        self._finished: list[tuple[RunOutcome, asyncio.Future[ScheduleRun | None]]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._reserved = 0  # slots held by claims under way
        self._recording = 0  # runs in flight whose outcome waits to be written
        self._takeover_checked: float | None = None  # time.monotonic() of the last look
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the polling loop (one per server process)."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="scheduler-host-dispatcher")

    async def dispatch_due(
        self, limit: int | None = None
    ) -> list[asyncio.Task[ScheduleRun | None]]:
        """Claim what is due now and start those runs; returns their tasks without waiting."""
        claims, _, _ = await self._claim(
            self._settings.dispatch_batch_size if limit is None else limit
        )
        return [self._spawn(claim) for claim in claims]

    async def run_once(self) -> list[ScheduleRun]:
        """Dispatch everything due at the clock's now and wait for those runs to finish."""
        finished: list[ScheduleRun] = []
        more_due = True
        while more_due:
            claims, more_due, _ = await self._claim(self._settings.dispatch_batch_size)
            results = await asyncio.gather(*(self._spawn(claim) for claim in claims))
            finished.extend(run for run in results if run is not None)
        return finished

    async def _claim(self, limit: int) -> tuple[list[ClaimedRun], bool, datetime | None]:
        """Up to `limit` runs to make now: expired claims of dead processes first, then due
        occurrences; whether the batch was full, so that more may be due; and, when it was not,
        the next time a schedule falls due (None if none does)."""
        now = self._clock()
        lease_until = now + lease_length(self._settings)
        claims: list[ClaimedRun] = []
        tick = time.monotonic()
        # Expired leases are rare (a process died): looked for once a poll interval, not before
        # every batch of a burst, and again at once while they fill whole batches.
        last = self._takeover_checked
        if last is None or tick - last >= self._settings.dispatch_poll_seconds:
            # A clock that jumped must not make this process take over runs it is still making.
            own = [claim.run.id for claim in self._in_flight.values()]
            claims = await self._store.take_over_expired(now, limit, lease_until, own)
            self._takeover_checked = None if len(claims) >= limit else tick
        for claim in claims:
            log.info(
                "taking over run %s of schedule %s (attempt %d)",
                claim.run.id,
                claim.run.schedule_id,
                claim.run.attempt,
            )
        wanted = limit - len(claims)
        if wanted <= 0:
            return claims, True, None
        catchup = timedelta(seconds=self._settings.catchup_seconds)
        skipped = 0

        def plan(target: RunTarget) -> ClaimPlan:
            nonlocal skipped
            decided = _safe_plan(target, now, catchup)
            skipped += len(decided.skipped)
            return decided

        batch = await self._store.claim_due(now, wanted, lease_until, plan)
        if self._observe is not None:
            for _ in range(skipped):
                self._observe(RunState.SKIPPED.value, None)
        return claims + batch.runs, batch.schedules == wanted, batch.next_due

    async def load_target(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID
    ) -> RunTarget | None:
        return await self._store.load_target(tenant_id, install_id, schedule_id)

    async def run_now(self, target: RunTarget) -> ScheduleRun:
        """A manual run; it goes on even if the caller stops waiting for it."""
        now = self._clock()
        lease_until = now + lease_length(self._settings)
        claim = None
        for step in range(_MANUAL_TIME_PROBES):
            scheduled = now + timedelta(microseconds=step)
            claim = await self._store.start_manual_run(target, scheduled, now, lease_until)
            if claim is not None:
                break
        if claim is None:
            raise RuntimeError("could not record a manual run")
        result = await asyncio.shield(self._spawn(claim))
        return result if result is not None else claim.run

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming; let runs in flight finish within the grace period, release the rest."""
        self._stopping.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        running = dict(self._in_flight)
        if not running:
            return
        _, unfinished = await asyncio.wait(running, timeout=grace_seconds)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)
        # What the recorder still holds belongs to the runs just cancelled: they are released
        # below (taken over with the same idempotency key), not recorded half-way.
        if self._recorder is not None and not self._recorder.done():
            self._recorder.cancel()
            await asyncio.wait([self._recorder])
        self._finished.clear()
        for task in unfinished:
            claim = running[task]
            try:
                # Fenced by the lease: a run that managed to finish is left as it is.
                await self._store.release(claim, self._clock())
                log.info("released run %s of schedule %s", claim.run.id, claim.run.schedule_id)
            except Exception as exc:
                log.warning(
                    "could not release run %s (its lease will expire): %s", claim.run.id, exc
                )

    async def close(self) -> None:
        await self._runner.close()

    def _spawn(self, claim: ClaimedRun) -> asyncio.Task[ScheduleRun | None]:
        task = asyncio.create_task(self._guarded_run(claim), name=f"run-{claim.run.id}")
        self._in_flight[task] = claim
        task.add_done_callback(self._run_done)
        return task

    def _run_done(self, task: asyncio.Task[ScheduleRun | None]) -> None:
        self._in_flight.pop(task, None)
        self._slot_freed.set()

    async def _guarded_run(self, claim: ClaimedRun) -> ScheduleRun | None:
        try:
            return await self._execute(claim)
        except asyncio.CancelledError:
            raise
        except DatabaseUnavailable:
            # Not a failure of the run, and nothing can be recorded now (a run is never marked
            # failed because of an outage). The claim stays leased: once it expires, a process
            # takes the run over and calls the Runner again with the same idempotency key, so
            # an outcome the Runner gave during the outage is asked for again, not lost.
            log.warning(
                "run %s of schedule %s not recorded: the database is unavailable; it is retried "
                "with the same idempotency key when its lease expires",
                claim.run.id,
                claim.run.schedule_id,
            )
            return None
        except Exception:
            # The claim stays leased; when the lease expires, a process takes the run over.
            log.exception("run %s of schedule %s failed", claim.run.id, claim.run.schedule_id)
            return None

    async def _execute(self, claim: ClaimedRun) -> ScheduleRun | None:
        run, target, settings = claim.run, claim.target, self._settings
        started = time.monotonic()
        if not target.install.enabled:
            calls_made = run.attempt - 1  # a taken-over run: the count includes the call to come
            return await self._finish(
                claim, RunState.SKIPPED, SKIPPED_INSTALL_DISABLED, calls_made, started
            )
        schedule = target.schedule
        if not target.endpoint_found or _endpoint_unschedulable(
            schedule.endpoint_method, schedule.endpoint_path
        ):
            return await self._finish(
                claim, RunState.ERROR, ENDPOINT_MISSING, run.attempt, started, disable=True
            )
        key = idempotency_key(run.schedule_id, run.trigger, run.scheduled_time)
        attempt = run.attempt
        while True:
            verdict = await self._runner.execute(
                RunnerCall(
                    target, run.trigger, key, str(uuid.uuid4()), settings.runner_timeout_seconds
                )
            )
            if verdict.ok or not verdict.retryable or attempt >= MAX_ATTEMPTS:
                break
            await self._sleep(retry_delay(settings, attempt))
            attempt += 1
            if not await self._store.record_attempt(claim, attempt):
                log.warning("run %s was taken over by another process", run.id)
                return None
        status = RunState.SUCCESS if verdict.ok else RunState.ERROR
        return await self._finish(claim, status, verdict.error, attempt, started)

    async def _finish(
        self,
        claim: ClaimedRun,
        status: RunState,
        error: str | None,
        attempt: int,
        started: float,
        *,
        disable: bool = False,
    ) -> ScheduleRun | None:
        run = claim.run
        error = truncate_error(error) if error else None
        finished = await self._record(
            RunOutcome(
                claim,
                status,
                error,
                attempt,
                self._clock(),
                ENDPOINT_MISSING if disable else None,
            )
        )
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
            time.monotonic() - started,
            f" error={error!r}" if error else "",
        )
        if finished is not None and self._observe is not None:
            lateness = (
                (finished.start_time - finished.scheduled_time).total_seconds()
                if finished.start_time is not None
                else None
            )
            self._observe(finished.status.value, lateness)
        return finished

    async def _record(self, outcome: RunOutcome) -> ScheduleRun | None:
        """Write the outcome with the others finishing about now; what finish_runs says of it."""
        future: asyncio.Future[ScheduleRun | None] = asyncio.get_running_loop().create_future()
        self._finished.append((outcome, future))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(
                self._write_finished(), name="scheduler-host-run-recorder"
            )
        # Done with the Runner: its place counts for claiming while the outcome is written.
        self._recording += 1
        self._slot_freed.set()
        try:
            return await future
        finally:
            self._recording -= 1

    async def _write_finished(self) -> None:
        await asyncio.sleep(FINISH_GATHER_SECONDS)
        while self._finished:
            group = self._finished[:FINISH_BATCH_LIMIT]
            del self._finished[:FINISH_BATCH_LIMIT]
            try:
                results = await self._store.finish_runs([outcome for outcome, _ in group])
            except Exception as exc:
                # Each run of the group handles it as its own failure (an outage, say).
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _loop(self) -> None:
        # Several claimers: while one transaction waits on the database the others plan or
        # wait too, so a burst is not paced by the latency of one claim (SKIP LOCKED keeps them
        # apart as it keeps processes apart). Their polls are spread over the interval, which
        # also shortens the wait for a schedule made due by a change.
        poll = self._settings.dispatch_poll_seconds
        claimers = [
            asyncio.create_task(
                self._claim_loop(poll * n / CLAIMERS), name=f"scheduler-host-claimer-{n}"
            )
            for n in range(CLAIMERS)
        ]
        try:
            await asyncio.gather(*claimers)
        finally:
            for claimer in claimers:
                claimer.cancel()

    async def _claim_loop(self, delay: float) -> None:
        poll = self._settings.dispatch_poll_seconds
        batch = self._settings.dispatch_batch_size
        cap = self._settings.dispatch_max_in_flight
        # A claim is made for a whole batch, or for all the room left when the cap is lower:
        # claiming one run per freed slot would spend a transaction on each.
        room_for_a_claim = min(batch, cap)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        while not self._stopping.is_set():
            free = cap - (len(self._in_flight) - self._recording) - self._reserved
            if free < room_for_a_claim:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            wanted = min(batch, free)
            self._reserved += wanted
            try:
                claims, more_due, next_due = await self._claim(wanted)
            except Exception as exc:
                log.warning("dispatch failed, retrying in %.1f s: %s", poll, exc)
                claims, more_due, next_due = [], False, None
            finally:
                self._reserved -= wanted
                self._slot_freed.set()  # other claimers may wait for this room
            for claim in claims:
                self._spawn(claim)
            if more_due:
                continue  # runs are in flight while the next batch is claimed
            wait = poll
            if next_due is not None:
                # Wake when the next schedule falls due rather than up to a poll later (a
                # millisecond after: a timer may fire a little early).
                until_due = (next_due - self._clock()).total_seconds()
                wait = min(poll, max(0.0, until_due) + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)


@dataclass(frozen=True)
class DispatchDeps(UseCaseDeps):
    """The use-case dependencies plus the process's dispatcher (for RunScheduleNow)."""

    dispatcher: Dispatcher


async def run_schedule_now(
    install_id: str, schedule_id: str, *, deps: UseCaseDeps, dispatcher: Dispatcher
) -> ScheduleRun:
    """Run a schedule at once (trigger manual), at most N per tenant per minute; returns the run
    in its final state."""
    iid, sid, bad = parse_schedule_ids(install_id, schedule_id)
    if bad:
        raise ValidationFailed(bad)
    assert iid is not None and sid is not None
    async with deps.uow_factory() as uow:
        ctx = await uow.installs.context(iid)
    if ctx is None:
        raise InstallNotFound(str(iid))
    target = await dispatcher.load_target(ctx.tenant_id, iid, sid)
    if target is None:
        raise ScheduleNotFound(str(sid))
    if not ctx.enabled:
        raise InstallDisabled("the install is disabled; its schedules do not run")
    limit = deps.settings.manual_runs_per_minute
    await count_call(
        f"manual-runs:{ctx.tenant_id}",
        ctx.tenant_id,
        limit,
        "manual runs per tenant",
        uow_factory=deps.uow_factory,
        clock=deps.clock,
    )
    return await dispatcher.run_now(target)
