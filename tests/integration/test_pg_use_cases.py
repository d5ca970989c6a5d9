"""The schedule use cases on the API's asyncpg path under concurrency: several pools stand for
several server processes. Optimistic updates lose nothing, creates keep the quota and the
idempotency exact, conditional deletes answer like the locking ones did."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler_host.adapters.db.engine import build_engine
from scheduler_host.adapters.db.pg_pool import PgPool
from scheduler_host.adapters.db.pg_unit_of_work import PgUnitOfWorkFactory
from scheduler_host.adapters.migrations import upgrade_database
from scheduler_host.config import Settings
from scheduler_host.domain.endpoints import Endpoint, endpoint_id
from scheduler_host.domain.errors import (
    EtagMismatch,
    NameInUse,
    QuotaExceeded,
    ScheduleNotFound,
)
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service import schedules
from scheduler_host.service.schedules import ScheduleFields

T0 = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)
SETTINGS = Settings(max_schedules_per_install=50)


def clock() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def engine(empty_pg_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade_database(empty_pg_url)
    engine = build_engine(empty_pg_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def factories(engine: AsyncEngine) -> AsyncIterator[list[PgUnitOfWorkFactory]]:
    params = dict(engine.dialect.create_connect_args(engine.url)[1])
    pools = [PgPool(params, size=6) for _ in range(3)]
    try:
        yield [PgUnitOfWorkFactory(p) for p in pools]
    finally:
        for p in pools:
            await p.close()


@pytest.fixture
async def ctx(factories: list[PgUnitOfWorkFactory]) -> InstallContext:
    iid = uuid.uuid4()
    install = Install(
        install_id=iid,
        tenant_id="tenant-a",
        registry_id="ext",
        version_id="v1",
        content_hash="sha256:v1",
        enabled=True,
        granted_capabilities=("cap:scheduler.manage",),
        endpoints=(Endpoint(endpoint_id(iid, "v1", "POST", "/sync"), "POST", "/sync", "h"),),
        create_time=T0,
        update_time=T0,
    )
    async with factories[0]() as u:
        await u.installs.save(install)
        await u.commit()
    return install.context()


def fields(name: str = "", **payload: object) -> ScheduleFields:
    return ScheduleFields(
        endpoint="POST /sync",
        cron="0 * * * *",
        name=name,
        payload=payload or None,
        present=frozenset({"endpoint", "cron", "name", "payload"}),
    )


async def create(
    factory: PgUnitOfWorkFactory, ctx: InstallContext, name: str = "", request_id: str = ""
) -> Schedule:
    return await schedules.create_schedule(
        ctx, fields(name), request_id, uow_factory=factory, settings=SETTINGS, clock=clock
    )


async def test_concurrent_updates_of_different_fields_lose_nothing(
    factories: list[PgUnitOfWorkFactory], ctx: InstallContext
) -> None:
    created = await create(factories[0], ctx, "before")

    async def update(n: int) -> Schedule:
        if n == 0:
            changes, mask = ScheduleFields(name="renamed"), ["name"]
        elif n == 1:
            changes, mask = ScheduleFields(cron="30 2 * * *"), ["cron"]
        else:
            changes, mask = ScheduleFields(payload={"n": n}), ["payload"]
        return await schedules.update_schedule(
            ctx,
            str(created.id),
            "",
            changes,
            mask,
            uow_factory=factories[n % 3],
            settings=SETTINGS,
            clock=clock,
        )

    results = await asyncio.gather(*(update(n) for n in range(24)))
    final = await schedules.get_schedule(ctx, str(created.id), uow_factory=factories[0])
    # Every update changed something, so each made one revision: none was lost or doubled.
    assert final.revision == 1 + 24
    assert sorted(r.revision for r in results) == list(range(2, 26))
    assert final.name == "renamed" and final.cron == "30 2 * * *"
    assert final.payload == {"n": max(results, key=lambda r: r.revision).payload["n"]}


async def test_concurrent_updates_with_one_etag_let_one_through(
    factories: list[PgUnitOfWorkFactory], ctx: InstallContext
) -> None:
    created = await create(factories[0], ctx)

    async def update(n: int) -> Schedule | Exception:
        try:
            return await schedules.update_schedule(
                ctx,
                str(created.id),
                created.etag,
                ScheduleFields(payload={"n": n}),
                ["payload"],
                uow_factory=factories[n % 3],
                settings=SETTINGS,
                clock=clock,
            )
        except EtagMismatch as exc:
            return exc

    results = await asyncio.gather(*(update(n) for n in range(12)))
    assert sum(isinstance(r, Schedule) for r in results) == 1
    assert sum(isinstance(r, EtagMismatch) for r in results) == 11


async def test_an_update_to_a_taken_name_is_name_in_use(
    factories: list[PgUnitOfWorkFactory], ctx: InstallContext
) -> None:
    await create(factories[0], ctx, "taken")
    other = await create(factories[0], ctx, "free")
    with pytest.raises(NameInUse):
        await schedules.update_schedule(
            ctx,
            str(other.id),
            "",
            ScheduleFields(name="taken"),
            ["name"],
            uow_factory=factories[1],
            settings=SETTINGS,
            clock=clock,
        )
    got = await schedules.get_schedule(ctx, str(other.id), uow_factory=factories[2])
    assert got == other


async def test_concurrent_creates_keep_the_quota_and_the_request_ids(
    factories: list[PgUnitOfWorkFactory], ctx: InstallContext
) -> None:
    retried = str(uuid.uuid4())

    async def attempt(n: int) -> Schedule | Exception:
        try:
            rid = retried if n % 10 == 0 else str(uuid.uuid4())
            return await create(factories[n % 3], ctx, request_id=rid)
        except QuotaExceeded as exc:
            return exc

    results = await asyncio.gather(*(attempt(n) for n in range(90)))
    made = {r.id for r in results if isinstance(r, Schedule)}
    same = {r.id for n, r in enumerate(results) if n % 10 == 0 and isinstance(r, Schedule)}
    async with factories[0](autocommit=True) as u:
        assert await u.schedules.count(ctx.tenant_id, ctx.install_id) == 50
    assert len(made) == 50
    assert len(same) == 1, "every retry of one request id returns its one schedule"
    assert all(isinstance(r, Schedule | QuotaExceeded) for r in results)


async def test_a_duplicate_name_on_create_is_name_in_use(
    factories: list[PgUnitOfWorkFactory], ctx: InstallContext
) -> None:
    await create(factories[0], ctx, "nightly")
    with pytest.raises(NameInUse):
        await create(factories[1], ctx, "nightly")
    async with factories[0](autocommit=True) as u:
        assert await u.schedules.count(ctx.tenant_id, ctx.install_id) == 1


async def test_deletes_answer_not_found_and_etag_mismatch(
    factories: list[PgUnitOfWorkFactory], ctx: InstallContext
) -> None:
    factory = factories[0]
    s = await create(factory, ctx)
    stale = replace(s, revision=s.revision + 1).etag  # the form of an etag, another revision
    for etag in (stale, "garbage", f"{s.revision}-00000000"):
        with pytest.raises(EtagMismatch):
            await schedules.delete_schedule(ctx, str(s.id), etag, uow_factory=factory)
    await schedules.delete_schedule(ctx, str(s.id), s.etag, uow_factory=factory)
    for etag in ("", s.etag, "garbage"):
        with pytest.raises(ScheduleNotFound):
            await schedules.delete_schedule(ctx, str(s.id), etag, uow_factory=factory)
    other = await create(factory, ctx)
    await schedules.delete_schedule(ctx, str(other.id), "", uow_factory=factory)
    with pytest.raises(ScheduleNotFound):
        await schedules.get_schedule(ctx, str(other.id), uow_factory=factory)
