"""The repositories through their units of work, each test on every production path: raw
asyncpg on PostgreSQL (the API's), SQLAlchemy on PostgreSQL and SQLAlchemy on SQLite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler_host.adapters.db.engine import build_engine
from scheduler_host.adapters.db.pg_unit_of_work import PgUnitOfWorkFactory
from scheduler_host.adapters.db.tables import rate_limit_hits, schedule_runs
from scheduler_host.adapters.db.tables import schedules as schedules_table
from scheduler_host.adapters.db.unit_of_work import SqlUnitOfWorkFactory
from scheduler_host.adapters.migrations import upgrade_database
from scheduler_host.app import api_pool_for
from scheduler_host.domain.endpoints import Endpoint, endpoint_id
from scheduler_host.domain.errors import NameInUse
from scheduler_host.domain.install import Install
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.ports import AddOutcome, UnitOfWorkFactory

T0 = datetime(2026, 3, 8, 6, 30, 0, 123456, tzinfo=UTC)
WINDOW = timedelta(seconds=60)
SECOND = timedelta(seconds=1)


BACKENDS = ["postgresql-asyncpg", "postgresql-sqlalchemy", "sqlite-sqlalchemy"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    fixture = "empty_sqlite_url" if backend.startswith("sqlite") else "empty_pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade_database(database_url)
    engine = build_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def uow(backend: str, engine: AsyncEngine) -> AsyncIterator[UnitOfWorkFactory]:
    if backend.endswith("sqlalchemy"):
        yield SqlUnitOfWorkFactory(engine)
        return
    pool = api_pool_for(engine, None)
    assert pool is not None
    try:
        yield PgUnitOfWorkFactory(pool)
    finally:
        await pool.close()


def make_install(
    *,
    install_id: uuid.UUID | None = None,
    tenant_id: str = "tenant-a",
    version_id: str = "v1",
    endpoints: tuple[tuple[str, str], ...] = (("POST", "/sync"), ("GET", "/status")),
    enabled: bool = True,
    capabilities: tuple[str, ...] = ("cap:scheduler.manage", "cap:http.fetch"),
    at: datetime = T0,
) -> Install:
    iid = install_id or uuid.uuid4()
    return Install(
        install_id=iid,
        tenant_id=tenant_id,
        registry_id="registry-ext",
        version_id=version_id,
        content_hash=f"sha256:{version_id}",
        enabled=enabled,
        granted_capabilities=capabilities,
        endpoints=tuple(
            Endpoint(endpoint_id(iid, version_id, m, p), m, p, f"handler{p}") for m, p in endpoints
        ),
        create_time=at,
        update_time=at,
    )


def make_schedule(
    install: Install,
    *,
    name: str | None = None,
    created: datetime = T0,
    schedule_id: uuid.UUID | None = None,
    payload: object = None,
) -> Schedule:
    endpoint = install.endpoints[0]
    return Schedule(
        id=schedule_id or uuid.uuid4(),
        install_id=install.install_id,
        tenant_id=install.tenant_id,
        endpoint_id=endpoint.id,
        endpoint_method=endpoint.method,
        endpoint_path=endpoint.path,
        name=name,
        cron="*/5 * * * *",
        timezone="Europe/Berlin",
        enabled=True,
        payload=payload,
        next_run_time=created + timedelta(minutes=5),
        last_run_time=None,
        last_run_status=None,
        last_error=None,
        create_time=created,
        update_time=created,
        revision=1,
    )


async def saved(uow: UnitOfWorkFactory, *installs: Install) -> None:
    async with uow() as u:
        for install in installs:
            await u.installs.save(install)
        await u.commit()


async def added(uow: UnitOfWorkFactory, *schedules: Schedule) -> None:
    async with uow() as u:
        for schedule in schedules:
            await u.schedules.add(schedule)
        await u.commit()


async def get_schedule(uow: UnitOfWorkFactory, s: Schedule) -> Schedule | None:
    async with uow() as u:
        return await u.schedules.get(s.tenant_id, s.install_id, s.id, for_update=False)


async def count(uow: UnitOfWorkFactory, install: Install) -> int:
    async with uow() as u:
        return await u.schedules.count(install.tenant_id, install.install_id)


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None, "timestamps come back timezone-aware"
    assert value.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------------------------
# Installs
# --------------------------------------------------------------------------------------------


async def test_install_save_get_context_and_endpoints(uow: UnitOfWorkFactory) -> None:
    install = make_install(endpoints=(("POST", "/sync"), ("GET", "/status"), ("GET", "/a")))
    await saved(uow, install)

    async with uow() as u:
        got = await u.installs.get(install.install_id)
        ctx = await u.installs.context(install.install_id)
        eps = await u.installs.endpoints(install.tenant_id, install.install_id, "v1")

    assert got is not None
    # Endpoints come back ordered by path, then method.
    expected_eps = tuple(sorted(install.endpoints, key=lambda e: (e.path, e.method)))
    assert got == replace(install, endpoints=expected_eps)
    assert ctx == install.context()
    assert eps == list(expected_eps)
    assert_utc(got.create_time)
    assert_utc(got.update_time)


async def test_unknown_install(uow: UnitOfWorkFactory) -> None:
    unknown = uuid.uuid4()
    async with uow() as u:
        assert await u.installs.get(unknown) is None
        assert await u.installs.context(unknown) is None
        assert await u.installs.endpoints("tenant-a", unknown, "v1") == []
        assert await u.installs.lock("tenant-a", unknown) is False
        assert await u.installs.delete(unknown) is False


async def test_saving_again_updates_the_install_and_replaces_its_endpoints(
    uow: UnitOfWorkFactory,
) -> None:
    first = make_install(endpoints=(("POST", "/sync"), ("GET", "/status")))
    await saved(uow, first)
    later = T0 + timedelta(hours=1)
    second = make_install(
        install_id=first.install_id,
        version_id="v2",
        endpoints=(("POST", "/sync2"),),
        enabled=False,
        capabilities=(),
        at=later,
    )
    await saved(uow, second)

    async with uow() as u:
        got = await u.installs.get(first.install_id)
        old_eps = await u.installs.endpoints(first.tenant_id, first.install_id, "v1")
        new_eps = await u.installs.endpoints(first.tenant_id, first.install_id, "v2")
        ctx = await u.installs.context(first.install_id)

    assert got is not None
    assert got.version_id == "v2"
    assert got.enabled is False
    assert got.granted_capabilities == ()
    assert got.endpoints == second.endpoints
    assert got.update_time == later
    assert got.create_time == T0, "the first registration time is kept"
    assert old_eps == []
    assert new_eps == list(second.endpoints)
    assert ctx is not None and ctx.capabilities == frozenset() and not ctx.enabled


async def test_saving_an_install_without_endpoints(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    await saved(uow, replace(install, endpoints=()))
    async with uow() as u:
        got = await u.installs.get(install.install_id)
    assert got is not None and got.endpoints == ()


async def test_endpoints_are_scoped_by_tenant(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    async with uow() as u:
        assert await u.installs.endpoints("tenant-b", install.install_id, "v1") == []
        assert await u.installs.lock("tenant-b", install.install_id) is False
        assert await u.installs.lock(install.tenant_id, install.install_id) is True


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


async def test_schedule_add_and_get(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    schedule = make_schedule(
        install, name="nightly", payload={"full": True, "n": 3, "list": [1, "x", None]}
    )
    await added(uow, schedule)

    async with uow() as u:
        got = await u.schedules.get(
            install.tenant_id, install.install_id, schedule.id, for_update=False
        )
        locked = await u.schedules.get(
            install.tenant_id, install.install_id, schedule.id, for_update=True
        )
    assert got == schedule
    assert locked == schedule
    assert got is not None and got.etag == schedule.etag


async def test_payloads_round_trip_and_unset_stays_unset(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    unset = make_schedule(install)
    array = make_schedule(install, payload=[{"a": 1}, [], "é", 1.5])
    empty = make_schedule(install, payload={})
    await added(uow, unset, array, empty)
    assert (await get_schedule(uow, unset)) == unset
    got_array = await get_schedule(uow, array)
    assert got_array is not None and got_array.payload == [{"a": 1}, [], "é", 1.5]
    got_empty = await get_schedule(uow, empty)
    assert got_empty is not None and got_empty.payload == {}


async def test_a_schedule_is_only_found_in_its_own_tenant_and_install(
    uow: UnitOfWorkFactory,
) -> None:
    install, other = make_install(), make_install()
    await saved(uow, install, other)
    schedule = make_schedule(install)
    await added(uow, schedule)
    async with uow() as u:
        assert (
            await u.schedules.get("tenant-b", install.install_id, schedule.id, for_update=False)
            is None
        )
        assert (
            await u.schedules.get(other.tenant_id, other.install_id, schedule.id, for_update=False)
            is None
        )
        assert (
            await u.schedules.get(
                install.tenant_id, install.install_id, uuid.uuid4(), for_update=False
            )
            is None
        )
        assert await u.schedules.delete(other.tenant_id, other.install_id, schedule.id) is False
        assert await u.schedules.count("tenant-b", install.install_id) == 0
    assert await get_schedule(uow, schedule) == schedule


async def test_list_page_keyset_order(uow: UnitOfWorkFactory) -> None:
    install, other = make_install(), make_install()
    await saved(uow, install, other)
    # Several schedules share a create_time, so the id decides their order.
    times = [T0, T0 + SECOND, T0, T0 + 2 * SECOND, T0 + SECOND, T0, T0 - SECOND]
    schedules = [make_schedule(install, created=t) for t in times]
    await added(uow, *schedules, make_schedule(other), make_schedule(other, created=T0 - SECOND))
    expected = sorted(schedules, key=lambda s: (s.create_time, s.id))

    async with uow() as u:
        everything = await u.schedules.list_page(install.tenant_id, install.install_id, None, 100)
        pages: list[list[Schedule]] = []
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            page = await u.schedules.list_page(install.tenant_id, install.install_id, after, 3)
            if not page:
                break
            pages.append(page)
            after = (page[-1].create_time, page[-1].id)
        assert await u.schedules.for_install(install.tenant_id, install.install_id) == expected
        assert await u.schedules.list_page("tenant-b", install.install_id, None, 100) == []

    assert [s.id for s in everything] == [s.id for s in expected]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [s.id for p in pages for s in p] == [s.id for s in expected]


async def test_list_page_is_stable_while_rows_are_added_and_removed(
    uow: UnitOfWorkFactory,
) -> None:
    install = make_install()
    await saved(uow, install)
    schedules = [make_schedule(install, created=T0 + i * SECOND) for i in range(6)]
    await added(uow, *schedules)
    async with uow() as u:
        first = await u.schedules.list_page(install.tenant_id, install.install_id, None, 3)
    # Between pages: the first row goes away and a new row arrives at the end.
    async with uow() as u:
        await u.schedules.delete(install.tenant_id, install.install_id, schedules[0].id)
        await u.schedules.add(make_schedule(install, created=T0 + 10 * SECOND))
        await u.commit()
    async with uow() as u:
        second = await u.schedules.list_page(
            install.tenant_id, install.install_id, (first[-1].create_time, first[-1].id), 3
        )
    assert [s.id for s in first] == [s.id for s in schedules[:3]]
    assert [s.id for s in second] == [s.id for s in schedules[3:6]]


async def test_list_page_orders_by_instant_whatever_the_input_zone(
    uow: UnitOfWorkFactory,
) -> None:
    install = make_install()
    await saved(uow, install)
    berlin = ZoneInfo("Europe/Berlin")
    # 09:30 in Berlin (08:30 UTC) is earlier than 09:00 UTC, though its wall clock is later.
    early = make_schedule(install, created=datetime(2026, 1, 10, 9, 30, tzinfo=berlin))
    late = make_schedule(install, created=datetime(2026, 1, 10, 9, 0, tzinfo=UTC))
    later = make_schedule(
        install, created=datetime(2026, 1, 10, 5, 0, tzinfo=timezone(timedelta(hours=-5)))
    )
    await added(uow, later, late, early)
    async with uow() as u:
        listed = await u.schedules.list_page(install.tenant_id, install.install_id, None, 10)
        # The bound as the repository hands it out (UTC), as a page token carries it.
        after_early = await u.schedules.list_page(
            install.tenant_id, install.install_id, (listed[0].create_time, listed[0].id), 10
        )
    assert [s.id for s in listed] == [early.id, late.id, later.id]
    assert [s.id for s in after_early] == [late.id, later.id]


async def test_list_page_bound_given_in_another_zone(uow: UnitOfWorkFactory) -> None:
    # The keyset bound is an instant: the same instant written in another zone must select the
    # same rows, on every database.
    install = make_install()
    await saved(uow, install)
    berlin = ZoneInfo("Europe/Berlin")
    early = make_schedule(install, created=datetime(2026, 1, 10, 8, 30, tzinfo=UTC))
    late = make_schedule(install, created=datetime(2026, 1, 10, 9, 0, tzinfo=UTC))
    await added(uow, early, late)
    bound = (early.create_time.astimezone(berlin), early.id)  # 09:30+01:00
    async with uow() as u:
        after_early = await u.schedules.list_page(install.tenant_id, install.install_id, bound, 10)
    assert [s.id for s in after_early] == [late.id]


async def test_count(uow: UnitOfWorkFactory) -> None:
    install, other = make_install(), make_install()
    await saved(uow, install, other)
    assert await count(uow, install) == 0
    await added(uow, *(make_schedule(install) for _ in range(4)), make_schedule(other))
    assert await count(uow, install) == 4
    assert await count(uow, other) == 1


async def test_replace_writes_every_field_but_keeps_identity_and_create_time(
    uow: UnitOfWorkFactory,
) -> None:
    install = make_install(endpoints=(("POST", "/sync"), ("GET", "/status")))
    await saved(uow, install)
    schedule = make_schedule(install, name="before", payload={"a": 1})
    await added(uow, schedule)
    status = install.endpoints[1]
    changed = replace(
        schedule,
        endpoint_id=status.id,
        endpoint_method=status.method,
        endpoint_path=status.path,
        name="after",
        cron="0 * * * *",
        timezone="America/New_York",
        enabled=False,
        payload=None,
        next_run_time=None,
        last_run_time=T0 + timedelta(minutes=5),
        last_run_status="error",
        last_error="Runner returned status 500",
        update_time=T0 + timedelta(hours=1),
        revision=2,
        create_time=T0 + timedelta(days=1),  # ignored: the creation time never changes
    )
    async with uow() as u:
        await u.schedules.replace(changed)
        await u.commit()
    got = await get_schedule(uow, schedule)
    assert got == replace(changed, create_time=T0)
    assert got is not None and got.etag != schedule.etag


async def test_delete(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    keep, gone = make_schedule(install), make_schedule(install)
    await added(uow, keep, gone)
    async with uow() as u:
        assert await u.schedules.delete(install.tenant_id, install.install_id, gone.id) is True
        await u.commit()
    async with uow() as u:
        assert await u.schedules.delete(install.tenant_id, install.install_id, gone.id) is False
    assert await get_schedule(uow, gone) is None
    assert await get_schedule(uow, keep) == keep
    assert await count(uow, install) == 1


async def test_deleting_a_schedule_removes_its_runs(
    uow: UnitOfWorkFactory, engine: AsyncEngine
) -> None:
    install = make_install()
    await saved(uow, install)
    schedule = make_schedule(install)
    await added(uow, schedule)
    async with engine.begin() as conn:
        await conn.execute(
            schedule_runs.insert().values(
                id=uuid.uuid4(),
                tenant_id=install.tenant_id,
                install_id=install.install_id,
                schedule_id=schedule.id,
                trigger="schedule",
                scheduled_time=T0,
                status="success",
                attempt=1,
            )
        )
    async with uow() as u:
        assert len(await u.runs.page(install.tenant_id, schedule.id, None, 10)) == 1
        await u.schedules.delete(install.tenant_id, install.install_id, schedule.id)
        await u.commit()
    async with uow() as u:
        assert await u.runs.page(install.tenant_id, schedule.id, None, 10) == []


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


async def test_a_duplicate_name_in_one_install_is_name_in_use(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    first = make_schedule(install, name="nightly")
    await added(uow, first)
    async with uow() as u:
        with pytest.raises(NameInUse):
            await u.schedules.add(make_schedule(install, name="nightly"))
    # The refusal ends the unit of work (on PostgreSQL its transaction is void); a new one works.
    async with uow() as u:
        assert await u.schedules.name_taken(install.tenant_id, install.install_id, "nightly", None)
        other_name = make_schedule(install, name="hourly")
        await u.schedules.add(other_name)
        await u.commit()
    assert await count(uow, install) == 2
    assert await get_schedule(uow, other_name) == other_name


async def test_the_same_name_in_another_install_is_fine(uow: UnitOfWorkFactory) -> None:
    install, other = make_install(), make_install(tenant_id="tenant-b")
    same_tenant = make_install()
    await saved(uow, install, other, same_tenant)
    await added(
        uow,
        make_schedule(install, name="nightly"),
        make_schedule(other, name="nightly"),
        make_schedule(same_tenant, name="nightly"),
    )
    for i in (install, other, same_tenant):
        assert await count(uow, i) == 1


async def test_names_are_case_sensitive(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    await added(uow, make_schedule(install, name="nightly"), make_schedule(install, name="Nightly"))
    assert await count(uow, install) == 2


async def test_several_unnamed_schedules_are_fine(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    await added(uow, *(make_schedule(install, name=None) for _ in range(3)))
    assert await count(uow, install) == 3


async def test_replace_to_a_taken_name_is_name_in_use(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    a, b = make_schedule(install, name="a"), make_schedule(install, name="b")
    await added(uow, a, b)
    async with uow() as u:
        with pytest.raises(NameInUse):
            await u.schedules.replace(replace(b, name="a", revision=2))
    async with uow() as u:
        assert (
            await u.schedules.name_taken(install.tenant_id, install.install_id, "a", a.id) is False
        )
        assert (
            await u.schedules.name_taken(install.tenant_id, install.install_id, "a", b.id) is True
        )
        await u.schedules.replace(replace(b, name="c", revision=2))
        await u.commit()
    got = await get_schedule(uow, b)
    assert got is not None and got.name == "c"


# --------------------------------------------------------------------------------------------
# Cascades and transactions
# --------------------------------------------------------------------------------------------


async def test_deleting_an_install_cascades_to_its_schedules_and_endpoints(
    uow: UnitOfWorkFactory,
) -> None:
    install, other = make_install(), make_install()
    await saved(uow, install, other)
    await added(uow, make_schedule(install), make_schedule(install), make_schedule(other))
    async with uow() as u:
        assert await u.installs.delete(install.install_id) is True
        await u.commit()
    async with uow() as u:
        assert await u.installs.get(install.install_id) is None
        assert await u.installs.endpoints(install.tenant_id, install.install_id, "v1") == []
        assert await u.schedules.count(install.tenant_id, install.install_id) == 0
        assert await u.schedules.count(other.tenant_id, other.install_id) == 1


async def test_leaving_without_commit_rolls_back(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    kept = make_schedule(install, name="kept")
    await added(uow, kept)
    dropped = make_schedule(install)
    async with uow() as u:
        await u.schedules.add(dropped)
        await u.schedules.replace(replace(kept, name="renamed", revision=2))
        await u.installs.save(replace(install, version_id="v9", endpoints=()))
        await u.schedules.remember_request(
            install.tenant_id, install.install_id, uuid.uuid4(), dropped.id, T0
        )
        assert await u.schedules.count(install.tenant_id, install.install_id) == 2
    assert await get_schedule(uow, dropped) is None
    assert await get_schedule(uow, kept) == kept
    async with uow() as u:
        got = await u.installs.get(install.install_id)
    assert got is not None and got.version_id == "v1" and len(got.endpoints) == 2


async def test_leaving_without_commit_rolls_back_plain_writes(
    uow: UnitOfWorkFactory,
) -> None:
    # Writes without a savepoint (no add/replace first): isolates the savepoint case above.
    install = make_install()
    request_id = uuid.uuid4()
    async with uow() as u:
        await u.installs.save(install)
        await u.schedules.remember_request(
            install.tenant_id, install.install_id, request_id, uuid.uuid4(), T0
        )
        await u.schedules.add(make_schedule(install))
    async with uow() as u:
        assert await u.installs.get(install.install_id) is None
        assert (
            await u.schedules.find_request(
                install.tenant_id, install.install_id, request_id, T0 - WINDOW
            )
            is None
        )
        assert await u.schedules.count(install.tenant_id, install.install_id) == 0


async def test_an_exception_inside_the_unit_of_work_rolls_back(
    uow: UnitOfWorkFactory,
) -> None:
    install = make_install()
    await saved(uow, install)
    schedule = make_schedule(install)
    with pytest.raises(LookupError):
        async with uow() as u:
            await u.schedules.add(schedule)
            raise LookupError("boom")
    assert await get_schedule(uow, schedule) is None


async def test_a_unit_of_work_is_reusable_after_it_closed(uow: UnitOfWorkFactory) -> None:
    unit = uow()
    install = make_install()
    async with unit as u:
        await u.installs.save(install)
        await u.commit()
    async with unit as u:
        assert await u.installs.get(install.install_id) is not None


# --------------------------------------------------------------------------------------------
# Idempotency keys
# --------------------------------------------------------------------------------------------


async def test_find_and_remember_request(uow: UnitOfWorkFactory) -> None:
    install, other = make_install(), make_install()
    await saved(uow, install, other)
    request_id, schedule_id = uuid.uuid4(), uuid.uuid4()
    tenant, iid = install.tenant_id, install.install_id

    async with uow() as u:
        assert await u.schedules.find_request(tenant, iid, request_id, T0 - WINDOW) is None
        await u.schedules.remember_request(tenant, iid, request_id, schedule_id, T0)
        await u.commit()

    day = timedelta(hours=24)
    async with uow() as u:
        found = u.schedules.find_request
        assert await found(tenant, iid, request_id, T0 - day) == schedule_id
        assert await found(tenant, iid, request_id, T0 - timedelta(microseconds=1)) == schedule_id
        # `since` is exclusive: a key made exactly at the bound has expired.
        assert await found(tenant, iid, request_id, T0) is None
        assert await found(tenant, iid, request_id, T0 + SECOND) is None
        # Scoped by install and tenant.
        assert await found(other.tenant_id, other.install_id, request_id, T0 - day) is None
        assert await found("tenant-b", iid, request_id, T0 - day) is None
        assert await found(tenant, iid, uuid.uuid4(), T0 - day) is None


async def test_the_same_request_id_in_another_install_is_independent(
    uow: UnitOfWorkFactory,
) -> None:
    install, other = make_install(), make_install()
    await saved(uow, install, other)
    request_id, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with uow() as u:
        await u.schedules.remember_request(
            install.tenant_id, install.install_id, request_id, first, T0
        )
        await u.schedules.remember_request(
            other.tenant_id, other.install_id, request_id, second, T0
        )
        await u.commit()
    async with uow() as u:
        since = T0 - WINDOW
        assert (
            await u.schedules.find_request(install.tenant_id, install.install_id, request_id, since)
            == first
        )
        assert (
            await u.schedules.find_request(other.tenant_id, other.install_id, request_id, since)
            == second
        )


async def test_an_expired_request_id_can_be_remembered_again(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    request_id, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    tenant, iid = install.tenant_id, install.install_id
    later = T0 + timedelta(hours=25)
    async with uow() as u:
        await u.schedules.remember_request(tenant, iid, request_id, first, T0)
        await u.commit()
    async with uow() as u:
        assert (
            await u.schedules.find_request(tenant, iid, request_id, later - timedelta(hours=24))
            is None
        )
        await u.schedules.remember_request(tenant, iid, request_id, second, later)
        await u.commit()
    async with uow() as u:
        since = later - timedelta(hours=24)
        assert await u.schedules.find_request(tenant, iid, request_id, since) == second


# --------------------------------------------------------------------------------------------
# Rate limiter
# --------------------------------------------------------------------------------------------


async def hit(
    uow: UnitOfWorkFactory, at: datetime, *, scope: str = "mutations:a", limit: int = 3
) -> timedelta | None:
    async with uow() as u:
        wait = await u.rate_limits.hit(scope, "tenant-a", limit, WINDOW, at)
        await u.commit()
    return wait


async def stored_hits(engine: AsyncEngine, scope: str) -> list[datetime]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(rate_limit_hits.c.hit_time)
            .where(rate_limit_hits.c.scope == scope)
            .order_by(rate_limit_hits.c.hit_time)
        )
        return list(rows.scalars())


async def test_rate_limit_allows_limit_hits_then_refuses_with_the_real_wait(
    uow: UnitOfWorkFactory,
) -> None:
    assert await hit(uow, T0) is None
    assert await hit(uow, T0 + 10 * SECOND) is None
    assert await hit(uow, T0 + 20 * SECOND) is None
    # The first hit leaves the window at T0 + 60 s: 30 s from now.
    assert await hit(uow, T0 + 30 * SECOND) == timedelta(seconds=30)
    assert await hit(uow, T0 + 59 * SECOND) == SECOND


async def test_a_refused_hit_is_not_counted(uow: UnitOfWorkFactory) -> None:
    for offset in (0, 10, 20):
        assert await hit(uow, T0 + offset * SECOND) is None
    assert await hit(uow, T0 + 30 * SECOND) == timedelta(seconds=30)
    assert await hit(uow, T0 + 40 * SECOND) == timedelta(seconds=20)
    # Had the refused hits counted, the window (T0+1 s, T0+61 s] would still be full.
    assert await hit(uow, T0 + 61 * SECOND) is None
    # Now T0+10 s, T0+20 s and T0+61 s are in the window.
    assert await hit(uow, T0 + 62 * SECOND) == timedelta(seconds=8)


async def test_waiting_the_announced_time_is_enough(uow: UnitOfWorkFactory) -> None:
    for offset in (0.0, 0.5, 7.25):
        assert await hit(uow, T0 + timedelta(seconds=offset)) is None
    now = T0 + timedelta(seconds=12.5)
    wait = await hit(uow, now)
    assert wait == timedelta(seconds=47.5)
    assert await hit(uow, now + wait - timedelta(milliseconds=1)) is not None
    assert await hit(uow, now + wait) is None


async def test_hits_older_than_the_window_are_forgotten(
    uow: UnitOfWorkFactory, engine: AsyncEngine
) -> None:
    for offset in (0, 10, 20):
        assert await hit(uow, T0 + offset * SECOND) is None
    much_later = T0 + timedelta(minutes=10)
    for offset in (0, 1, 2):
        assert await hit(uow, much_later + offset * SECOND) is None
    assert await hit(uow, much_later + 3 * SECOND) == timedelta(seconds=57)
    # The old hits are not only ignored but removed.
    assert await stored_hits(engine, "mutations:a") == [
        much_later,
        much_later + SECOND,
        much_later + 2 * SECOND,
    ]


async def test_rate_limit_scopes_are_independent(uow: UnitOfWorkFactory) -> None:
    for _ in range(2):
        assert await hit(uow, T0, scope="mutations:a", limit=2) is None
    assert await hit(uow, T0, scope="mutations:a", limit=2) == WINDOW
    assert await hit(uow, T0, scope="mutations:b", limit=2) is None


async def test_a_caller_whose_clock_lags_a_stored_hit_counts_from_that_hit(
    uow: UnitOfWorkFactory, engine: AsyncEngine
) -> None:
    # Two processes: one read its clock later but reached the database first.
    assert await hit(uow, T0 + SECOND, limit=2) is None
    assert await hit(uow, T0, limit=2) is None
    # Hit times never go back, so the window's order is the order the hits were counted in.
    assert await stored_hits(engine, "mutations:a") == [T0 + SECOND, T0 + SECOND]
    # A refusal's wait never exceeds the window, whatever the lag of the caller's clock.
    assert await hit(uow, T0, limit=2) == WINDOW


async def test_an_uncommitted_hit_does_not_count(uow: UnitOfWorkFactory) -> None:
    async with uow() as u:
        assert await u.rate_limits.hit("mutations:a", "tenant-a", 1, WINDOW, T0) is None
    assert await hit(uow, T0 + SECOND, limit=1) is None
    assert await hit(uow, T0 + 2 * SECOND, limit=1) == timedelta(seconds=59)


# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------


async def test_timestamps_come_back_timezone_aware_utc(
    uow: UnitOfWorkFactory, engine: AsyncEngine
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    created = datetime(2026, 7, 1, 14, 15, 16, 987654, tzinfo=berlin)  # 12:15:16 UTC
    install = make_install(at=created)
    await saved(uow, install)
    schedule = replace(
        make_schedule(install, created=created),
        last_run_time=datetime(2026, 7, 1, 8, 0, tzinfo=timezone(timedelta(hours=-4))),
    )
    await added(uow, schedule)
    assert await hit(uow, created) is None

    got = await get_schedule(uow, schedule)
    async with uow() as u:
        got_install = await u.installs.get(install.install_id)
    assert got is not None and got_install is not None
    for value, sent in [
        (got.create_time, schedule.create_time),
        (got.update_time, schedule.update_time),
        (got.next_run_time, schedule.next_run_time),
        (got.last_run_time, schedule.last_run_time),
        (got_install.create_time, install.create_time),
        (got_install.update_time, install.update_time),
    ]:
        assert_utc(value)
        assert value == sent, "the same instant, to the microsecond"
    assert got.create_time.hour == 12
    assert got.last_run_time is not None and got.last_run_time.hour == 12
    hits = await stored_hits(engine, "mutations:a")
    assert len(hits) == 1
    assert_utc(hits[0])
    assert hits[0] == created


async def test_a_naive_timestamp_is_refused(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    naive = replace(make_schedule(install), create_time=datetime(2026, 1, 1, 12, 0))
    async with uow() as u:
        with pytest.raises((sa.exc.StatementError, ValueError), match="naive datetime"):
            await u.schedules.add(naive)
    assert await count(uow, install) == 0


# --------------------------------------------------------------------------------------------
# The combined steps of the use cases
# --------------------------------------------------------------------------------------------


async def test_page_with_total_counts_the_whole_install(uow: UnitOfWorkFactory) -> None:
    install, other = make_install(), make_install()
    await saved(uow, install, other)
    schedules = [make_schedule(install, created=T0 + i * SECOND) for i in range(5)]
    await added(uow, *schedules, make_schedule(other))
    tenant, iid = install.tenant_id, install.install_id
    async with uow(autocommit=True) as u:
        first, total = await u.schedules.page_with_total(tenant, iid, None, 2)
        after = (first[-1].create_time, first[-1].id)
        second, total_again = await u.schedules.page_with_total(tenant, iid, after, 10)
        past_the_end, total_past = await u.schedules.page_with_total(
            tenant, iid, (schedules[-1].create_time, schedules[-1].id), 10
        )
        empty, none = await u.schedules.page_with_total(other.tenant_id, uuid.uuid4(), None, 10)
    assert first == schedules[:2] and total == 5
    assert second == schedules[2:] and total_again == 5
    assert past_the_end == [] and total_past == 5, "an empty page still carries the total"
    assert empty == [] and none == 0


async def test_usage_counts_and_finds_the_request(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    await added(uow, make_schedule(install), make_schedule(install))
    request_id, schedule_id = uuid.uuid4(), uuid.uuid4()
    tenant, iid = install.tenant_id, install.install_id
    async with uow() as u:
        await u.schedules.remember_request(tenant, iid, request_id, schedule_id, T0)
        await u.commit()
    async with uow(autocommit=True) as u:
        assert await u.schedules.usage(tenant, iid, None, T0 - WINDOW) == (2, None)
        assert await u.schedules.usage(tenant, iid, request_id, T0 - WINDOW) == (2, schedule_id)
        assert await u.schedules.usage(tenant, iid, request_id, T0) == (2, None)
        assert await u.schedules.usage(tenant, iid, uuid.uuid4(), T0 - WINDOW) == (2, None)
        assert await u.schedules.usage("tenant-b", iid, request_id, T0 - WINDOW) == (0, None)


async def test_add_within_quota(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    tenant, iid = install.tenant_id, install.install_id
    request_id = uuid.uuid4()
    first = make_schedule(install, name="first")
    async with uow() as u:
        assert await u.installs.lock(tenant, iid)
        outcome = await u.schedules.add_within_quota(first, 2, request_id, T0 - WINDOW)
        await u.commit()
    assert outcome == AddOutcome(added=True)
    assert await get_schedule(uow, first) == first
    async with uow(autocommit=True) as u:
        assert await u.schedules.find_request(tenant, iid, request_id, T0 - WINDOW) == first.id

    # The same request id again: the first schedule, nothing written.
    retry = make_schedule(install, name="retry")
    async with uow() as u:
        outcome = await u.schedules.add_within_quota(retry, 2, request_id, T0 - WINDOW)
        await u.commit()
    assert outcome == AddOutcome(added=False, earlier=first.id)
    assert await get_schedule(uow, retry) is None

    # A taken name is refused by the index.
    with pytest.raises(NameInUse):
        async with uow() as u:
            await u.schedules.add_within_quota(
                make_schedule(install, name="first"), 2, None, T0 - WINDOW
            )
    second = make_schedule(install)
    async with uow() as u:
        assert await u.schedules.add_within_quota(second, 2, None, T0 - WINDOW) == AddOutcome(
            added=True
        )
        await u.commit()
    # Full: nothing written, not even a duplicate name's refusal (the quota comes first).
    async with uow() as u:
        full = await u.schedules.add_within_quota(
            make_schedule(install, name="first"), 2, uuid.uuid4(), T0 - WINDOW
        )
        await u.commit()
    assert full == AddOutcome(added=False)
    assert await count(uow, install) == 2


async def test_add_within_quota_replaces_an_expired_request_id(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    tenant, iid = install.tenant_id, install.install_id
    request_id = uuid.uuid4()
    old = make_schedule(install)
    later = T0 + timedelta(hours=25)
    new = make_schedule(install, created=later)
    async with uow() as u:
        await u.schedules.add_within_quota(old, 50, request_id, T0 - WINDOW)
        await u.commit()
    async with uow() as u:
        outcome = await u.schedules.add_within_quota(
            new, 50, request_id, later - timedelta(hours=24)
        )
        await u.commit()
    assert outcome == AddOutcome(added=True)
    async with uow(autocommit=True) as u:
        since = later - timedelta(hours=24)
        assert await u.schedules.find_request(tenant, iid, request_id, since) == new.id


async def test_update_definition_writes_only_at_the_expected_revision(
    uow: UnitOfWorkFactory, engine: AsyncEngine
) -> None:
    install = make_install()
    await saved(uow, install)
    schedule = make_schedule(install, name="a", payload={"v": 1})
    taken = make_schedule(install, name="taken")
    await added(uow, schedule, taken)
    # The dispatcher's own fields, changed without a revision.
    ran = T0 + timedelta(minutes=5)
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(schedules_table)
            .where(schedules_table.c.id == schedule.id)
            .values(last_run_time=ran, last_run_status="success", next_run_time=ran + WINDOW)
        )
    later = T0 + timedelta(hours=1)
    changed = replace(
        schedule,
        name="b",
        payload=[1, 2],
        cron="0 * * * *",
        revision=2,
        update_time=later,
        next_run_time=later + WINDOW,  # not written: the timing is said not to change
    )
    async with uow(autocommit=True) as u:
        assert await u.schedules.update_definition(changed, 7, timing=False) is None
        stored = await u.schedules.update_definition(changed, 1, timing=False)
        await u.commit()
    assert stored == replace(
        changed,
        last_run_time=ran,
        last_run_status="success",
        next_run_time=ran + WINDOW,
    )
    assert await get_schedule(uow, schedule) == stored
    timed = replace(stored, revision=3, next_run_time=None, enabled=False)
    async with uow(autocommit=True) as u:
        again = await u.schedules.update_definition(timed, 2, timing=True)
        await u.commit()
    assert again is not None and again.next_run_time is None and again.revision == 3
    async with uow(autocommit=True) as u:
        with pytest.raises(NameInUse):
            await u.schedules.update_definition(replace(timed, name="taken"), 3, timing=False)
    async with uow(autocommit=True) as u:
        gone = replace(timed, id=uuid.uuid4())
        assert await u.schedules.update_definition(gone, 3, timing=False) is None


async def test_delete_at_a_revision(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    schedule = replace(make_schedule(install), revision=4)
    await added(uow, schedule)
    tenant, iid = install.tenant_id, install.install_id
    async with uow(autocommit=True) as u:
        assert await u.schedules.delete(tenant, iid, schedule.id, revision=3) is False
        await u.commit()
    assert await get_schedule(uow, schedule) == schedule
    async with uow(autocommit=True) as u:
        assert await u.schedules.delete(tenant, iid, schedule.id, revision=4) is True
        await u.commit()
    assert await get_schedule(uow, schedule) is None


async def test_autocommit_reads_and_writes(uow: UnitOfWorkFactory) -> None:
    install = make_install()
    await saved(uow, install)
    schedule = make_schedule(install)
    async with uow(autocommit=True) as u:
        await u.schedules.add(schedule)
        await u.commit()
        assert (
            await u.schedules.get(
                install.tenant_id, install.install_id, schedule.id, for_update=False
            )
            == schedule
        )
        assert await u.installs.context(install.install_id) == install.context()
    assert await get_schedule(uow, schedule) == schedule


async def test_a_unit_of_work_without_statements_is_fine(uow: UnitOfWorkFactory) -> None:
    for autocommit in (False, True):
        async with uow(autocommit=autocommit) as u:
            await u.commit()
        async with uow(autocommit=autocommit):
            pass
