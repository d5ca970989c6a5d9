"""The dispatcher's store on real PostgreSQL: claims per bucket applying their plans in one
transaction, shared between processes without doubles, the unique guard, takeovers of expired
leases, finishes fenced by their leases, the history cut, manual runs, the poll across buckets and
the lock order a schedule's DELETE and a finish agree on."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from scheduler_host.adapters.db.buckets import bucket_of
from scheduler_host.adapters.db.dispatch_store import PgDispatchStore
from scheduler_host.adapters.db.pool import DatabasePool
from scheduler_host.adapters.db.unit_of_work import PgUnitOfWorkFactory
from scheduler_host.domain.install import Install
from scheduler_host.domain.runs import RunState, RunTrigger
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.dispatch.planning import (
    ENDPOINT_MISSING,
    SKIPPED_IN_FLIGHT,
    SKIPPED_MISSED,
    plan_claim,
)
from scheduler_host.service.ports import (
    BucketWork,
    ClaimedRun,
    ClaimPlan,
    RunOutcome,
    RunTarget,
    SkippedOccurrence,
)
from tests.support.storage import (
    Db,
    connect,
    insert_run,
    insert_schedule,
    make_install,
    make_schedule,
    one_time,
    run_row,
    save_installs,
    schedule_row,
    wait_for_lock_waiters,
)

# On a five-minute boundary, so "*/5 * * * *" is due exactly now.
T = datetime(2026, 3, 7, 17, 0, tzinfo=UTC)
LEASE_LENGTH = timedelta(minutes=5)
LEASE = T + LEASE_LENGTH
CATCHUP = timedelta(minutes=10)
MINUTE = timedelta(minutes=1)
HISTORY = 100
A, B = "tenant-a", "tenant-b"


def plan_at(now: datetime) -> Callable[[RunTarget], ClaimPlan]:
    def plan(target: RunTarget) -> ClaimPlan:
        return plan_claim(target, now, CATCHUP)

    return plan


@dataclass
class World:
    db: Db
    pool: DatabasePool
    store: PgDispatchStore
    factory: PgUnitOfWorkFactory
    installs: dict[str, Install]
    url: str

    async def install(self, tenant: str = A, *, enabled: bool = True) -> Install:
        install = make_install(tenant_id=tenant, enabled=enabled)
        await save_installs(self.factory, install)
        return install

    async def schedule(
        self,
        next_run_time: datetime | None = T,
        *,
        tenant: str = A,
        install: Install | None = None,
        cron: str = "*/5 * * * *",
        path: str | None = None,
        enabled: bool = True,
    ) -> Schedule:
        owner = install or self.installs[tenant]
        s = make_schedule(
            owner,
            cron=cron,
            created=T - timedelta(days=1),
            payload={"n": 1},
            enabled=enabled,
        )
        s = replace(s, next_run_time=next_run_time, timezone="UTC")
        if path is not None:
            s = replace(s, endpoint_path=path)
        return await insert_schedule(self.db, s)

    async def runs(self, s: Schedule) -> list[asyncpg.Record]:
        return list(
            await self.db.fetch(
                "SELECT * FROM schedule_runs WHERE schedule_id = $1 ORDER BY scheduled_time, id",
                s.id,
            )
        )

    async def row(self, s: Schedule) -> asyncpg.Record:
        return await schedule_row(self.db, s.id)

    async def connect(self) -> Db:
        """A further connection of the test's own."""
        return await connect(self.url)

    async def claim(self, tenant: str = A) -> list[ClaimedRun]:
        return (await self.store.claim_due(bucket_of(tenant), T, 10, LEASE, plan_at(T))).runs


@pytest.fixture
async def world(db: Db, pool: DatabasePool, factory: PgUnitOfWorkFactory, pg_url: str) -> World:
    w = World(db, pool, PgDispatchStore(pool, HISTORY), factory, {}, pg_url)
    for tenant in (A, B):
        w.installs[tenant] = await w.install(tenant)
    assert bucket_of(A) != bucket_of(B)
    return w


@pytest.fixture
async def second_pool(pg_url: str) -> AsyncIterator[DatabasePool]:
    """Another process's pool."""
    opened = await DatabasePool.open(pg_url, size=4, max_waiters=100)
    try:
        yield opened
    finally:
        await opened.close()


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------


async def test_a_claim_applies_the_plan_to_each_due_schedule_of_its_bucket(world: World) -> None:
    w = world
    fires = await w.schedule()
    missed = await w.schedule(T - timedelta(hours=2))
    busy = await w.schedule()
    open_run = await insert_run(w.db, busy, T - MINUTE, status="running", lease_until=LEASE)
    await w.db.execute("UPDATE schedules SET running_run_id = $2 WHERE id = $1", busy.id, open_run)
    gone = await w.schedule(path="/gone")
    parked = await w.schedule(install=await w.install(enabled=False))
    later = await w.schedule(T + 3 * MINUTE)
    elsewhere = await w.schedule(tenant=B)

    batch = await w.store.claim_due(bucket_of(A), T, 10, LEASE, plan_at(T))

    assert batch.schedules == 5
    assert batch.next_due == T + 3 * MINUTE, "the bucket's earliest next run after the claim"
    by_schedule = {c.run.schedule_id: c for c in batch.runs}
    assert set(by_schedule) == {fires.id, missed.id}
    for claim in batch.runs:
        assert claim.lease_until == LEASE
        assert claim.takeovers == 0
        assert (claim.run.status, claim.run.trigger) == (RunState.RUNNING, RunTrigger.SCHEDULE)
        assert (claim.run.start_time, claim.run.attempt, claim.run.scheduled_time) == (T, 1, T)
        assert claim.target.install == w.installs[A].context()
        assert claim.target.endpoint_found
        assert not claim.target.run_in_flight

    (run,) = await w.runs(fires)
    assert (run["id"], run["status"], run["scheduled_time"], run["lease_until"]) == (
        by_schedule[fires.id].run.id,
        "running",
        T,
        LEASE,
    )
    assert run["bucket"] == bucket_of(A)
    assert run["attempt"] == 1
    assert run["takeovers"] == 0
    fired = await w.row(fires)
    assert fired["next_run_time"] == T + 5 * MINUTE
    assert fired["running_run_id"] == run["id"]
    assert (fired["revision"], fired["update_time"]) == (1, fires.update_time)

    skipped, caught_up = await w.runs(missed)
    assert (skipped["status"], skipped["scheduled_time"], skipped["error"]) == (
        "skipped",
        T - timedelta(hours=2),
        SKIPPED_MISSED,
    )
    assert skipped["lease_until"] is None
    assert skipped["finish_time"] == T
    assert (caught_up["status"], caught_up["scheduled_time"]) == ("running", T)
    missed_row = await w.row(missed)
    assert (missed_row["last_run_status"], missed_row["last_run_time"]) == ("skipped", T)
    assert missed_row["next_run_time"] == T + 5 * MINUTE

    in_flight = [r for r in await w.runs(busy) if r["status"] == "skipped"]
    assert [(r["scheduled_time"], r["error"]) for r in in_flight] == [(T, SKIPPED_IN_FLIGHT)]
    busy_row = await w.row(busy)
    assert busy_row["running_run_id"] == open_run
    assert busy_row["last_error"] == SKIPPED_IN_FLIGHT
    assert busy_row["next_run_time"] == T + 5 * MINUTE

    disabled = await w.row(gone)
    assert (disabled["enabled"], disabled["next_run_time"], disabled["last_error"]) == (
        False,
        None,
        ENDPOINT_MISSING,
    )
    assert (disabled["revision"], disabled["update_time"]) == (2, T)
    assert await w.runs(gone) == []

    parked_row = await w.row(parked)
    assert parked_row["enabled"]
    assert parked_row["next_run_time"] is None
    assert parked_row["revision"] == 1
    assert await w.runs(parked) == []

    assert (await w.row(later))["next_run_time"] == T + 3 * MINUTE
    assert (await w.row(elsewhere))["next_run_time"] == T
    assert await w.runs(elsewhere) == []
    # The other bucket is claimed on its own.
    (other,) = await w.claim(B)
    assert other.run.schedule_id == elsewhere.id
    assert (await run_row(w.db, other.run.id))["bucket"] == bucket_of(B)


async def test_a_claim_completes_disables_parks_and_skips_as_planned(world: World) -> None:
    w = world
    once = await insert_schedule(
        w.db, replace(one_time(make_schedule(w.installs[A]), T), timezone="UTC")
    )
    missed_once = await insert_schedule(
        w.db,
        one_time(make_schedule(w.installs[A]), T - timedelta(hours=3)),
    )
    refused = await w.schedule()
    waiting = await w.schedule()
    plans = {
        once.id: ClaimPlan(fire_at=T, complete=True),
        missed_once.id: ClaimPlan(
            skipped=(SkippedOccurrence(T - timedelta(hours=3), SKIPPED_MISSED),), complete=True
        ),
        refused.id: ClaimPlan(disable_error="cannot evaluate"),
        waiting.id: ClaimPlan(park=True, next_run_time=T + MINUTE),
    }

    batch = await w.store.claim_due(bucket_of(A), T, 10, LEASE, lambda t: plans[t.schedule.id])

    assert batch.schedules == 4
    assert [c.run.schedule_id for c in batch.runs] == [once.id]
    assert batch.next_due is None, "nothing of the bucket is due any more"
    completed = await w.row(once)
    assert (completed["enabled"], completed["next_run_time"], completed["last_error"]) == (
        False,
        None,
        None,
    )
    assert (completed["revision"], completed["update_time"]) == (2, T)
    assert completed["running_run_id"] == batch.runs[0].run.id
    assert [(r["status"], r["scheduled_time"]) for r in await w.runs(once)] == [("running", T)]

    gone_by = await w.row(missed_once)
    assert (gone_by["enabled"], gone_by["next_run_time"], gone_by["revision"]) == (False, None, 2)
    assert (gone_by["last_run_status"], gone_by["last_error"]) == ("skipped", SKIPPED_MISSED)
    assert [r["status"] for r in await w.runs(missed_once)] == ["skipped"]

    disabled = await w.row(refused)
    assert (disabled["enabled"], disabled["last_error"], disabled["revision"]) == (
        False,
        "cannot evaluate",
        2,
    )
    parked = await w.row(waiting)
    assert (parked["enabled"], parked["next_run_time"], parked["revision"]) == (True, None, 1)


async def test_two_stores_claiming_one_bucket_at_once_share_it_without_doubles(
    world: World, second_pool: DatabasePool
) -> None:
    w = world
    due = {(await w.schedule()).id for _ in range(60)}
    stores = [w.store, PgDispatchStore(second_pool, HISTORY)]

    async def claim_all(store: PgDispatchStore) -> list[uuid.UUID]:
        claimed: list[uuid.UUID] = []
        while True:
            batch = await store.claim_due(bucket_of(A), T, 7, LEASE, plan_at(T))
            claimed += [c.run.schedule_id for c in batch.runs]
            if batch.schedules < 7:
                return claimed

    first, second = await asyncio.gather(*(claim_all(s) for s in stores))

    assert len(first) + len(second) == 60
    assert set(first) | set(second) == due
    assert await w.db.fetchval("SELECT count(*) FROM schedule_runs") == 60
    assert await w.claim() == []


async def test_a_schedule_changed_after_the_claim_read_it_keeps_the_change(world: World) -> None:
    w = world
    changed, untouched = await w.schedule(), await w.schedule()
    revision = (await w.row(changed))["revision"]
    later = T + timedelta(hours=1)
    # Another connection, on a loop of its own, commits an update of `changed` while the claim
    # is planning: after its read, before its write.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    other = asyncio.run_coroutine_threadsafe(connect(w.url), loop).result()

    def plan(target: RunTarget) -> ClaimPlan:
        if target.schedule.id == changed.id:
            update = other.execute(
                "UPDATE schedules SET revision = revision + 1, next_run_time = $2 "
                "WHERE bucket = $3 AND id = $1",
                changed.id,
                later,
                bucket_of(A),
            )
            asyncio.run_coroutine_threadsafe(update, loop).result()
        return plan_claim(target, T, CATCHUP)

    try:
        batch = await w.store.claim_due(bucket_of(A), T, 10, LEASE, plan)
    finally:
        asyncio.run_coroutine_threadsafe(other.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    assert [c.run.schedule_id for c in batch.runs] == [untouched.id]
    row = await w.row(changed)
    assert (row["revision"], row["next_run_time"]) == (revision + 1, later)
    assert await w.runs(changed) == []
    assert len(await w.runs(untouched)) == 1


async def test_an_occurrence_already_recorded_is_not_fired_again(world: World) -> None:
    w = world
    s = await w.schedule()
    done = await insert_run(w.db, s, T, status="success")
    other = await w.schedule()

    claims = await w.claim()

    assert [c.run.schedule_id for c in claims] == [other.id]
    row = await w.row(s)
    assert row["running_run_id"] is None
    assert row["next_run_time"] == T + 5 * MINUTE
    assert [r["id"] for r in await w.runs(s)] == [done]
    assert (await run_row(w.db, done))["status"] == "success"


# --------------------------------------------------------------------------------------------
# Takeovers
# --------------------------------------------------------------------------------------------


async def test_expired_leases_are_taken_over_counting_attempts_and_takeovers(
    world: World,
) -> None:
    w = world
    s = await w.schedule()
    (claim,) = await w.claim()
    finished = await w.schedule(None)
    await insert_run(w.db, finished, T - MINUTE, status="error", lease_until=T - MINUTE)
    pending = await w.schedule(None, tenant=B)
    pending_run = await insert_run(
        w.db, pending, T, status="pending", attempt=0, lease_until=T + MINUTE
    )
    bucket = bucket_of(A)

    assert await w.store.take_over_expired(bucket, LEASE - MINUTE, 10, LEASE, []) == []

    after = LEASE + MINUTE
    second_lease = after + timedelta(minutes=5)
    (taken,) = await w.store.take_over_expired(bucket, after, 10, second_lease, [])
    assert (taken.run.id, taken.run.attempt, taken.takeovers) == (claim.run.id, 2, 1)
    assert (taken.lease_until, taken.run.start_time, taken.run.status) == (
        second_lease,
        T,
        RunState.RUNNING,
    )
    assert taken.target.schedule.id == s.id
    assert taken.target.install == w.installs[A].context()
    row = await run_row(w.db, claim.run.id)
    assert (row["lease_until"], row["attempt"], row["takeovers"], row["status"]) == (
        second_lease,
        2,
        1,
        "running",
    )

    # Expired again: one more attempt and one more takeover.
    later = second_lease + MINUTE
    (again,) = await w.store.take_over_expired(bucket, later, 10, later + LEASE_LENGTH, [])
    assert (again.run.attempt, again.takeovers) == (3, 2)
    row = await run_row(w.db, claim.run.id)
    assert (row["attempt"], row["takeovers"]) == (3, 2)
    # A run this process is still making is not taken over, even when a clock jump expired it.
    much_later = later + timedelta(hours=1)
    assert await w.store.take_over_expired(bucket, much_later, 10, much_later, [again.run.id]) == []

    # A pending run of the other bucket is the other bucket's.
    (started,) = await w.store.take_over_expired(bucket_of(B), T + 2 * MINUTE, 10, LEASE, [])
    assert (started.run.id, started.run.attempt, started.takeovers) == (pending_run, 1, 1)
    assert started.run.start_time == T
    assert (await run_row(w.db, pending_run))["status"] == "running"


async def test_a_lease_changed_meanwhile_is_not_taken_over(world: World) -> None:
    w = world
    await w.schedule()
    (claim,) = await w.claim()
    after = LEASE + MINUTE
    monitor = await w.connect()
    try:
        # Another process renews the lease; its write is not committed yet when this process
        # reads the expired lease, and is when this one writes.
        async with w.db.transaction():
            await w.db.execute(
                "UPDATE schedule_runs SET lease_until = $2 WHERE id = $1",
                claim.run.id,
                after + LEASE_LENGTH,
            )
            taking = asyncio.create_task(
                w.store.take_over_expired(bucket_of(A), after, 10, after + MINUTE, [])
            )
            await wait_for_lock_waiters(monitor)
        assert await taking == []
    finally:
        await monitor.close()
    row = await run_row(w.db, claim.run.id)
    assert (row["lease_until"], row["attempt"], row["takeovers"]) == (after + LEASE_LENGTH, 1, 0)


async def test_two_processes_taking_over_at_once_take_each_run_once(
    world: World, second_pool: DatabasePool
) -> None:
    w = world
    for _ in range(20):
        await w.schedule()
    claims = await w.store.claim_due(bucket_of(A), T, 50, LEASE, plan_at(T))
    assert len(claims.runs) == 20
    after = LEASE + MINUTE
    stores = [w.store, PgDispatchStore(second_pool, HISTORY)]
    taken = await asyncio.gather(
        *(s.take_over_expired(bucket_of(A), after, 50, after + LEASE_LENGTH, []) for s in stores)
    )
    ids = [c.run.id for batch in taken for c in batch]
    assert sorted(ids) == sorted(c.run.id for c in claims.runs)
    counts = await w.db.fetch("SELECT takeovers, attempt FROM schedule_runs")
    assert {(r["takeovers"], r["attempt"]) for r in counts} == {(1, 2)}


# --------------------------------------------------------------------------------------------
# Finishing
# --------------------------------------------------------------------------------------------


async def test_finishes_are_written_together_and_fenced_by_their_leases(world: World) -> None:
    w = world
    schedules = [await w.schedule() for _ in range(5)]
    by_schedule = {c.run.schedule_id: c for c in await w.claim()}
    ok, failed, disabled, lost, released = (by_schedule[s.id] for s in schedules)
    # Another process took `lost` over (its lease changed): this one must write nothing for it.
    await w.db.execute(
        "UPDATE schedule_runs SET lease_until = $2, attempt = 2 WHERE id = $1",
        lost.run.id,
        LEASE + MINUTE,
    )
    await w.store.release(released, T + MINUTE)
    assert await w.store.record_attempt(ok, 2) is True
    assert await w.store.record_attempt(lost, 3) is False
    assert await w.store.record_attempt(released, 3) is False
    done = T + timedelta(seconds=2)

    def outcome(claim: ClaimedRun, status: RunState, error: str | None = None) -> RunOutcome:
        return RunOutcome(claim, status, error, 2, done)

    results = await w.store.finish_runs(
        [
            outcome(ok, RunState.SUCCESS),
            outcome(failed, RunState.ERROR, "Runner returned status 500"),
            RunOutcome(disabled, RunState.ERROR, ENDPOINT_MISSING, 1, done, ENDPOINT_MISSING),
            outcome(lost, RunState.SUCCESS),
            outcome(released, RunState.SUCCESS),
        ]
    )

    assert [r.status if r else None for r in results] == [
        RunState.SUCCESS,
        RunState.ERROR,
        RunState.ERROR,
        None,
        None,
    ]
    assert results[0] == replace(ok.run, finish_time=done, status=RunState.SUCCESS, attempt=2)
    for claim, status, error, attempt in (
        (ok, "success", None, 2),
        (failed, "error", "Runner returned status 500", 2),
        (disabled, "error", ENDPOINT_MISSING, 1),
    ):
        run = await run_row(w.db, claim.run.id)
        assert (run["status"], run["error"], run["finish_time"], run["lease_until"]) == (
            status,
            error,
            done,
            None,
        )
        assert run["attempt"] == attempt
        row = await w.row(claim.target.schedule)
        assert (row["last_run_status"], row["last_error"], row["last_run_time"]) == (
            status,
            error,
            T,
        )
        assert row["running_run_id"] is None
    ok_row = await w.row(ok.target.schedule)
    assert ok_row["enabled"]
    assert ok_row["revision"] == 1
    assert ok_row["next_run_time"] == T + 5 * MINUTE
    gone = await w.row(disabled.target.schedule)
    assert not gone["enabled"]
    assert gone["next_run_time"] is None
    assert (gone["revision"], gone["update_time"]) == (2, done)
    for kept, lease in ((lost, LEASE + MINUTE), (released, T + MINUTE)):
        run = await run_row(w.db, kept.run.id)
        assert (run["status"], run["lease_until"], run["finish_time"]) == ("running", lease, None)
        row = await w.row(kept.target.schedule)
        assert row["running_run_id"] == kept.run.id
        assert row["last_run_status"] is None
    # A released run is taken over at once.
    (again,) = await w.store.take_over_expired(bucket_of(A), T + 2 * MINUTE, 10, LEASE, [])
    assert again.run.id == released.run.id


async def test_finishes_of_several_buckets_are_each_written(world: World) -> None:
    w = world
    a, b = await w.schedule(), await w.schedule(tenant=B)
    claims = [*(await w.claim(A)), *(await w.claim(B))]
    assert [c.run.schedule_id for c in claims] == [a.id, b.id]
    results = await w.store.finish_runs(
        [RunOutcome(c, RunState.SUCCESS, None, 1, T + MINUTE) for c in claims]
    )
    assert all(r is not None and r.status == RunState.SUCCESS for r in results)
    for s in (a, b):
        assert (await w.row(s))["last_run_status"] == "success"


async def test_history_is_cut_to_the_limit_keeping_open_runs(world: World) -> None:
    w = world
    full = await w.schedule()
    for n in range(1, 121):
        await insert_run(w.db, full, T - n * timedelta(hours=1))
    old_open = [
        await insert_run(w.db, full, T - timedelta(days=30, hours=n), status=status, lease_until=T)
        for n, status in ((1, "running"), (2, "pending"))
    ]
    small = await w.schedule()
    for n in range(1, 4):
        await insert_run(w.db, small, T - n * timedelta(hours=1))

    await w.claim()

    kept = await w.runs(full)
    finished = [r for r in kept if r["status"] not in ("pending", "running")]
    assert len(kept) == HISTORY + 2
    assert {r["id"] for r in kept} >= set(old_open), "open runs are never cut"
    assert len(finished) == HISTORY - 1
    assert min(r["scheduled_time"] for r in finished) == T - (HISTORY - 1) * timedelta(hours=1)
    assert len(await w.runs(small)) == 4

    # A manual run cuts its schedule's history too.
    target = await w.store.load_target(A, w.installs[A].install_id, full.id)
    assert target is not None
    assert await w.store.start_manual_run(target, T + MINUTE, T + MINUTE, LEASE) is not None
    assert len(await w.runs(full)) == HISTORY + 2


# --------------------------------------------------------------------------------------------
# Manual runs
# --------------------------------------------------------------------------------------------


async def test_manual_runs_go_through_the_same_records(world: World) -> None:
    w = world
    iid = w.installs[A].install_id
    s = await w.schedule(T + timedelta(hours=10), cron="0 3 * * *")
    assert await w.store.load_target(A, iid, uuid.uuid4()) is None
    assert await w.store.load_target(B, iid, s.id) is None
    target = await w.store.load_target(A, iid, s.id)
    assert target is not None
    assert target.schedule == await _schedule(w, s)
    assert target.endpoint_found
    assert not target.run_in_flight

    first = await w.store.start_manual_run(target, T, T, LEASE)
    assert first is not None
    assert (first.run.trigger, first.run.status, first.run.attempt) == (
        RunTrigger.MANUAL,
        RunState.RUNNING,
        1,
    )
    assert await w.store.start_manual_run(target, T, T, LEASE) is None, "the unique guard"
    second = await w.store.start_manual_run(target, T + timedelta(microseconds=1), T, LEASE)
    assert second is not None
    row = await w.row(s)
    assert row["running_run_id"] == first.run.id, "the first counts as in flight"
    assert row["next_run_time"] == T + timedelta(hours=10)
    reloaded = await w.store.load_target(A, iid, s.id)
    assert reloaded is not None
    assert reloaded.run_in_flight

    done = T + timedelta(seconds=1)
    results = await w.store.finish_runs(
        [
            RunOutcome(first, RunState.SUCCESS, None, 1, done),
            RunOutcome(second, RunState.ERROR, "Runner returned status 500", 1, done),
        ]
    )
    assert [r.status if r else None for r in results] == [RunState.SUCCESS, RunState.ERROR]
    assert [r["status"] for r in await w.runs(s)] == ["success", "error"]
    row = await w.row(s)
    assert row["running_run_id"] is None
    assert row["last_run_status"] in ("success", "error")
    gone = await w.schedule(path="/gone")
    gone_target = await w.store.load_target(A, iid, gone.id)
    assert gone_target is not None
    assert not gone_target.endpoint_found


async def _schedule(w: World, s: Schedule) -> Schedule | None:
    async with w.factory(autocommit=True) as u:
        return await u.schedules.get(s.tenant_id, s.install_id, s.id, for_update=False)


# --------------------------------------------------------------------------------------------
# The poll
# --------------------------------------------------------------------------------------------


async def test_the_poll_reports_buckets_with_due_schedules_or_open_runs(world: World) -> None:
    w = world
    acme = await w.install("acme")
    await w.schedule(T + timedelta(hours=1))
    await w.schedule(T + timedelta(hours=2))
    await w.schedule(T - timedelta(hours=1), enabled=False)  # disabled: not due
    quiet = await w.schedule(None, tenant=B)  # parked or finished: no next run
    await insert_run(w.db, quiet, T, status="running", lease_until=T + MINUTE)
    await insert_run(w.db, quiet, T - MINUTE, status="pending", lease_until=T + 2 * MINUTE)
    await insert_run(w.db, quiet, T - 2 * MINUTE, status="success")
    idle = await w.schedule(None, install=acme)
    await insert_run(w.db, idle, T, status="error")

    work = await w.store.poll()

    assert sorted(work, key=lambda b: b.bucket) == sorted(
        [
            BucketWork(bucket_of(A), T + timedelta(hours=1), None),
            BucketWork(bucket_of(B), None, T + MINUTE),
        ],
        key=lambda b: b.bucket,
    )


# --------------------------------------------------------------------------------------------
# Lock order
# --------------------------------------------------------------------------------------------


async def test_a_schedule_delete_racing_a_finish_of_its_runs_does_not_deadlock(
    world: World,
) -> None:
    # A schedule's DELETE locks the row, then its runs (cascade). A finish that locked the run
    # first and then waited for the schedule would deadlock with it.
    w = world
    s = await w.schedule()
    (claim,) = await w.claim()
    probe = await w.connect()
    try:
        async with w.db.transaction():
            await w.db.execute("SELECT 1 FROM schedules WHERE id = $1 FOR UPDATE", s.id)
            finishing = asyncio.create_task(
                w.store.finish_runs([RunOutcome(claim, RunState.SUCCESS, None, 1, T)])
            )
            await wait_for_lock_waiters(probe)
            assert not finishing.done()  # waits for the schedule ...
            async with probe.transaction():  # ... holding no lock on its run
                await probe.execute(
                    "SELECT 1 FROM schedule_runs WHERE id = $1 FOR UPDATE NOWAIT", claim.run.id
                )
            await w.db.execute("DELETE FROM schedules WHERE id = $1", s.id)
        assert await finishing == [None], "gone with its schedule"
    finally:
        await probe.close()
    assert await w.db.fetchval("SELECT count(*) FROM schedule_runs") == 0
