"""Dispatcher rules without a database: the claim plan (misfires, overlap, missing endpoint,
disabled install), leases and retries with fakes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from scheduler_host.config import Settings
from scheduler_host.domain.errors import DatabaseUnavailable
from scheduler_host.domain.install import InstallContext
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.dispatch import (
    ENDPOINT_MISSING,
    SKIPPED_IN_FLIGHT,
    SKIPPED_MISSED,
    UNEVALUABLE,
    Dispatcher,
    idempotency_key,
    lease_length,
    plan_claim,
    retry_delay,
)
from scheduler_host.service.ports import (
    CallOutcome,
    ClaimBatch,
    ClaimedRun,
    ClaimPlan,
    RunnerCall,
    RunOutcome,
    RunTarget,
    SkippedOccurrence,
)

T0 = datetime(2026, 3, 7, 17, 5, tzinfo=UTC)
CATCHUP = timedelta(seconds=600)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def target(
    cron: str = "*/5 * * * *",
    next_run_time: datetime = T0,
    *,
    timezone: str = "UTC",
    method: str = "POST",
    payload: object = None,
    install_enabled: bool = True,
    endpoint_found: bool = True,
    run_in_flight: bool = False,
) -> RunTarget:
    install_id = uuid.UUID(int=1)
    schedule = Schedule(
        id=uuid.UUID(int=2),
        install_id=install_id,
        tenant_id="tenant-a",
        endpoint_id=uuid.UUID(int=3),
        endpoint_method=method,
        endpoint_path="/sync",
        name=None,
        cron=cron,
        timezone=timezone,
        enabled=True,
        payload=payload,
        next_run_time=next_run_time,
        last_run_time=None,
        last_run_status=None,
        last_error=None,
        create_time=T0,
        update_time=T0,
        revision=1,
    )
    install = InstallContext(
        install_id=install_id,
        tenant_id="tenant-a",
        registry_id="ext.registry",
        version_id="v7",
        content_hash="sha256:x",
        enabled=install_enabled,
        capabilities=frozenset({"cap:scheduler.manage", "cap:http.fetch"}),
    )
    return RunTarget(schedule, install, endpoint_found, run_in_flight)


# --- what a claimed due schedule does ---------------------------------------------------------


def test_due_occurrence_fires_and_the_next_follows() -> None:
    assert plan_claim(target(), T0, CATCHUP) == ClaimPlan(
        fire_at=T0, next_run_time=T0 + timedelta(minutes=5)
    )


def test_late_inside_the_window_fires_the_latest_occurrence_once() -> None:
    plan = plan_claim(target(), T0 + timedelta(minutes=7), CATCHUP)
    assert plan == ClaimPlan(
        fire_at=T0 + timedelta(minutes=5), next_run_time=T0 + timedelta(minutes=10)
    )


def test_outage_longer_than_the_window_records_one_skip_and_runs_once() -> None:
    now = T0 + timedelta(hours=2, minutes=1)
    assert plan_claim(target(), now, CATCHUP) == ClaimPlan(
        skipped=(SkippedOccurrence(T0, SKIPPED_MISSED),),
        fire_at=T0 + timedelta(hours=2),
        next_run_time=T0 + timedelta(hours=2, minutes=5),
    )


def test_outage_with_nothing_inside_the_window_only_skips() -> None:
    hourly = target("0 * * * *", utc("2026-03-07T18:00"))
    plan = plan_claim(hourly, utc("2026-03-07T21:20"), CATCHUP)
    assert plan == ClaimPlan(
        skipped=(SkippedOccurrence(utc("2026-03-07T18:00"), SKIPPED_MISSED),),
        next_run_time=utc("2026-03-07T22:00"),
    )


def test_zero_catchup_window_still_runs_an_occurrence_due_now() -> None:
    assert plan_claim(target(), T0, timedelta(0)).fire_at == T0


def test_occurrence_due_while_a_run_is_in_flight_is_skipped() -> None:
    plan = plan_claim(target(run_in_flight=True), T0, CATCHUP)
    assert plan == ClaimPlan(
        skipped=(SkippedOccurrence(T0, SKIPPED_IN_FLIGHT),),
        next_run_time=T0 + timedelta(minutes=5),
    )


def test_disabled_install_parks_the_schedule() -> None:
    assert plan_claim(target(install_enabled=False), T0, CATCHUP) == ClaimPlan(park=True)


@pytest.mark.parametrize(
    "missing", [target(endpoint_found=False), target(method="PUT")], ids=["gone", "not-schedulable"]
)
def test_missing_endpoint_disables_the_schedule(missing: RunTarget) -> None:
    assert plan_claim(missing, T0, CATCHUP) == ClaimPlan(disable_error=ENDPOINT_MISSING)


def test_fixed_time_in_the_repeated_hour_is_followed_by_the_next_day() -> None:
    # 01:30 EDT on 2026-11-01 runs; the 01:30 EST an hour later does not.
    first = utc("2026-11-01T05:30")
    plan = plan_claim(target("30 1 * * *", first, timezone="America/New_York"), first, CATCHUP)
    assert plan.fire_at == first and plan.next_run_time == utc("2026-11-02T06:30")


def test_idempotency_key_names_one_occurrence() -> None:
    sid = uuid.uuid4()
    key = idempotency_key(sid, RunTrigger.SCHEDULE, T0)
    assert key == idempotency_key(sid, RunTrigger.SCHEDULE, T0)
    assert key != idempotency_key(sid, RunTrigger.MANUAL, T0)
    assert key != idempotency_key(sid, RunTrigger.SCHEDULE, T0 + timedelta(minutes=5))
    assert key != idempotency_key(uuid.uuid4(), RunTrigger.SCHEDULE, T0)


def test_lease_outlasts_every_attempt_and_backoff() -> None:
    settings = Settings()
    assert [retry_delay(settings, n) for n in (1, 2)] == [1.0, 2.0]
    assert lease_length(settings) == timedelta(seconds=3 * 30 + 1 + 2 + 30)


# --- retries with fakes -----------------------------------------------------------------------


@dataclass
class FakeStore:
    """Just enough of DispatchStore for one claimed run."""

    claim: ClaimedRun | None
    keep_claim_until_attempt: int = 99
    due: list[RunTarget] = field(default_factory=list)
    plans: list[ClaimPlan] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    finished: list[tuple[RunState, str | None, int]] = field(default_factory=list)

    async def take_over_expired(
        self, now: datetime, limit: int, lease_until: datetime, exclude: Collection[uuid.UUID]
    ) -> list[ClaimedRun]:
        return []

    async def claim_due(
        self,
        now: datetime,
        limit: int,
        lease_until: datetime,
        plan: Callable[[RunTarget], ClaimPlan],
    ) -> ClaimBatch:
        self.plans.extend(plan(t) for t in self.due)
        claims = [self.claim] if self.claim is not None else []
        self.claim, self.due = None, []
        return ClaimBatch(len(claims), claims)

    async def record_attempt(self, claim: ClaimedRun, attempt: int) -> bool:
        self.attempts.append(attempt)
        return attempt < self.keep_claim_until_attempt

    async def finish_runs(self, outcomes: Sequence[RunOutcome]) -> list[ScheduleRun | None]:
        runs: list[ScheduleRun | None] = []
        for o in outcomes:
            self.finished.append((o.status, o.error, o.attempt))
            runs.append(replace(o.claim.run, status=o.status, error=o.error, attempt=o.attempt))
        return runs


@dataclass
class FakeRunner:
    answers: list[CallOutcome]
    calls: list[RunnerCall] = field(default_factory=list)

    async def execute(self, call: RunnerCall) -> CallOutcome:
        self.calls.append(call)
        return self.answers.pop(0)

    async def close(self) -> None:
        pass


def claimed_run() -> ClaimedRun:
    t = target()
    run = ScheduleRun(
        id=uuid.uuid4(),
        tenant_id="tenant-a",
        install_id=t.schedule.install_id,
        schedule_id=t.schedule.id,
        trigger=RunTrigger.SCHEDULE,
        scheduled_time=T0,
        start_time=T0,
        finish_time=None,
        status=RunState.RUNNING,
        attempt=1,
        error=None,
    )
    return ClaimedRun(run, t, T0 + timedelta(minutes=2))


async def dispatch(store: FakeStore, runner: FakeRunner) -> tuple[list[ScheduleRun], list[float]]:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    dispatcher = Dispatcher(store, runner, Settings(), lambda: T0, sleep=sleep)  # type: ignore[arg-type]
    return await dispatcher.run_once(), delays


async def test_transport_errors_are_tried_three_times_with_backoff_and_one_key() -> None:
    store = FakeStore(claimed_run())
    runner = FakeRunner([CallOutcome(False, "ConnectError: refused", retryable=True)] * 3)
    (run,), delays = await dispatch(store, runner)
    assert (run.status, run.error, run.attempt) == (RunState.ERROR, "ConnectError: refused", 3)
    assert delays == [1.0, 2.0] and store.attempts == [2, 3]
    assert len({c.idempotency_key for c in runner.calls}) == 1
    assert len({c.request_id for c in runner.calls}) == 3


async def test_a_claim_lost_between_attempts_stops_the_run_without_recording() -> None:
    store = FakeStore(claimed_run(), keep_claim_until_attempt=2)
    runner = FakeRunner([CallOutcome(False, "Runner returned status 503", retryable=True)] * 3)
    runs, _ = await dispatch(store, runner)
    assert runs == [] and len(runner.calls) == 1 and store.finished == []


async def test_a_schedule_that_cannot_be_evaluated_is_disabled_not_retried_forever() -> None:
    store = FakeStore(None, due=[target(timezone="Mars/Olympus_Mons")])
    runs, _ = await dispatch(store, FakeRunner([]))
    assert runs == [] and store.plans == [ClaimPlan(disable_error=UNEVALUABLE)]


# --- the pipeline with fakes: claims while runs are in flight, finishes written together -----


@dataclass
class QueueStore:
    """Due occurrences handed out a batch at a time; records what the dispatcher asked for."""

    due: int
    next_due: datetime | None = None
    batches: list[int] = field(default_factory=list)
    finish_calls: list[int] = field(default_factory=list)
    fail_finish: Exception | None = None

    async def take_over_expired(
        self, now: datetime, limit: int, lease_until: datetime, exclude: Collection[uuid.UUID]
    ) -> list[ClaimedRun]:
        return []

    async def claim_due(
        self,
        now: datetime,
        limit: int,
        lease_until: datetime,
        plan: Callable[[RunTarget], ClaimPlan],
    ) -> ClaimBatch:
        taken = min(limit, self.due)
        self.due -= taken
        self.batches.append(limit)
        claims = [claimed_run() for _ in range(taken)]
        return ClaimBatch(taken, claims, None if taken == limit else self.next_due)

    async def finish_runs(self, outcomes: Sequence[RunOutcome]) -> list[ScheduleRun | None]:
        self.finish_calls.append(len(outcomes))
        if self.fail_finish is not None:
            raise self.fail_finish
        return [replace(o.claim.run, status=o.status, attempt=o.attempt) for o in outcomes]


@dataclass
class HeldRunner:
    """Answers only when released; counts the calls under way."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0
    busy: int = 0
    most_busy: int = 0

    async def execute(self, call: RunnerCall) -> CallOutcome:
        self.calls += 1
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        try:
            await self.release.wait()
        finally:
            self.busy -= 1
        return CallOutcome(True)

    async def close(self) -> None:
        pass


async def until(condition: Callable[[], bool], within: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the time"
        await asyncio.sleep(0.005)


async def test_finishes_of_many_runs_are_written_in_one_call() -> None:
    store = QueueStore(due=7)
    runner = FakeRunner([CallOutcome(True)] * 7)
    dispatcher = Dispatcher(store, runner, Settings(), lambda: T0)  # type: ignore[arg-type]
    runs = await dispatcher.run_once()
    assert len(runs) == 7 and store.finish_calls == [7]


async def test_an_outage_when_finishing_leaves_the_runs_unrecorded_and_leased() -> None:
    store = QueueStore(due=3, fail_finish=DatabaseUnavailable())
    runner = FakeRunner([CallOutcome(True)] * 3)
    dispatcher = Dispatcher(store, runner, Settings(), lambda: T0)  # type: ignore[arg-type]
    assert await dispatcher.run_once() == []
    assert store.finish_calls == [3]


async def test_the_loop_claims_more_while_runs_are_in_flight_up_to_the_cap() -> None:
    store = QueueStore(due=40)
    runner = HeldRunner()
    settings = Settings(dispatch_batch_size=4, dispatch_max_in_flight=10, dispatch_poll_seconds=5)
    dispatcher = Dispatcher(store, runner, settings, lambda: T0)  # type: ignore[arg-type]
    dispatcher.start()
    try:
        # Two batches of 4 claimed without waiting for a run; room for 2 is not a batch.
        await until(lambda: runner.calls == 8)
        await asyncio.sleep(0.05)
        assert runner.calls == 8 and store.batches == [4, 4]
        runner.release.set()
        await until(lambda: store.due == 0 and runner.busy == 0)
        assert runner.most_busy <= 10 and runner.calls == 40
        assert all(limit <= 4 for limit in store.batches)
    finally:
        await dispatcher.stop(1)


async def test_the_loop_wakes_when_the_next_schedule_falls_due_not_a_poll_later() -> None:
    store = QueueStore(due=0, next_due=T0 + timedelta(milliseconds=200))
    settings = Settings(dispatch_poll_seconds=30)
    dispatcher = Dispatcher(store, HeldRunner(), settings, lambda: T0)  # type: ignore[arg-type]
    dispatcher.start()
    try:
        await until(lambda: len(store.batches) == 1)
        await until(lambda: len(store.batches) == 2, within=2)  # 0.2 s, not 30
    finally:
        await dispatcher.stop(1)
