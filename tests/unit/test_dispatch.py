"""Dispatcher rules without a database: the claim plan (misfires, overlap, missing endpoint,
disabled install), leases and retries with fakes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from typing_extensions import override

from scheduler_host.app import dispatch_policy
from scheduler_host.config import Settings
from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.errors import DatabaseUnavailable
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.dispatch import Dispatcher
from scheduler_host.service.dispatch.planning import (
    ENDPOINT_MISSING,
    MAX_TAKEOVERS,
    SKIPPED_IN_FLIGHT,
    SKIPPED_MISSED,
    UNEVALUABLE,
    idempotency_key,
    lease_length,
    plan_claim,
    retry_delay,
)
from scheduler_host.service.ports import (
    CallOutcome,
    ClaimBatch,
    ClaimPlan,
    Planner,
    RunnerCall,
    RunnerClient,
    RunOutcome,
    RunTarget,
    SkippedOccurrence,
)
from tests.unit.fakes import Data, FakeDispatchStore, FakeRunner

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
    assert plan.fire_at == first
    assert plan.next_run_time == utc("2026-11-02T06:30")


def test_idempotency_key_names_one_occurrence() -> None:
    sid = uuid.uuid4()
    key = idempotency_key(sid, RunTrigger.SCHEDULE, T0)
    assert key == idempotency_key(sid, RunTrigger.SCHEDULE, T0)
    assert key != idempotency_key(sid, RunTrigger.MANUAL, T0)
    assert key != idempotency_key(sid, RunTrigger.SCHEDULE, T0 + timedelta(minutes=5))
    assert key != idempotency_key(uuid.uuid4(), RunTrigger.SCHEDULE, T0)


def test_lease_outlasts_every_attempt_and_backoff() -> None:
    policy = dispatch_policy(Settings())
    assert [retry_delay(policy, n) for n in (1, 2)] == [1.0, 2.0]
    assert lease_length(policy) == timedelta(seconds=3 * 30 + 1 + 2 + 30)


# --- the dispatcher with in-memory fakes of its ports -----------------------------------------


def stored(data: Data, *targets: RunTarget) -> None:
    """Put the targets' installs (with their endpoint) and schedules into `data`."""
    for t in targets:
        ctx = t.install
        endpoint = Endpoint(t.schedule.endpoint_id, t.schedule.endpoint_method, "/sync", "sync")
        data.installs[ctx.install_id] = Install(
            ctx.install_id,
            ctx.tenant_id,
            ctx.registry_id,
            ctx.version_id,
            ctx.content_hash,
            ctx.enabled,
            tuple(sorted(ctx.capabilities)),
            (endpoint,) if t.endpoint_found else (),
            T0,
            T0,
        )
        data.schedules[t.schedule.id] = t.schedule
        data.running[t.schedule.id] = None


def due_schedules(data: Data, count: int) -> None:
    for n in range(count):
        t = target()
        stored(data, replace(t, schedule=replace(t.schedule, id=uuid.UUID(int=1000 + n))))


class CountingStore(FakeDispatchStore):
    """The fake store, counting claim batches and finish calls (or failing the finishes)."""

    def __init__(self, data: Data, fail_finish: Exception | None = None) -> None:
        super().__init__(data)
        self.batches: list[int] = []
        self.finish_calls: list[int] = []
        self.fail_finish = fail_finish

    async def claim_due(
        self, bucket: int, now: datetime, limit: int, lease_until: datetime, plan: Planner
    ) -> ClaimBatch:
        self.batches.append(limit)
        return await super().claim_due(bucket, now, limit, lease_until, plan)

    async def finish_runs(self, outcomes: Sequence[RunOutcome]) -> list[ScheduleRun | None]:
        self.finish_calls.append(len(outcomes))
        if self.fail_finish is not None:
            raise self.fail_finish
        return await super().finish_runs(outcomes)


def dispatcher_of(
    store: FakeDispatchStore,
    runner: FakeRunner | HeldRunner,
    clock: Callable[[], datetime] = lambda: T0,
    delays: list[float] | None = None,
    **settings: object,
) -> Dispatcher:
    async def sleep(seconds: float) -> None:
        if delays is not None:
            delays.append(seconds)

    policy = dispatch_policy(replace(Settings(), **settings))  # type: ignore[arg-type]
    return Dispatcher(store, runner, policy, clock, sleep=sleep)


async def test_transport_errors_are_tried_three_times_with_backoff_and_one_key() -> None:
    data = Data()
    stored(data, target())
    store = FakeDispatchStore(data)
    runner = FakeRunner([CallOutcome(False, "ConnectError: refused", retryable=True)] * 3)
    delays: list[float] = []
    (run,) = await dispatcher_of(store, runner, delays=delays).run_once()
    assert (run.status, run.error, run.attempt) == (RunState.ERROR, "ConnectError: refused", 3)
    assert delays == [1.0, 2.0]
    assert store.attempts == [2, 3]
    assert len({c.idempotency_key for c in runner.calls}) == 1
    assert len({c.request_id for c in runner.calls}) == 3


async def test_a_claim_lost_between_attempts_stops_the_run_without_recording() -> None:
    data = Data()
    stored(data, target())
    store = FakeDispatchStore(data)

    class TakenOver(FakeRunner):
        async def execute(self, call: RunnerCall) -> CallOutcome:
            # Meanwhile another process took the run over: its lease is no longer ours.
            for lease in data.leases.values():
                lease.until = T0 + timedelta(hours=1)
            return await super().execute(call)

    runner = TakenOver([CallOutcome(False, "Runner returned status 503", retryable=True)] * 3)
    assert await dispatcher_of(store, runner).run_once() == []
    assert len(runner.calls) == 1
    (run,) = data.runs.values()
    assert run.status == RunState.RUNNING, "nothing recorded by the process that lost it"


async def test_a_schedule_that_cannot_be_evaluated_is_disabled_not_retried_forever() -> None:
    data = Data()
    stored(data, target(timezone="Mars/Olympus_Mons"))
    runs = await dispatcher_of(FakeDispatchStore(data), FakeRunner()).run_once()
    (schedule,) = data.schedules.values()
    assert runs == []
    assert not schedule.enabled
    assert schedule.last_error == UNEVALUABLE


async def test_a_run_taken_over_too_often_is_abandoned_and_the_schedule_goes_on() -> None:
    data = Data()
    stored(data, target())
    store = FakeDispatchStore(data)
    clock = SteppedClock(T0)
    # A process that claims the run and dies (its run never finishes).
    first = await dispatcher_of(store, FakeRunner(), clock).dispatch_due()
    for task in first:
        task.cancel()
    runner = FakeRunner()
    for takeover in range(1, MAX_TAKEOVERS + 2):
        clock.now += timedelta(hours=1)  # past every lease
        (lease,) = data.leases.values()
        if takeover <= MAX_TAKEOVERS:
            lease.until = clock.now - timedelta(seconds=1)
            taken = await store.take_over_expired(0, clock.now, 10, clock.now, ())
            assert [c.takeovers for c in taken] == [takeover]
            lease.until = clock.now - timedelta(seconds=1)  # and that process died too
    (lease,) = data.leases.values()
    lease.until = clock.now - timedelta(seconds=1)
    dispatcher = dispatcher_of(store, runner, clock)
    await dispatcher.dispatch_due()
    await until(lambda: next(iter(data.runs.values())).status != RunState.RUNNING)
    (run,) = [r for r in data.runs.values() if r.trigger == RunTrigger.SCHEDULE][:1]
    assert run.status == RunState.ERROR
    assert run.error is not None
    assert run.error.startswith("abandoned after")
    assert runner.calls == [], "an abandoned run is not called again"
    (schedule,) = data.schedules.values()
    assert schedule.enabled
    assert schedule.next_run_time is not None


async def test_finishes_of_many_runs_are_written_in_one_call() -> None:
    data = Data()
    due_schedules(data, 7)
    store = CountingStore(data)
    runs = await dispatcher_of(store, FakeRunner()).run_once()
    assert len(runs) == 7
    assert store.finish_calls == [7]


async def test_an_outage_when_finishing_leaves_the_runs_unrecorded_and_leased() -> None:
    data = Data()
    due_schedules(data, 3)
    store = CountingStore(data, fail_finish=DatabaseUnavailable())
    assert await dispatcher_of(store, FakeRunner()).run_once() == []
    assert store.finish_calls == [3]
    assert all(r.status == RunState.RUNNING for r in data.runs.values())
    assert all(lease.until is not None for lease in data.leases.values())


@dataclass
class HeldRunner(RunnerClient):
    """Answers only when released; counts the calls under way."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0
    busy: int = 0
    most_busy: int = 0

    @override
    async def execute(self, call: RunnerCall) -> CallOutcome:
        self.calls += 1
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        try:
            await self.release.wait()
        finally:
            self.busy -= 1
        return CallOutcome(True)

    @override
    async def close(self) -> None:
        pass


class SteppedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def until(condition: Callable[[], bool], within: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the time"
        await asyncio.sleep(0.005)


async def test_the_loop_claims_more_while_runs_are_in_flight_up_to_the_cap() -> None:
    data = Data()
    due_schedules(data, 40)
    store = CountingStore(data)
    runner = HeldRunner()
    dispatcher = dispatcher_of(
        store,
        runner,
        dispatch_batch_size=4,
        dispatch_max_in_flight=10,
        dispatch_poll_seconds=5,
    )
    dispatcher.start()
    try:
        # Two batches of 4 claimed without waiting for a run; room for 2 is not a batch.
        await until(lambda: runner.calls == 8)
        await asyncio.sleep(0.05)
        assert runner.calls == 8
        assert store.batches == [4, 4]
        runner.release.set()
        await until(lambda: runner.calls == 40 and runner.busy == 0)
        assert runner.most_busy <= 10
        assert all(limit <= 4 for limit in store.batches)
    finally:
        await dispatcher.stop(1)


async def test_the_loop_wakes_when_the_next_schedule_falls_due_not_a_poll_later() -> None:
    data = Data()
    soon = T0 + timedelta(milliseconds=200)
    stored(data, target(next_run_time=soon))
    store = CountingStore(data)
    clock_start = asyncio.get_running_loop().time()

    def clock() -> datetime:
        return T0 + timedelta(seconds=asyncio.get_running_loop().time() - clock_start)

    dispatcher = dispatcher_of(store, FakeRunner(), clock, dispatch_poll_seconds=30)
    dispatcher.start()
    try:
        await until(lambda: len(store.batches) == 1, within=2)  # 0.2 s, not 30
        (schedule,) = data.schedules.values()
        assert schedule.next_run_time == T0 + timedelta(minutes=5)  # fired at `soon`
    finally:
        await dispatcher.stop(1)
