"""The repositories through PgUnitOfWorkFactory on a migrated PostgreSQL: installs and the install
directory, schedules (pages, usage, creates, conditional updates and deletes, the remap's lock),
run history, the rate limiter and the prune of expired rows."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from scheduler_host.adapters.db.buckets import BUCKETS, bucket_of
from scheduler_host.adapters.db.pool import DatabasePool
from scheduler_host.adapters.db.schedules import is_name_in_use
from scheduler_host.adapters.db.unit_of_work import PgUnitOfWorkFactory
from scheduler_host.domain.errors import InstallNotFound, NameInUse
from scheduler_host.domain.install import Install
from scheduler_host.domain.runs import RunState, RunTrigger
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.ports import CreateOutcome
from tests.support.storage import (
    T0,
    Db,
    as_read,
    insert_run,
    insert_schedule,
    make_install,
    make_schedule,
    one_time,
    save_installs,
    schedule_row,
)

WINDOW = timedelta(seconds=60)
SECOND = timedelta(seconds=1)
MICROSECOND = timedelta(microseconds=1)
DAY = timedelta(hours=24)
# Another tenant in tenant-a's bucket: what keeps them apart is the tenant id, not the bucket.
SAME_BUCKET_TENANT = "tenant-92"


def test_the_tenants_of_these_tests_share_or_split_buckets_as_they_should() -> None:
    assert bucket_of(SAME_BUCKET_TENANT) == bucket_of("tenant-a")
    assert bucket_of("tenant-b") != bucket_of("tenant-a")


async def create(
    factory: PgUnitOfWorkFactory,
    s: Schedule,
    *,
    limit: int = 50,
    request_id: uuid.UUID | None = None,
    since: datetime = T0 - DAY,
    version: str = "v1",
) -> CreateOutcome:
    async with factory(autocommit=True) as u:
        outcome = await u.schedules.create(s, limit, request_id, since, version)
        await u.commit()
    return outcome


async def created(factory: PgUnitOfWorkFactory, *schedules: Schedule) -> list[Schedule]:
    out = []
    for s in schedules:
        outcome = await create(factory, s)
        assert outcome.created is not None, outcome
        out.append(outcome.created)
    return out


async def get(factory: PgUnitOfWorkFactory, s: Schedule) -> Schedule | None:
    async with factory(autocommit=True) as u:
        return await u.schedules.get(s.tenant_id, s.install_id, s.id, for_update=False)


async def total(factory: PgUnitOfWorkFactory, install: Install) -> int:
    async with factory(autocommit=True) as u:
        return (await u.schedules.page_with_total(install.tenant_id, install.install_id, None, 1))[
            1
        ]


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None, "timestamps come back timezone-aware"
    assert value.utcoffset() == timedelta(0)


async def row_locked(db: Db, table: str, row_id: uuid.UUID) -> bool:
    """Whether another session holds a lock on the row (a NOWAIT lock attempt fails)."""
    try:
        async with db.transaction():
            await db.execute(f"SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE NOWAIT", row_id)
    except asyncpg.LockNotAvailableError:
        return True
    return False


# --------------------------------------------------------------------------------------------
# Installs and the install directory
# --------------------------------------------------------------------------------------------


async def test_install_save_get_context_and_endpoints(factory: PgUnitOfWorkFactory) -> None:
    install = make_install(endpoints=(("POST", "/sync"), ("GET", "/status"), ("GET", "/a")))
    await save_installs(factory, install)

    async with factory(autocommit=True) as u:
        got = await u.installs.get(install.install_id)
        ctx = await u.installs.context(install.install_id)
        eps = await u.installs.endpoints(install.tenant_id, install.install_id, "v1")
        other_version = await u.installs.endpoints(install.tenant_id, install.install_id, "v2")

    # Endpoints come back ordered by path, then method.
    ordered = tuple(sorted(install.endpoints, key=lambda e: (e.path, e.method)))
    assert got == replace(install, endpoints=ordered)
    assert ctx == install.context()
    assert eps == list(ordered)
    assert other_version == []
    assert got is not None
    assert_utc(got.create_time)
    assert_utc(got.update_time)


async def test_endpoints_and_the_lock_are_found_with_the_install_s_tenant_only(
    factory: PgUnitOfWorkFactory,
) -> None:
    install = make_install()
    await save_installs(factory, install)
    async with factory() as u:
        assert await u.installs.endpoints("tenant-b", install.install_id, "v1") == []
        assert await u.installs.lock("tenant-b", install.install_id) is False
        assert await u.installs.lock(install.tenant_id, install.install_id) is True


async def test_an_unknown_install_is_none_everywhere(factory: PgUnitOfWorkFactory) -> None:
    unknown = uuid.uuid4()
    async with factory() as u:
        assert await u.installs.get(unknown) is None
        assert await u.installs.context(unknown) is None
        assert await u.installs.endpoints("tenant-a", unknown, "v1") == []
        assert await u.installs.lock("tenant-a", unknown) is False
        assert await u.installs.delete(unknown) is False


async def test_saving_again_updates_the_install_and_replaces_its_endpoints(
    factory: PgUnitOfWorkFactory,
) -> None:
    first = make_install(endpoints=(("POST", "/sync"), ("GET", "/status")))
    await save_installs(factory, first)
    later = T0 + timedelta(hours=1)
    second = make_install(
        install_id=first.install_id,
        version_id="v2",
        endpoints=(("POST", "/sync2"),),
        enabled=False,
        capabilities=(),
        at=later,
    )
    await save_installs(factory, replace(second, create_time=later))

    async with factory(autocommit=True) as u:
        got = await u.installs.get(first.install_id)
        old_eps = await u.installs.endpoints(first.tenant_id, first.install_id, "v1")
        ctx = await u.installs.context(first.install_id)

    assert got is not None
    assert (got.version_id, got.enabled, got.granted_capabilities) == ("v2", False, ())
    assert got.endpoints == second.endpoints
    assert got.update_time == later
    assert got.create_time == T0, "the first registration time is kept"
    assert old_eps == [], "only the current version's endpoints are kept"
    assert ctx is not None
    assert ctx.capabilities == frozenset()
    assert not ctx.enabled


async def test_saving_an_install_without_endpoints(factory: PgUnitOfWorkFactory) -> None:
    install = make_install()
    await save_installs(factory, install)
    await save_installs(factory, replace(install, endpoints=()))
    async with factory(autocommit=True) as u:
        got = await u.installs.get(install.install_id)
    assert got is not None
    assert got.endpoints == ()


async def test_the_directory_names_each_install_s_bucket_and_tenant(
    factory: PgUnitOfWorkFactory, pool: DatabasePool, db: Db
) -> None:
    installs = [make_install(tenant_id=t) for t in ("tenant-a", "tenant-b", "acme")]
    await save_installs(factory, *installs)
    rows = await db.fetch("SELECT install_id, bucket, tenant_id FROM install_directory")
    assert sorted(tuple(r) for r in rows) == sorted(
        (i.install_id, bucket_of(i.tenant_id), i.tenant_id) for i in installs
    )
    for i in installs:
        stored = await db.fetchval("SELECT bucket FROM installs WHERE id = $1", i.install_id)
        assert stored == bucket_of(i.tenant_id)
    # Another process (its own directory cache) finds them by id alone.
    other = PgUnitOfWorkFactory(pool)
    async with other(autocommit=True) as u:
        for i in installs:
            assert await u.installs.context(i.install_id) == i.context()


async def test_a_stale_directory_entry_is_read_again(
    factory: PgUnitOfWorkFactory, pool: DatabasePool
) -> None:
    # This process keeps the directory entries it read; another process deletes the install,
    # then registers the same id for a tenant in another bucket.
    first = make_install(tenant_id="tenant-a")
    await save_installs(factory, first)
    async with factory(autocommit=True) as u:
        assert await u.installs.context(first.install_id) == first.context()
    other = PgUnitOfWorkFactory(pool)
    async with other() as u:
        assert await u.installs.delete(first.install_id)
        await u.commit()
    async with factory(autocommit=True) as u:
        assert await u.installs.context(first.install_id) is None
        assert await u.installs.get(first.install_id) is None

    await save_installs(factory, first)
    async with factory(autocommit=True) as u:
        assert await u.installs.get(first.install_id) == as_read(first)
    again = make_install(install_id=first.install_id, tenant_id="tenant-b", version_id="v7")
    async with other() as u:
        assert await u.installs.delete(first.install_id)
        await u.installs.save(again)
        await u.commit()
    async with factory(autocommit=True) as u:
        assert await u.installs.context(again.install_id) == again.context()
        assert await u.installs.get(again.install_id) == as_read(again)


async def test_deleting_an_install_takes_everything_of_it_with_it(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    install, other = make_install(), make_install(tenant_id="tenant-b")
    await save_installs(factory, install, other)
    request_id = uuid.uuid4()
    s = make_schedule(install)
    assert (await create(factory, s, request_id=request_id)).created is not None
    await insert_run(db, s, T0)
    kept = (await created(factory, make_schedule(other)))[0]
    await insert_run(db, kept, T0)

    async with factory() as u:
        assert await u.installs.delete(install.install_id) is True
        await u.commit()

    iid = install.install_id
    for table, column in (
        ("installs", "id"),
        ("install_directory", "install_id"),
        ("endpoints", "install_id"),
        ("schedules", "install_id"),
        ("schedule_runs", "install_id"),
        ("idempotency_keys", "install_id"),
    ):
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", iid) == 0, (
            table
        )
    async with factory(autocommit=True) as u:
        assert await u.installs.get(iid) is None
        assert await u.schedules.usage(install.tenant_id, iid, request_id, T0 - DAY) == (0, None)
        assert await u.installs.delete(iid) is False
    # The other install keeps everything.
    assert await get(factory, kept) == kept
    assert await db.fetchval("SELECT count(*) FROM schedule_runs WHERE schedule_id = $1", kept.id)
    assert await db.fetchval(
        "SELECT count(*) FROM endpoints WHERE install_id = $1", other.install_id
    )


async def test_leaving_without_commit_rolls_back(factory: PgUnitOfWorkFactory) -> None:
    install = make_install()
    async with factory() as u:
        await u.installs.save(install)
        assert await u.schedules.create(make_schedule(install), 50, uuid.uuid4(), T0 - DAY, "v1")
    async with factory(autocommit=True) as u:
        assert await u.installs.get(install.install_id) is None
        assert await u.installs.context(install.install_id) is None

    async def save_then_fail() -> None:
        async with factory() as u:
            await u.installs.save(install)
            raise LookupError("the use case failed")

    with pytest.raises(LookupError, match="the use case failed"):
        await save_then_fail()
    async with factory(autocommit=True) as u:
        assert await u.installs.get(install.install_id) is None


# --------------------------------------------------------------------------------------------
# Schedules: get, pages, usage
# --------------------------------------------------------------------------------------------


async def test_a_created_schedule_reads_back_field_for_field(
    factory: PgUnitOfWorkFactory,
) -> None:
    install = make_install()
    await save_installs(factory, install)
    full = replace(
        make_schedule(install, name="nightly", payload={"full": True, "list": [1, "x", None]}),
        start_time=T0 + DAY,
        end_time=T0 + 30 * DAY,
        jitter=timedelta(milliseconds=1500),
        payload_wire=b"\x0a\x03abc",
    )
    unset = make_schedule(install)
    array = make_schedule(install, payload=[{"a": 1}, [], "é", 1.5])
    empty = make_schedule(install, payload={})
    once = one_time(make_schedule(install, name="once"), T0 + timedelta(hours=3))
    stored = await created(factory, full, unset, array, empty, once)

    for sent, made in zip((full, unset, array, empty, once), stored, strict=True):
        got = await get(factory, sent)
        assert got == made
        assert got is not None
        assert got.payload_wire == sent.payload_wire
        # Nothing but the create time (and update time) is the store's own.
        assert replace(made, create_time=sent.create_time, update_time=sent.update_time) == sent
    async with factory(autocommit=True) as u:
        locked = await u.schedules.get(
            install.tenant_id, install.install_id, full.id, for_update=True
        )
    assert locked == stored[0]


async def test_the_extreme_bounds_a_caller_may_send_read_back_as_sent(
    factory: PgUnitOfWorkFactory,
) -> None:
    # The first and last Timestamp a datetime holds are stored as -infinity and infinity, which
    # the driver reads back without a time zone: they must come back aware and equal.
    install = make_install()
    await save_installs(factory, install)
    first, last = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    bounded = replace(make_schedule(install), start_time=first, end_time=last)
    (made,) = await created(factory, bounded)
    got = await get(factory, bounded)
    assert got == made
    assert got is not None
    assert (got.start_time, got.end_time) == (first, last)
    assert got.start_time is not None
    assert got.start_time.tzinfo is not None
    assert got.end_time is not None
    assert got.end_time.tzinfo is not None


async def test_a_schedule_is_only_found_in_its_own_tenant_and_install(
    factory: PgUnitOfWorkFactory,
) -> None:
    install, other = make_install(), make_install()
    await save_installs(factory, install, other)
    (s,) = await created(factory, make_schedule(install))
    async with factory(autocommit=True) as u:
        assert await u.schedules.get("tenant-b", install.install_id, s.id, for_update=False) is None
        assert (
            await u.schedules.get(other.tenant_id, other.install_id, s.id, for_update=False) is None
        )
        assert await u.schedules.delete(other.tenant_id, other.install_id, s.id) is False
    assert await get(factory, s) == s


async def test_a_tenant_sharing_the_install_s_bucket_sees_nothing_of_it(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    # The bucket routes a statement; the tenant id scopes it (ports: "every method is scoped by
    # tenant and install").
    install = make_install(tenant_id="tenant-a")
    await save_installs(factory, install)
    request_id = uuid.uuid4()
    s = make_schedule(install)
    assert (await create(factory, s, request_id=request_id)).created is not None
    await insert_run(db, s, T0)
    stranger = SAME_BUCKET_TENANT
    iid = install.install_id
    seen: list[str] = []
    async with factory(autocommit=True) as u:
        if await u.schedules.get(stranger, iid, s.id, for_update=False) is not None:
            seen.append("schedules.get")
        if await u.schedules.page_with_total(stranger, iid, None, 10) != ([], 0):
            seen.append("schedules.page_with_total")
        if await u.schedules.usage(stranger, iid, request_id, T0 - DAY) != (0, None):
            seen.append("schedules.usage")
        if await u.schedules.lock_install_schedules(stranger, iid):
            seen.append("schedules.lock_install_schedules")
        if await u.runs.page(stranger, s.id, None, 10):
            seen.append("runs.page")
        moved = replace(s, tenant_id=stranger, name="renamed", revision=2)
        if await u.schedules.update_definition(moved, 1, timing=False, version_id="v1") is not None:
            seen.append("schedules.update_definition")
    try:
        async with factory(autocommit=True) as u:
            outcome = await u.schedules.create(
                replace(make_schedule(install), tenant_id=stranger), 50, None, T0 - DAY, "v1"
            )
        seen.append(f"schedules.create ({outcome})")
    except InstallNotFound:
        pass
    async with factory(autocommit=True) as u:
        if await u.schedules.delete(stranger, iid, s.id):
            seen.append("schedules.delete")
    assert seen == [], f"a tenant sharing the bucket reached the install through {seen}"


async def test_pages_follow_create_time_then_id(factory: PgUnitOfWorkFactory, db: Db) -> None:
    install, other = make_install(), make_install()
    await save_installs(factory, install, other)
    # Several schedules share a create time (as rows migrated from 0002 may), so the id decides.
    times = [T0, T0 + SECOND, T0, T0 + 2 * SECOND, T0 + SECOND, T0, T0 - SECOND]
    schedules = [await insert_schedule(db, make_schedule(install, created=t)) for t in times]
    await insert_schedule(db, make_schedule(other))
    expected = sorted(schedules, key=lambda s: (s.create_time, s.id))
    tenant, iid = install.tenant_id, install.install_id

    async with factory(autocommit=True) as u:
        everything, count = await u.schedules.page_with_total(tenant, iid, None, 100)
        pages: list[list[Schedule]] = []
        totals: list[int] = []
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            page, page_total = await u.schedules.page_with_total(tenant, iid, after, 3)
            totals.append(page_total)
            if not page:
                break
            pages.append(page)
            after = (page[-1].create_time, page[-1].id)
        assert await u.schedules.page_with_total("tenant-b", iid, None, 100) == ([], 0)

    assert everything == expected
    assert count == 7
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [s.id for p in pages for s in p] == [s.id for s in expected]
    assert totals == [7, 7, 7, 7], "an empty page still carries the total"


async def test_a_page_bound_is_an_instant_whatever_its_zone(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    install = make_install()
    await save_installs(factory, install)
    berlin = ZoneInfo("Europe/Berlin")
    # 09:30 in Berlin (08:30 UTC) is earlier than 09:00 UTC, though its wall clock is later.
    early = await insert_schedule(
        db, make_schedule(install, created=datetime(2026, 1, 10, 9, 30, tzinfo=berlin))
    )
    late = await insert_schedule(
        db, make_schedule(install, created=datetime(2026, 1, 10, 9, 0, tzinfo=UTC))
    )
    later = await insert_schedule(
        db,
        make_schedule(
            install, created=datetime(2026, 1, 10, 5, 0, tzinfo=timezone(timedelta(hours=-5)))
        ),
    )
    async with factory(autocommit=True) as u:
        listed, _ = await u.schedules.page_with_total(
            install.tenant_id, install.install_id, None, 9
        )
        bound = (early.create_time.astimezone(berlin), early.id)
        after_early, _ = await u.schedules.page_with_total(
            install.tenant_id, install.install_id, bound, 9
        )
    assert [s.id for s in listed] == [early.id, late.id, later.id]
    assert [s.id for s in after_early] == [late.id, later.id]
    for s in listed:
        assert_utc(s.create_time)


async def test_a_page_is_stable_while_rows_are_added_and_removed(
    factory: PgUnitOfWorkFactory,
) -> None:
    install = make_install()
    await save_installs(factory, install)
    schedules = await created(
        factory, *(make_schedule(install, created=T0 + i * SECOND) for i in range(6))
    )
    tenant, iid = install.tenant_id, install.install_id
    async with factory(autocommit=True) as u:
        first, _ = await u.schedules.page_with_total(tenant, iid, None, 3)
    # Between pages: the first row goes away and a new one arrives at the end.
    async with factory(autocommit=True) as u:
        assert await u.schedules.delete(tenant, iid, schedules[0].id)
    await created(factory, make_schedule(install, created=T0))
    async with factory(autocommit=True) as u:
        second, count = await u.schedules.page_with_total(
            tenant, iid, (first[-1].create_time, first[-1].id), 3
        )
    assert first == schedules[:3]
    assert second == schedules[3:6]
    assert count == 6


async def test_a_page_and_its_total_come_from_one_snapshot(
    factory: PgUnitOfWorkFactory, pool: DatabasePool
) -> None:
    install = make_install()
    await save_installs(factory, install)
    writer = PgUnitOfWorkFactory(pool)
    stop = asyncio.Event()

    async def keep_creating() -> int:
        n = 0
        # Under the quota given here and within the page's 1,000, however fast the writer is.
        while not stop.is_set() and n < 900:
            outcome = await create(writer, make_schedule(install), limit=1000)
            assert outcome.created is not None, outcome
            n += 1
        return n

    creating = asyncio.create_task(keep_creating())
    mismatches = []
    try:
        for _ in range(60):
            async with factory(autocommit=True) as u:
                page, count = await u.schedules.page_with_total(
                    install.tenant_id, install.install_id, None, 1000
                )
            if len(page) != count:
                mismatches.append((len(page), count))
    finally:
        stop.set()
        made = await creating
    assert made > 0
    assert mismatches == []


async def test_usage_counts_and_finds_the_request(factory: PgUnitOfWorkFactory) -> None:
    install, other = make_install(), make_install()
    await save_installs(factory, install, other)
    request_id = uuid.uuid4()
    first = make_schedule(install)
    await create(factory, first, request_id=request_id)
    await created(factory, make_schedule(install), make_schedule(other))
    stored_key_time = (await get(factory, first) or first).create_time
    tenant, iid = install.tenant_id, install.install_id
    async with factory(autocommit=True) as u:
        assert await u.schedules.usage(tenant, iid, None, T0 - DAY) == (2, None)
        assert await u.schedules.usage(tenant, iid, request_id, T0 - DAY) == (2, first.id)
        just_before = stored_key_time - MICROSECOND
        assert await u.schedules.usage(tenant, iid, request_id, just_before) == (2, first.id)
        # `since` is exclusive: a key made exactly at the bound has expired.
        assert await u.schedules.usage(tenant, iid, request_id, stored_key_time) == (2, None)
        assert await u.schedules.usage(tenant, iid, uuid.uuid4(), T0 - DAY) == (2, None)
        assert await u.schedules.usage(other.tenant_id, other.install_id, request_id, T0 - DAY) == (
            1,
            None,
        )


# --------------------------------------------------------------------------------------------
# Schedules: create
# --------------------------------------------------------------------------------------------


async def test_create_adds_and_remembers_the_request(factory: PgUnitOfWorkFactory) -> None:
    install = make_install()
    await save_installs(factory, install)
    request_id = uuid.uuid4()
    first = make_schedule(install, name="first")

    outcome = await create(factory, first, request_id=request_id)
    assert outcome == CreateOutcome(created=first)
    assert await get(factory, first) == first

    # The same request id again: the first schedule, nothing written.
    retry = make_schedule(install, name="retry", created=T0 + SECOND)
    assert await create(factory, retry, request_id=request_id) == CreateOutcome(earlier=first.id)
    assert await get(factory, retry) is None
    assert await total(factory, install) == 1


async def test_a_request_id_past_its_window_creates_again(factory: PgUnitOfWorkFactory) -> None:
    install = make_install()
    await save_installs(factory, install)
    request_id = uuid.uuid4()
    old = make_schedule(install)
    assert (await create(factory, old, request_id=request_id)).created is not None
    later = T0 + timedelta(hours=25)
    new = make_schedule(install, created=later)

    outcome = await create(factory, new, request_id=request_id, since=later - DAY)

    assert outcome == CreateOutcome(created=new)
    async with factory(autocommit=True) as u:
        usage = await u.schedules.usage(
            install.tenant_id, install.install_id, request_id, later - DAY
        )
    assert usage == (2, new.id), "the key now names the new schedule"


async def test_a_full_install_takes_nothing_more(factory: PgUnitOfWorkFactory) -> None:
    install = make_install()
    await save_installs(factory, install)
    await created(factory, make_schedule(install, name="a"), make_schedule(install))
    request_id = uuid.uuid4()
    # The quota comes before the name: a full install answers full, even for a taken name.
    outcome = await create(
        factory, make_schedule(install, name="a"), limit=2, request_id=request_id
    )
    assert outcome == CreateOutcome(full=True)
    assert await total(factory, install) == 2
    async with factory(autocommit=True) as u:
        usage = await u.schedules.usage(install.tenant_id, install.install_id, request_id, T0 - DAY)
    assert usage == (2, None), "a refused create remembers no request"


async def test_a_create_for_an_install_that_is_gone_is_install_not_found(
    factory: PgUnitOfWorkFactory,
) -> None:
    install = make_install()
    with pytest.raises(InstallNotFound):
        await create(factory, make_schedule(install))
    await save_installs(factory, install)
    async with factory() as u:
        assert await u.installs.delete(install.install_id)
        await u.commit()
    with pytest.raises(InstallNotFound):
        await create(factory, make_schedule(install))


async def test_a_taken_name_is_name_in_use(factory: PgUnitOfWorkFactory) -> None:
    install, other = make_install(), make_install(tenant_id="tenant-b")
    same_tenant = make_install()
    await save_installs(factory, install, other, same_tenant)
    await created(factory, make_schedule(install, name="nightly"))
    with pytest.raises(NameInUse):
        await create(factory, make_schedule(install, name="nightly"), request_id=uuid.uuid4())
    # In a transaction too; the refusal ends that unit of work, and the next one works.
    with pytest.raises(NameInUse):
        async with factory() as u:
            await u.schedules.create(make_schedule(install, name="nightly"), 50, None, T0, "v1")
    # Names are case-sensitive, several unnamed schedules are fine, and another install (of
    # this tenant or another) may use the same name.
    await created(
        factory,
        make_schedule(install, name="Nightly"),
        make_schedule(install),
        make_schedule(install),
        make_schedule(other, name="nightly"),
        make_schedule(same_tenant, name="nightly"),
    )
    assert await total(factory, install) == 4


async def test_a_create_time_follows_the_install_s_newest_when_the_clock_lags(
    factory: PgUnitOfWorkFactory,
) -> None:
    install = make_install()
    await save_installs(factory, install)
    (first,) = await created(factory, make_schedule(install, created=T0 + SECOND))
    # Another process read its clock earlier but created later.
    lagging = make_schedule(install, created=T0)
    (second,) = await created(factory, lagging)
    assert second.create_time == T0 + SECOND + MICROSECOND
    assert second.update_time == second.create_time
    assert await get(factory, lagging) == second
    # So a page cursor taken at the first never skips the second.
    async with factory(autocommit=True) as u:
        page, _ = await u.schedules.page_with_total(
            install.tenant_id, install.install_id, (first.create_time, first.id), 10
        )
    assert page == [second]
    (third,) = await created(factory, make_schedule(install, created=T0 + 2 * SECOND))
    assert third.create_time == T0 + 2 * SECOND


# --------------------------------------------------------------------------------------------
# Schedules: update, delete, the remap
# --------------------------------------------------------------------------------------------


async def test_update_definition_writes_only_at_the_expected_revision(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    install = make_install()
    await save_installs(factory, install)
    (s,) = await created(factory, make_schedule(install, name="a", payload={"v": 1}))
    await created(factory, make_schedule(install, name="taken"))
    # The dispatcher's fields, changed without a revision.
    ran = T0 + timedelta(minutes=5)
    run_id = uuid.uuid4()
    await db.execute(
        "UPDATE schedules SET last_run_time = $2, last_run_status = 'error', last_error = 'x', "
        "next_run_time = $3, running_run_id = $4 WHERE id = $1",
        s.id,
        ran,
        ran + WINDOW,
        run_id,
    )
    status = install.endpoints[1]
    later = T0 + timedelta(hours=1)
    changed = replace(
        s,
        endpoint_id=status.id,
        endpoint_method=status.method,
        endpoint_path=status.path,
        name="b",
        cron="0 * * * *",
        timezone="America/New_York",
        enabled=False,
        payload=[1, 2],
        payload_wire=b"\x01",
        start_time=later,
        end_time=later + DAY,
        jitter=timedelta(seconds=3),
        revision=2,
        update_time=later,
        # Not written: the dispatcher keeps these, and the timing is said not to change.
        next_run_time=later + WINDOW,
        last_run_time=None,
        last_run_status=None,
        last_error=None,
        create_time=T0 + DAY,
    )

    async with factory(autocommit=True) as u:
        assert (
            await u.schedules.update_definition(changed, 7, timing=False, version_id="v1") is None
        )
        assert await get(factory, s) == replace(
            s,
            last_run_time=ran,
            last_run_status="error",
            last_error="x",
            next_run_time=ran + WINDOW,
        )
        stored = await u.schedules.update_definition(changed, 1, timing=False, version_id="v1")

    assert stored == replace(
        changed,
        create_time=s.create_time,
        next_run_time=ran + WINDOW,
        last_run_time=ran,
        last_run_status="error",
        last_error="x",
    )
    assert stored is not None
    assert stored.payload_wire == b"\x01"
    assert await get(factory, s) == stored
    assert (await schedule_row(db, s.id))["running_run_id"] == run_id

    # With the timing, next_run_time is written too (here: cleared).
    timed = replace(stored, revision=3, next_run_time=None)
    async with factory(autocommit=True) as u:
        again = await u.schedules.update_definition(timed, 2, timing=True, version_id="v1")
    assert again is not None
    assert again.next_run_time is None
    assert again.revision == 3

    async with factory(autocommit=True) as u:
        with pytest.raises(NameInUse):
            await u.schedules.update_definition(
                replace(timed, name="taken"), 3, timing=False, version_id="v1"
            )
        assert (
            await u.schedules.update_definition(
                replace(timed, id=uuid.uuid4()), 3, timing=False, version_id="v1"
            )
            is None
        )
    assert await get(factory, s) == again


async def test_delete_with_and_without_a_revision(factory: PgUnitOfWorkFactory, db: Db) -> None:
    install = make_install()
    await save_installs(factory, install)
    keep, gone, at_revision = await created(
        factory, make_schedule(install), make_schedule(install), make_schedule(install)
    )
    run = await insert_run(db, gone, T0)
    tenant, iid = install.tenant_id, install.install_id
    async with factory(autocommit=True) as u:
        assert await u.schedules.delete(tenant, iid, gone.id) is True
        assert await u.schedules.delete(tenant, iid, gone.id) is False
        assert await u.schedules.delete(tenant, iid, at_revision.id, revision=2) is False
        assert await u.schedules.get(tenant, iid, at_revision.id, for_update=False) == at_revision
        assert await u.schedules.delete(tenant, iid, at_revision.id, revision=1) is True
    assert await get(factory, gone) is None
    assert await get(factory, at_revision) is None
    assert await get(factory, keep) == keep
    # A schedule's runs go with it.
    assert await db.fetchval("SELECT count(*) FROM schedule_runs WHERE id = $1", run) == 0


async def test_the_remap_locks_the_install_s_schedules_and_writes_only_its_columns(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    install, other = make_install(), make_install()
    await save_installs(factory, install, other)
    mine = await created(factory, *(make_schedule(install, name=f"s{n}") for n in range(4)))
    (theirs,) = await created(factory, make_schedule(other))
    tenant, iid = install.tenant_id, install.install_id
    later = T0 + timedelta(hours=1)

    async with factory() as u:
        locked = await u.schedules.lock_install_schedules(tenant, iid)
        assert locked == sorted(mine, key=lambda s: s.id)
        for s in mine:
            assert await row_locked(db, "schedules", s.id), "locked until the unit ends"
        assert not await row_locked(db, "schedules", theirs.id)
        moved = replace(
            locked[0],
            endpoint_id=uuid.uuid4(),
            revision=2,
            update_time=later,
            # Not remap columns: never written by it.
            name="renamed",
            payload={"x": 1},
            cron="0 0 * * *",
        )
        disabled = replace(
            locked[1],
            enabled=False,
            next_run_time=None,
            last_error="Disabled due to missing endpoint on extension update",
            revision=2,
            update_time=later,
            last_run_status="success",
        )
        await u.schedules.apply_remap(tenant, iid, [moved, disabled])
        await u.schedules.apply_remap(tenant, iid, [])
        await u.commit()

    assert not await row_locked(db, "schedules", moved.id)
    assert await get(factory, moved) == replace(
        locked[0], endpoint_id=moved.endpoint_id, revision=2, update_time=later
    )
    assert await get(factory, disabled) == replace(
        locked[1],
        enabled=False,
        next_run_time=None,
        last_error=disabled.last_error,
        revision=2,
        update_time=later,
    )
    assert [await get(factory, s) for s in locked[2:]] == locked[2:]
    assert await get(factory, theirs) == theirs


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def relayed(message: str, detail: str | None, sqlstate: str = "23505") -> asyncpg.PostgresError:
    """An error as a sharded PostgreSQL relays it from a worker: SQLSTATE, message and detail,
    without the constraint's name."""
    fields = {"C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    exc = asyncpg.PostgresError.new(fields)
    assert getattr(exc, "constraint_name", None) is None
    return exc


def test_a_relayed_taken_name_is_recognised_and_other_unique_violations_are_not() -> None:
    key = "(225, 6a3e7c1b-0000-4000-8000-000000000001, nightly)"
    shard_name = 'duplicate key value violates unique constraint "uq_schedules_install_name_102008"'
    assert is_name_in_use(
        relayed(shard_name, f"Key (bucket, install_id, name)=({key}) already exists.")
    )
    assert is_name_in_use(relayed(shard_name, None))
    assert is_name_in_use(
        relayed(
            "duplicate key value violates unique constraint",
            f"Key (bucket, install_id, name)=({key}) already exists.",
        )
    )
    others = [
        relayed(
            'duplicate key value violates unique constraint "pk_schedules_102008"',
            "Key (bucket, id)=(225, 6a3e7c1b-0000-4000-8000-000000000001) already exists.",
        ),
        relayed(
            'duplicate key value violates unique constraint "pk_idempotency_keys_102040"',
            "Key (bucket, install_id, request_id)=(225, a, b) already exists.",
        ),
        relayed(
            "duplicate key value violates unique constraint "
            '"uq_schedule_runs_bucket_schedule_id_trigger_scheduled_time_102072"',
            "Key (bucket, schedule_id, trigger, scheduled_time)=(1, a, b, c) already exists.",
        ),
        # Another SQLSTATE that merely mentions the index.
        relayed(
            'insert or update violates foreign key constraint near "uq_schedules_install_name"',
            "Key (bucket, install_id, name)=(1, a, b) is not present.",
            sqlstate="23503",
        ),
        ValueError('uq_schedules_install_name "(bucket, install_id, name)"'),
    ]
    assert [is_name_in_use(exc) for exc in others] == [False] * len(others)


async def test_the_database_s_own_taken_name_error_is_recognised(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    install = make_install()
    await save_installs(factory, install)
    (s,) = await created(factory, make_schedule(install, name="nightly"))
    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await insert_schedule(db, replace(make_schedule(install, name="nightly")))
    assert is_name_in_use(raised.value)
    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await insert_schedule(db, replace(s, name="other"))  # the same id
    assert not is_name_in_use(raised.value)


# --------------------------------------------------------------------------------------------
# Run history
# --------------------------------------------------------------------------------------------


async def test_runs_page_newest_first_by_scheduled_time_then_id(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    install = make_install()
    await save_installs(factory, install)
    s, other = await created(factory, make_schedule(install), make_schedule(install))
    times = [T0, T0 + SECOND, T0, T0 - SECOND, T0 + 2 * SECOND]
    ids = []
    for n, t in enumerate(times):
        ids.append(
            await insert_run(
                db,
                s,
                t,
                trigger=("schedule", "manual", "manual", "schedule", "schedule")[n],
                status=("success", "error", "skipped", "running", "success")[n],
                lease_until=T0 + WINDOW if n == 3 else None,
            )
        )
    await insert_run(db, other, T0)
    expected = [i for _, i in sorted(zip(times, ids, strict=True), reverse=True)]

    async with factory(autocommit=True) as u:
        everything = await u.runs.page(install.tenant_id, s.id, None, 100)
        pages = []
        before: tuple[datetime, uuid.UUID] | None = None
        while page := await u.runs.page(install.tenant_id, s.id, before, 2):
            pages.append([r.id for r in page])
            before = (page[-1].scheduled_time, page[-1].id)
        assert await u.runs.page("tenant-b", s.id, None, 100) == []

    assert [r.id for r in everything] == expected
    assert pages == [expected[:2], expected[2:4], expected[4:]]
    first = everything[0]
    assert (first.trigger, first.status, first.scheduled_time) == (
        RunTrigger.SCHEDULE,
        RunState.SUCCESS,
        T0 + 2 * SECOND,
    )
    assert (first.tenant_id, first.install_id, first.schedule_id) == (
        install.tenant_id,
        install.install_id,
        s.id,
    )
    assert first.finish_time == T0 + 3 * SECOND
    assert first.attempt == 1
    assert {r.status for r in everything} == set(RunState) - {RunState.PENDING}
    assert {r.trigger for r in everything} == set(RunTrigger)


# --------------------------------------------------------------------------------------------
# Rate limiter
# --------------------------------------------------------------------------------------------


async def hit(
    factory: PgUnitOfWorkFactory,
    at: datetime,
    *,
    scope: str = "mutations:a",
    limit: int = 3,
    tenant: str = "tenant-a",
) -> timedelta | None:
    async with factory(autocommit=True) as u:
        wait = await u.rate_limits.hit(scope, tenant, limit, WINDOW, at)
        await u.commit()
    return wait


async def stored_hits(db: Db, scope: str = "mutations:a") -> list[datetime]:
    rows = await db.fetch(
        "SELECT hit_time, bucket, tenant_id FROM rate_limit_hits WHERE scope = $1 "
        "ORDER BY hit_time",
        scope,
    )
    for r in rows:
        assert r["bucket"] == bucket_of(r["tenant_id"])
    return [r["hit_time"] for r in rows]


async def test_the_limit_allows_limit_hits_then_refuses_with_the_real_wait(
    factory: PgUnitOfWorkFactory,
) -> None:
    assert await hit(factory, T0) is None
    assert await hit(factory, T0 + 10 * SECOND) is None
    assert await hit(factory, T0 + 20 * SECOND) is None
    # The first hit leaves the window at T0 + 60 s: 30 s from now.
    assert await hit(factory, T0 + 30 * SECOND) == timedelta(seconds=30)
    assert await hit(factory, T0 + 59 * SECOND) == SECOND


async def test_a_refused_hit_is_not_counted(factory: PgUnitOfWorkFactory, db: Db) -> None:
    for offset in (0, 10, 20):
        assert await hit(factory, T0 + offset * SECOND) is None
    assert await hit(factory, T0 + 30 * SECOND) == timedelta(seconds=30)
    assert await hit(factory, T0 + 40 * SECOND) == timedelta(seconds=20)
    assert len(await stored_hits(db)) == 3
    # Had the refused hits counted, the window (T0+1 s, T0+61 s] would still be full.
    assert await hit(factory, T0 + 61 * SECOND) is None
    # Now T0+10 s, T0+20 s and T0+61 s are in the window.
    assert await hit(factory, T0 + 62 * SECOND) == timedelta(seconds=8)


async def test_waiting_the_announced_time_is_enough(factory: PgUnitOfWorkFactory) -> None:
    for offset in (0.0, 0.5, 7.25):
        assert await hit(factory, T0 + timedelta(seconds=offset)) is None
    now = T0 + timedelta(seconds=12.5)
    wait = await hit(factory, now)
    assert wait == timedelta(seconds=47.5)
    assert await hit(factory, now + wait - timedelta(milliseconds=1)) is not None
    assert await hit(factory, now + wait) is None


async def test_hits_older_than_the_window_are_removed(factory: PgUnitOfWorkFactory, db: Db) -> None:
    for offset in (0, 10, 20):
        assert await hit(factory, T0 + offset * SECOND) is None
    much_later = T0 + timedelta(minutes=10)
    for offset in (0, 1, 2):
        assert await hit(factory, much_later + offset * SECOND) is None
    assert await hit(factory, much_later + 3 * SECOND) == timedelta(seconds=57)
    assert await stored_hits(db) == [much_later, much_later + SECOND, much_later + 2 * SECOND]


async def test_scopes_and_tenants_are_independent(factory: PgUnitOfWorkFactory) -> None:
    for _ in range(2):
        assert await hit(factory, T0, scope="mutations:a", limit=2) is None
    assert await hit(factory, T0, scope="mutations:a", limit=2) is not None
    assert await hit(factory, T0, scope="mutations:b", limit=2) is None
    assert await hit(factory, T0, scope="manual-runs:tenant-b", limit=2, tenant="tenant-b") is None


async def test_hit_times_strictly_increase_within_a_scope(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    # Two hits read the same clock: both count, one microsecond apart.
    assert await hit(factory, T0, limit=5) is None
    assert await hit(factory, T0, limit=5) is None
    assert await stored_hits(db) == [T0, T0 + MICROSECOND]


async def test_a_caller_whose_clock_lags_counts_from_just_after_the_newest_hit(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    # Two processes: one read its clock later but reached the database first.
    assert await hit(factory, T0 + SECOND, limit=2) is None
    assert await hit(factory, T0, limit=2) is None
    assert await stored_hits(db) == [T0 + SECOND, T0 + SECOND + MICROSECOND]
    # A refusal's wait never exceeds the window, whatever the lag of the caller's clock.
    for lag in (timedelta(0), SECOND, timedelta(minutes=5)):
        wait = await hit(factory, T0 - lag, limit=2)
        assert wait is not None, lag
        assert timedelta(0) < wait <= WINDOW, (lag, wait)


async def test_every_wait_stays_within_the_window(factory: PgUnitOfWorkFactory) -> None:
    # Clocks of several processes, some ahead and some behind, hitting one scope.
    offsets = [0, 3, -2, 7, 7, -9, 15, 1, 40, 33, -20, 61, 59, 62, 100, 95]
    waits = [await hit(factory, T0 + n * SECOND, limit=4) for n in offsets]
    refused = [w for w in waits if w is not None]
    assert refused, "some hits were refused"
    assert all(timedelta(0) < w <= WINDOW for w in refused), waits


async def test_the_limit_is_exact_across_processes(pg_url: str, db: Db) -> None:
    # Three pools stand for three server processes; every hit falls in one window.
    pools = [await DatabasePool.open(pg_url, size=4, max_waiters=100) for _ in range(3)]
    factories = [PgUnitOfWorkFactory(p) for p in pools]
    limit = 10
    try:
        waits = await asyncio.gather(
            *(hit(factories[n % 3], T0, scope="mutations:x", limit=limit) for n in range(60))
        )
    finally:
        for p in pools:
            await p.close()
    assert sum(w is None for w in waits) == limit
    assert all(timedelta(0) < w <= WINDOW for w in waits if w is not None)
    assert len(await stored_hits(db, "mutations:x")) == limit, "a refused hit is not stored"


async def test_a_hit_in_an_autocommit_unit_counts_even_when_the_use_case_fails(
    factory: PgUnitOfWorkFactory,
) -> None:

    async def hit_then_fail() -> None:
        async with factory(autocommit=True) as u:
            assert await u.rate_limits.hit("mutations:y", "tenant-a", 1, WINDOW, T0) is None
            raise LookupError("the mutation failed afterwards")

    with pytest.raises(LookupError, match="the mutation failed afterwards"):
        await hit_then_fail()
    assert await hit(factory, T0 + WINDOW / 2, scope="mutations:y", limit=1) == WINDOW / 2


async def test_an_uncommitted_hit_does_not_count(factory: PgUnitOfWorkFactory) -> None:
    async with factory() as u:
        assert await u.rate_limits.hit("mutations:a", "tenant-a", 1, WINDOW, T0) is None
    assert await hit(factory, T0 + SECOND, limit=1) is None
    assert await hit(factory, T0 + 2 * SECOND, limit=1) == timedelta(seconds=59)


async def test_forget_drops_every_hit_of_the_scope_only(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    for n in range(3):
        assert await hit(factory, T0 + n * SECOND) is None
        assert await hit(factory, T0 + n * SECOND, scope="mutations:b") is None
    assert await hit(factory, T0 + 3 * SECOND) is not None
    async with factory(autocommit=True) as u:
        await u.rate_limits.forget("mutations:a", "tenant-a")
    assert await stored_hits(db) == []
    assert len(await stored_hits(db, "mutations:b")) == 3
    assert await hit(factory, T0 + 3 * SECOND) is None


# --------------------------------------------------------------------------------------------
# Housekeeping
# --------------------------------------------------------------------------------------------


async def test_prune_removes_expired_keys_and_hits_in_every_bucket(
    factory: PgUnitOfWorkFactory, db: Db
) -> None:
    tenants = ["tenant-a", "tenant-b", "acme"]
    tenants += [t for t in (f"t{n}" for n in range(2000)) if bucket_of(t) in (0, BUCKETS - 1)][:2]
    assert {bucket_of(t) for t in tenants} >= {0, BUCKETS - 1}
    now = T0 + timedelta(days=2)
    keys_before, hits_before = now - DAY, now - WINDOW
    expected_left: list[tuple[str, str, object]] = []
    for tenant in tenants:
        install = make_install(tenant_id=tenant)
        await save_installs(factory, install)
        for at in (keys_before - SECOND, keys_before, keys_before + SECOND):
            s = make_schedule(install, created=at)
            outcome = await create(factory, s, request_id=uuid.uuid4(), since=at - DAY)
            assert outcome.created is not None
            if at > keys_before:
                expected_left.append((tenant, "key", s.id))
        for at in (hits_before - SECOND, hits_before, hits_before + SECOND):
            assert (
                await hit(
                    factory, at, scope=f"mutations:{install.install_id}", tenant=tenant, limit=9
                )
                is None
            )
            if at > hits_before:
                expected_left.append((tenant, "hit", at))

    async with factory(autocommit=True) as u:
        removed = await u.housekeeping.prune(keys_before, hits_before)

    assert removed == 4 * len(tenants)
    left = [
        (r[0], "key", r[1])
        for r in await db.fetch("SELECT tenant_id, schedule_id FROM idempotency_keys")
    ]
    left += [
        (r[0], "hit", r[1])
        for r in await db.fetch("SELECT tenant_id, hit_time FROM rate_limit_hits")
    ]
    assert sorted(left, key=str) == sorted(expected_left, key=str)
    # Schedules are never pruned.
    assert await db.fetchval("SELECT count(*) FROM schedules") == 3 * len(tenants)
    async with factory(autocommit=True) as u:
        assert await u.housekeeping.prune(keys_before, hits_before) == 0


# --------------------------------------------------------------------------------------------
# Units of work
# --------------------------------------------------------------------------------------------


async def test_a_unit_of_work_is_reusable_after_it_closed(factory: PgUnitOfWorkFactory) -> None:
    unit = factory()
    install = make_install()
    async with unit as u:
        await u.installs.save(install)
        await u.commit()
    async with unit as u:
        assert await u.installs.get(install.install_id) is not None


async def test_a_unit_of_work_without_statements_is_fine(factory: PgUnitOfWorkFactory) -> None:
    for autocommit in (False, True):
        async with factory(autocommit=autocommit) as u:
            await u.commit()
        async with factory(autocommit=autocommit):
            pass
