"""The dispatcher's claim loop: poll which buckets have work, claim each due bucket's occurrences
(several claims under way at once, within the cap on runs in flight), take over runs whose
process died, start the runs, and stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler_host.domain.errors import DatabaseUnavailable
from scheduler_host.domain.runs import RunState, ScheduleRun
from scheduler_host.service.dispatch.executor import Observer, RunExecutor
from scheduler_host.service.dispatch.planning import lease_length, safe_plan
from scheduler_host.service.dispatch.recorder import OutcomeRecorder
from scheduler_host.service.policies import DispatchPolicy
from scheduler_host.service.ports import (
    BucketWork,
    ClaimedRun,
    ClaimPlan,
    Clock,
    DispatchStore,
    RunnerClient,
    RunTarget,
)

log = logging.getLogger("scheduler_host.dispatch")

CLAIMERS = 3  # claim transactions one process keeps under way in a burst
# Manual runs are recorded at the request time; this many microsecond steps resolve two manual
# runs of one schedule requested in the same microsecond.
_MANUAL_TIME_PROBES = 5


@dataclass
class _Round:
    """What one poll found: the due buckets to claim, and the next time anything falls due."""

    due: deque[int]
    next_due: datetime | None = None

    def heard_of(self, when: datetime | None) -> None:
        if when is not None and (self.next_due is None or when < self.next_due):
            self.next_due = when


class Dispatcher:
    """Fires due schedules of this process; `run_once` is the step the loop repeats."""

    def __init__(
        self,
        store: DispatchStore,
        runner: RunnerClient,
        policy: DispatchPolicy,
        clock: Clock,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observe: Observer | None = None,
    ) -> None:
        self._recorder = OutcomeRecorder(store, self._slot_freed_now)
        self._executor = RunExecutor(
            store, runner, self._recorder, policy, clock, sleep=sleep, observe=observe
        )
        # The loop's own uses of the parts the executor holds.
        self._store, self._policy, self._clock = store, policy, clock
        self._in_flight: dict[asyncio.Task[ScheduleRun | None], ClaimedRun] = {}
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._reserved = 0  # slots held by claims under way
        self._takeovers_checked: float | None = None  # time.monotonic() of the last look
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the polling loop (one per server process)."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="scheduler-host-dispatcher")

    async def dispatch_due(self) -> list[asyncio.Task[ScheduleRun | None]]:
        """Claim what is due now and start those runs; returns their tasks without waiting."""
        tasks: list[asyncio.Task[ScheduleRun | None]] = []
        await self._round(lambda claim: tasks.append(self._spawn(claim)))
        return tasks

    async def run_once(self) -> list[ScheduleRun]:
        """Dispatch everything due at the clock's now and wait for those runs to finish."""
        tasks = await self.dispatch_due()
        results = await asyncio.gather(*tasks)
        return [run for run in results if run is not None]

    async def load_target(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID
    ) -> RunTarget | None:
        return await self._store.load_target(tenant_id, install_id, schedule_id)

    async def run_now(self, target: RunTarget) -> ScheduleRun:
        """A manual run; it goes on even if the caller stops waiting for it."""
        now = self._clock()
        lease_until = now + lease_length(self._policy)
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
        await self._recorder.abandon()
        for task in unfinished:
            await self._release(running[task])

    async def _release(self, claim: ClaimedRun) -> None:
        try:
            # Fenced by the lease: a run that managed to finish is left as it is.
            await self._store.release(claim, self._clock())
            log.info("released run %s of schedule %s", claim.run.id, claim.run.schedule_id)
        except Exception as exc:
            log.warning("could not release run %s (its lease will expire): %s", claim.run.id, exc)

    async def close(self) -> None:
        await self._executor.runner.close()

    # --- running --------------------------------------------------------------------------

    def _spawn(self, claim: ClaimedRun) -> asyncio.Task[ScheduleRun | None]:
        task = asyncio.create_task(self._guarded_run(claim), name=f"run-{claim.run.id}")
        self._in_flight[task] = claim
        task.add_done_callback(self._run_done)
        return task

    def _run_done(self, task: asyncio.Task[ScheduleRun | None]) -> None:
        self._in_flight.pop(task, None)
        self._slot_freed.set()

    def _slot_freed_now(self) -> None:
        self._slot_freed.set()

    async def _guarded_run(self, claim: ClaimedRun) -> ScheduleRun | None:
        try:
            return await self._executor.execute(claim)
        except asyncio.CancelledError:
            raise
        except DatabaseUnavailable:
            # Not a failure of the run, and nothing can be recorded now (a run is never marked
            # failed because of an outage). The claim stays leased: once it expires, a process
            # takes the run over and calls the Runner again with the same idempotency key.
            log.warning(
                "run %s of schedule %s not recorded: the database is unavailable; it is retried "
                "with the same idempotency key when its lease expires",
                claim.run.id,
                claim.run.schedule_id,
            )
            return None
        except Exception:
            # The claim stays leased; when the lease expires, a process takes the run over (a
            # bounded number of times: then it is finished as abandoned).
            log.exception("run %s of schedule %s failed", claim.run.id, claim.run.schedule_id)
            return None

    # --- claiming -------------------------------------------------------------------------

    def _free_slots(self) -> int:
        busy = len(self._in_flight) - self._recorder.waiting
        return self._policy.max_in_flight - busy - self._reserved

    async def _room(self, wanted: int) -> int:
        """Wait until at least `wanted` runs may start (or the cap's worth); how many may."""
        while not self._stopping.is_set():
            free = self._free_slots()
            if free >= wanted:
                return free
            self._slot_freed.clear()
            await self._slot_freed.wait()
        return 0

    async def _round(self, start: Callable[[ClaimedRun], object]) -> datetime | None:
        """One poll and the claims it calls for; the next time anything falls due."""
        now = self._clock()
        work = await self._store.poll()
        round_ = _Round(deque())
        for bucket in work:
            if bucket.next_run_time is not None and bucket.next_run_time <= now:
                round_.due.append(bucket.bucket)
            else:
                round_.heard_of(bucket.next_run_time)
        # Each process takes the due buckets in its own order, so replicas rarely meet.
        random.shuffle(round_.due)
        for claim in await self._take_over(work, now):
            start(claim)
        claimers = min(CLAIMERS, len(round_.due))
        await asyncio.gather(*(self._claim_buckets(round_, start) for _ in range(claimers)))
        return round_.next_due

    async def _claim_buckets(self, round_: _Round, start: Callable[[ClaimedRun], object]) -> None:
        batch = self._policy.batch_size
        room_for_a_claim = min(batch, self._policy.max_in_flight)
        while round_.due and not self._stopping.is_set():
            bucket = round_.due.popleft()
            while True:
                # A claim is made for a whole batch, or for all the room left when the cap is
                # lower: claiming one run per freed slot would spend a transaction on each.
                wanted = min(batch, await self._room(room_for_a_claim))
                if wanted <= 0:
                    return
                self._reserved += wanted
                try:
                    claimed, full, next_due = await self._claim(bucket, wanted)
                finally:
                    self._reserved -= wanted
                    self._slot_freed.set()  # other claimers may wait for this room
                for claim in claimed:
                    start(claim)
                if not (full and next_due is not None and next_due <= self._clock()):
                    round_.heard_of(next_due)
                    break

    async def _claim(
        self, bucket: int, limit: int
    ) -> tuple[list[ClaimedRun], bool, datetime | None]:
        now = self._clock()
        catchup = timedelta(seconds=self._policy.catchup_seconds)
        skipped = 0

        def plan(target: RunTarget) -> ClaimPlan:
            nonlocal skipped
            decided = safe_plan(target, now, catchup)
            skipped += len(decided.skipped)
            return decided

        batch = await self._store.claim_due(
            bucket, now, limit, now + lease_length(self._policy), plan
        )
        if self._executor.observe is not None:
            for _ in range(skipped):
                self._executor.observe(RunState.SKIPPED.value, None)
        return batch.runs, batch.schedules == limit, batch.next_due

    async def _take_over(self, work: list[BucketWork], now: datetime) -> list[ClaimedRun]:
        """Runs whose lease expired (their process died): looked for once a poll interval."""
        tick = time.monotonic()
        last = self._takeovers_checked
        if last is not None and tick - last < self._policy.poll_seconds:
            return []
        self._takeovers_checked = tick
        claims: list[ClaimedRun] = []
        lease_until = now + lease_length(self._policy)
        # A clock that jumped must not make this process take over runs it is still making.
        own = {claim.run.id for claim in self._in_flight.values()}
        for bucket in work:
            if bucket.lease_until is None or bucket.lease_until >= now:
                continue
            taken = await self._store.take_over_expired(
                bucket.bucket, now, self._policy.batch_size, lease_until, own
            )
            for claim in taken:
                log.info(
                    "taking over run %s of schedule %s (attempt %d, takeover %d)",
                    claim.run.id,
                    claim.run.schedule_id,
                    claim.run.attempt,
                    claim.takeovers,
                )
            claims.extend(taken)
        return claims

    async def _loop(self) -> None:
        poll = self._policy.poll_seconds
        while not self._stopping.is_set():
            try:
                next_due = await self._round(self._spawn)
            except Exception as exc:
                log.warning("dispatch failed, retrying in %.1f s: %s", poll, exc)
                next_due = None
            wait = poll
            if next_due is not None:
                # Wake when the next schedule falls due rather than up to a poll later (a
                # millisecond after: a timer may fire a little early).
                until_due = (next_due - self._clock()).total_seconds()
                wait = min(poll, max(0.0, until_due) + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
