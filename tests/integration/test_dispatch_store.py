"""The dispatcher's store on real PostgreSQL and SQLite: a batch claimed in one transaction with
set-based statements (every kind of plan at once), the unique guard, the history cut per batch,
finishes written together and fenced by their leases, and concurrent claims that never share a
schedule."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler_host.adapters.db.dispatch_store import SqlDispatchStore
from scheduler_host.adapters.db.engine import build_engine
from scheduler_host.adapters.db.tables import endpoints, installs, schedule_runs, schedules
from scheduler_host.adapters.migrations import upgrade_database
from scheduler_host.domain.endpoints import endpoint_id
from scheduler_host.domain.runs import RunState, RunTrigger
from scheduler_host.service.dispatch import (
    ENDPOINT_MISSING,
    SKIPPED_IN_FLIGHT,
    SKIPPED_MISSED,
    plan_claim,
)
from scheduler_host.service.ports import ClaimedRun, ClaimPlan, RunOutcome, RunTarget

T = datetime(2026, 3, 7, 17, 0, tzinfo=UTC)
LEASE = T + timedelta(minutes=5)
CATCHUP = timedelta(minutes=10)


def plan_at(now: datetime) -> Any:
    def plan(target: RunTarget) -> ClaimPlan:
        return plan_claim(target, now, CATCHUP)

    return plan


@dataclass
class Fixture:
    engine: AsyncEngine
    store: SqlDispatchStore
    install_id: uuid.UUID
    tenant_id: str

    async def install(self, *, enabled: bool = True, tenant: str | None = None) -> uuid.UUID:
        iid = uuid.uuid4()
        tenant_id = tenant or self.tenant_id
        async with self.engine.begin() as conn:
            await conn.execute(
                installs.insert().values(
                    id=iid,
                    tenant_id=tenant_id,
                    registry_id="ext",
                    version_id="v1",
                    content_hash="sha256:x",
                    enabled=enabled,
                    granted_capabilities=["cap:scheduler.manage"],
                    create_time=T,
                    update_time=T,
                )
            )
            await conn.execute(
                endpoints.insert().values(
                    id=endpoint_id(iid, "v1", "POST", "/sync"),
                    tenant_id=tenant_id,
                    install_id=iid,
                    version_id="v1",
                    method="POST",
                    path="/sync",
                    handler="sync",
                )
            )
        return iid

    async def schedule(
        self,
        cron: str = "*/5 * * * *",
        next_run_time: datetime = T,
        *,
        install_id: uuid.UUID | None = None,
        path: str = "/sync",
    ) -> uuid.UUID:
        sid = uuid.uuid4()
        iid = install_id or self.install_id
        async with self.engine.begin() as conn:
            await conn.execute(
                schedules.insert().values(
                    id=sid,
                    tenant_id=self.tenant_id,
                    install_id=iid,
                    endpoint_id=endpoint_id(iid, "v1", "POST", path),
                    endpoint_method="POST",
                    endpoint_path=path,
                    name=None,
                    cron=cron,
                    timezone="UTC",
                    enabled=True,
                    payload={"n": 1},
                    next_run_time=next_run_time,
                    revision=1,
                    create_time=T - timedelta(days=1),
                    update_time=T - timedelta(days=1),
                )
            )
        return sid

    async def row(self, sid: uuid.UUID) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(schedules).where(schedules.c.id == sid))).one()

    async def runs(self, sid: uuid.UUID) -> list[Any]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(schedule_runs)
                .where(schedule_runs.c.schedule_id == sid)
                .order_by(schedule_runs.c.scheduled_time)
            )
            return list(result.all())

    async def add_runs(self, sid: uuid.UUID, count: int, status: str = "success") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                schedule_runs.insert(),
                [
                    {
                        "id": uuid.uuid4(),
                        "tenant_id": self.tenant_id,
                        "install_id": self.install_id,
                        "schedule_id": sid,
                        "trigger": "schedule",
                        "scheduled_time": T - timedelta(hours=n),
                        "status": status,
                        "attempt": 1,
                        "lease_until": LEASE if status == "running" else None,
                    }
                    for n in range(1, count + 1)
                ],
            )


@pytest.fixture
async def fx(empty_database_url: str) -> AsyncIterator[Fixture]:
    await upgrade_database(empty_database_url)
    engine = build_engine(empty_database_url)
    fixture = Fixture(engine, SqlDispatchStore(engine, 100), uuid.uuid4(), "tenant-a")
    fixture.install_id = await fixture.install()
    try:
        yield fixture
    finally:
        await engine.dispose()


async def test_one_claim_applies_every_kind_of_plan(fx: Fixture) -> None:
    fires = await fx.schedule()
    missed = await fx.schedule(next_run_time=T - timedelta(hours=2))
    busy = await fx.schedule()
    await fx.add_runs(busy, 1, status="running")
    async with fx.engine.begin() as conn:
        (open_run,) = (
            await conn.execute(
                sa.select(schedule_runs.c.id).where(schedule_runs.c.schedule_id == busy)
            )
        ).scalars()
        await conn.execute(
            schedules.update().where(schedules.c.id == busy).values(running_run_id=open_run)
        )
    gone = await fx.schedule(path="/gone")
    parked_install = await fx.install(enabled=False)
    parked = await fx.schedule(install_id=parked_install)
    later = await fx.schedule(next_run_time=T + timedelta(minutes=3))

    batch = await fx.store.claim_due(T, 10, LEASE, plan_at(T))

    assert batch.schedules == 5
    assert batch.next_due == T + timedelta(minutes=3)
    by_schedule = {c.run.schedule_id: c for c in batch.runs}
    assert set(by_schedule) == {fires, missed}
    for claim in batch.runs:
        assert claim.lease_until == LEASE and claim.run.status == RunState.RUNNING
        assert claim.run.start_time == T and claim.run.attempt == 1
        assert claim.target.install.install_id == fx.install_id

    (run,) = await fx.runs(fires)
    assert (run.status, run.scheduled_time, run.lease_until) == ("running", T, LEASE)
    fired = await fx.row(fires)
    assert fired.next_run_time == T + timedelta(minutes=5)
    assert fired.running_run_id == run.id and fired.revision == 1

    skipped, caught_up = await fx.runs(missed)
    assert (skipped.status, skipped.error) == ("skipped", SKIPPED_MISSED)
    assert (caught_up.status, caught_up.scheduled_time) == ("running", T)
    assert (await fx.row(missed)).last_run_status == "skipped"

    in_flight = [r for r in await fx.runs(busy) if r.status == "skipped"]
    assert [(r.scheduled_time, r.error) for r in in_flight] == [(T, SKIPPED_IN_FLIGHT)]
    busy_row = await fx.row(busy)
    assert busy_row.running_run_id == open_run and busy_row.last_error == SKIPPED_IN_FLIGHT

    disabled = await fx.row(gone)
    assert (disabled.enabled, disabled.next_run_time, disabled.last_error) == (
        False,
        None,
        ENDPOINT_MISSING,
    )
    assert disabled.revision == 2 and disabled.update_time == T
    assert await fx.runs(gone) == []

    parked_row = await fx.row(parked)
    assert parked_row.enabled and parked_row.next_run_time is None
    assert (await fx.row(later)).next_run_time == T + timedelta(minutes=3)


async def test_an_occurrence_already_recorded_is_not_fired_again(fx: Fixture) -> None:
    sid = await fx.schedule()
    async with fx.engine.begin() as conn:
        await conn.execute(
            schedule_runs.insert().values(
                id=uuid.uuid4(),
                tenant_id=fx.tenant_id,
                install_id=fx.install_id,
                schedule_id=sid,
                trigger="schedule",
                scheduled_time=T,
                status="success",
                attempt=1,
            )
        )
    other = await fx.schedule()
    batch = await fx.store.claim_due(T, 10, LEASE, plan_at(T))
    assert [c.run.schedule_id for c in batch.runs] == [other]
    row = await fx.row(sid)
    assert row.running_run_id is None and row.next_run_time == T + timedelta(minutes=5)


async def test_history_is_cut_to_the_limit_once_per_batch_keeping_open_runs(fx: Fixture) -> None:
    full = await fx.schedule()
    await fx.add_runs(full, 120)
    small = await fx.schedule()
    await fx.add_runs(small, 3)
    await fx.store.claim_due(T, 10, LEASE, plan_at(T))
    kept = await fx.runs(full)
    assert len(kept) == 100
    assert kept[-1].scheduled_time == T and kept[-1].status == "running"
    assert kept[0].scheduled_time == T - timedelta(hours=99)
    assert len(await fx.runs(small)) == 4


async def test_finishes_are_written_together_and_fenced_by_their_leases(fx: Fixture) -> None:
    ids = [await fx.schedule() for _ in range(4)]
    batch = await fx.store.claim_due(T, 10, LEASE, plan_at(T))
    claims = {c.run.schedule_id: c for c in batch.runs}
    ok, failed, disabled, lost = (claims[s] for s in ids)
    # Another process took `lost` over (its lease changed): this one must write nothing for it.
    async with fx.engine.begin() as conn:
        await conn.execute(
            schedule_runs.update()
            .where(schedule_runs.c.id == lost.run.id)
            .values(lease_until=LEASE + timedelta(minutes=1), attempt=2)
        )
    done = T + timedelta(seconds=2)

    def outcome(claim: ClaimedRun, status: RunState, error: str | None = None) -> RunOutcome:
        return RunOutcome(claim, status, error, 1, done)

    results = await fx.store.finish_runs(
        [
            outcome(ok, RunState.SUCCESS),
            outcome(failed, RunState.ERROR, "Runner returned status 500"),
            RunOutcome(disabled, RunState.ERROR, ENDPOINT_MISSING, 1, done, ENDPOINT_MISSING),
            outcome(lost, RunState.SUCCESS),
        ]
    )

    assert [r.status if r else None for r in results] == [
        RunState.SUCCESS,
        RunState.ERROR,
        RunState.ERROR,
        None,
    ]
    assert results[0] is not None and results[0].finish_time == done
    for claim, status, error in (
        (ok, "success", None),
        (failed, "error", "Runner returned status 500"),
        (disabled, "error", ENDPOINT_MISSING),
    ):
        (run,) = await fx.runs(claim.run.schedule_id)
        assert (run.status, run.error, run.finish_time, run.lease_until) == (
            status,
            error,
            done,
            None,
        )
        row = await fx.row(claim.run.schedule_id)
        assert (row.last_run_status, row.last_error, row.last_run_time) == (status, error, T)
        assert row.running_run_id is None
    assert (await fx.row(ok.run.schedule_id)).enabled
    gone = await fx.row(disabled.run.schedule_id)
    assert not gone.enabled and gone.next_run_time is None and gone.revision == 2
    (taken,) = await fx.runs(lost.run.schedule_id)
    assert (taken.status, taken.attempt) == ("running", 2)
    row = await fx.row(lost.run.schedule_id)
    assert row.running_run_id == lost.run.id and row.last_run_status is None


async def test_concurrent_claims_never_share_a_schedule(fx: Fixture) -> None:
    due = {await fx.schedule() for _ in range(60)}
    other = SqlDispatchStore(fx.engine, 100)

    async def claim_all(store: SqlDispatchStore) -> list[uuid.UUID]:
        claimed: list[uuid.UUID] = []
        while True:
            batch = await store.claim_due(T, 7, LEASE, plan_at(T))
            claimed += [c.run.schedule_id for c in batch.runs]
            if batch.schedules < 7:
                return claimed

    first, second = await asyncio.gather(claim_all(fx.store), claim_all(other))
    assert sorted(first + second) == sorted(due)
    async with fx.engine.connect() as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(schedule_runs))).scalar()
    assert count == 60


async def test_manual_and_taken_over_runs_go_through_the_same_records(fx: Fixture) -> None:
    sid = await fx.schedule()
    target = await fx.store.load_target(fx.tenant_id, fx.install_id, sid)
    assert target is not None
    manual = await fx.store.start_manual_run(target, T, T, LEASE)
    assert manual is not None and manual.run.trigger == RunTrigger.MANUAL
    assert await fx.store.start_manual_run(target, T, T, LEASE) is None  # the unique guard
    expired = T + timedelta(minutes=6)
    (taken,) = await fx.store.take_over_expired(expired, 10, expired + timedelta(minutes=5), [])
    assert (taken.run.id, taken.run.attempt) == (manual.run.id, 2)
    # A run this process is still making is not taken over, even when a clock jump expired it.
    later = expired + timedelta(hours=1)
    assert await fx.store.take_over_expired(later, 10, later, [taken.run.id]) == []
    (result,) = await fx.store.finish_runs([RunOutcome(taken, RunState.SUCCESS, None, 2, expired)])
    assert result is not None and result.attempt == 2
    assert (await fx.row(sid)).running_run_id is None


async def test_two_runs_of_one_schedule_finishing_together_are_both_recorded(fx: Fixture) -> None:
    sid = await fx.schedule("0 3 * * *", T + timedelta(hours=10))
    target = await fx.store.load_target(fx.tenant_id, fx.install_id, sid)
    assert target is not None
    first = await fx.store.start_manual_run(target, T, T, LEASE)
    second = await fx.store.start_manual_run(target, T + timedelta(microseconds=1), T, LEASE)
    assert first is not None and second is not None
    assert (await fx.row(sid)).running_run_id == first.run.id  # the first counts as in flight
    done = T + timedelta(seconds=1)
    results = await fx.store.finish_runs(
        [
            RunOutcome(first, RunState.SUCCESS, None, 1, done),
            RunOutcome(second, RunState.ERROR, "Runner returned status 500", 1, done),
        ]
    )
    assert [r.status if r else None for r in results] == [RunState.SUCCESS, RunState.ERROR]
    assert [r.status for r in await fx.runs(sid)] == ["success", "error"]
    row = await fx.row(sid)
    assert row.running_run_id is None and row.last_run_status in ("success", "error")


@pytest.fixture
async def fx_pg(empty_pg_url: str) -> AsyncIterator[Fixture]:
    await upgrade_database(empty_pg_url)
    engine = build_engine(empty_pg_url)
    fixture = Fixture(engine, SqlDispatchStore(engine, 100), uuid.uuid4(), "tenant-a")
    fixture.install_id = await fixture.install()
    try:
        yield fixture
    finally:
        await engine.dispose()


async def test_a_finish_locks_the_schedule_before_its_run_as_a_delete_does(fx_pg: Fixture) -> None:
    # A schedule's DELETE locks the row, then its runs (cascade). A finish that locked the run
    # first and then waited for the schedule would deadlock with it.
    fx = fx_pg
    sid = await fx.schedule()
    (claim,) = (await fx.store.claim_due(T, 10, LEASE, plan_at(T))).runs
    async with fx.engine.connect() as deleter:
        await deleter.begin()
        await deleter.execute(
            sa.select(schedules.c.id).where(schedules.c.id == sid).with_for_update()
        )
        finishing = asyncio.create_task(
            fx.store.finish_runs([RunOutcome(claim, RunState.SUCCESS, None, 1, T)])
        )
        await asyncio.sleep(0.3)
        assert not finishing.done()  # waits for the schedule ...
        async with fx.engine.connect() as probe:
            await probe.begin()
            await probe.execute(  # ... holding no lock on the run (NOWAIT would fail)
                sa.select(schedule_runs.c.id)
                .where(schedule_runs.c.id == claim.run.id)
                .with_for_update(nowait=True)
            )
            await probe.rollback()
        await deleter.execute(schedules.delete().where(schedules.c.id == sid))
        await deleter.commit()
    assert await asyncio.wait_for(finishing, 10) == [None]  # gone with its schedule
