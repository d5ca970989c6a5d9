"""The API's raw-asyncpg path on real PostgreSQL: its pool, its units of work, the rate-limit
function under concurrency and the endpoint cache."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler_host.adapters.db.engine import build_engine
from scheduler_host.adapters.db.pg_pool import PgPool
from scheduler_host.adapters.db.pg_unit_of_work import PgUnitOfWorkFactory
from scheduler_host.adapters.migrations import upgrade_database
from scheduler_host.app import api_pool_for
from scheduler_host.domain.endpoints import Endpoint, endpoint_id
from scheduler_host.domain.errors import DatabaseUnavailable
from scheduler_host.domain.install import Install
from scheduler_host.service.access import InstallContextCache

T0 = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)
WINDOW = timedelta(seconds=60)


@pytest.fixture
async def engine(empty_pg_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade_database(empty_pg_url)
    engine = build_engine(empty_pg_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def connect_args(engine: AsyncEngine) -> dict[str, Any]:
    return dict(engine.dialect.create_connect_args(engine.url)[1])


@pytest.fixture
async def pool(engine: AsyncEngine) -> AsyncIterator[PgPool]:
    pool = api_pool_for(engine, None)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


class Statements:
    """The statements of a pool, as its query logger reports them."""

    def __init__(self, pool: PgPool) -> None:
        self.seen: list[str] = []
        pool.add_query_logger(lambda record: self.seen.append(record.query))

    async def since(self, mark: int = 0) -> list[str]:
        await asyncio.sleep(0.01)  # loggers are called soon after, not inline
        return [" ".join(q.split())[:30] for q in self.seen[mark:]]


def make_install(endpoints: tuple[tuple[str, str], ...] = (("POST", "/sync"),)) -> Install:
    iid = uuid.uuid4()
    return Install(
        install_id=iid,
        tenant_id="tenant-a",
        registry_id="ext",
        version_id="v1",
        content_hash="sha256:v1",
        enabled=True,
        granted_capabilities=("cap:scheduler.manage",),
        endpoints=tuple(
            Endpoint(endpoint_id(iid, "v1", m, p), m, p, "handler") for m, p in endpoints
        ),
        create_time=T0,
        update_time=T0,
    )


async def save(factory: PgUnitOfWorkFactory, install: Install) -> None:
    async with factory() as u:
        await u.installs.save(install)
        await u.commit()


async def test_an_autocommit_read_is_one_statement_without_a_transaction(pool: PgPool) -> None:
    factory = PgUnitOfWorkFactory(pool)
    install = make_install()
    await save(factory, install)
    log = Statements(pool)
    async with factory(autocommit=True) as u:
        ctx = await u.installs.context(install.install_id)
        conn = await u._connection()
        assert not conn.is_in_transaction()
    assert ctx == install.context()
    read = await log.since()
    assert len(read) == 1 and read[0].startswith("SELECT"), read

    mark = len(log.seen)
    async with factory() as u:
        await u.installs.context(install.install_id)
        await u.commit()
    assert [q.split()[0] for q in await log.since(mark)] == ["BEGIN", "SELECT", "COMMIT"]

    mark = len(log.seen)
    async with factory() as u:
        await u.installs.context(install.install_id)
    assert [q.split()[0] for q in await log.since(mark)] == ["BEGIN", "SELECT", "ROLLBACK"]


async def test_a_unit_without_statements_takes_no_connection(pool: PgPool) -> None:
    cache = InstallContextCache(60)
    factory = PgUnitOfWorkFactory(pool, endpoint_cache=cache)
    install = make_install()
    cache.keep_endpoints(install.install_id, "v1", list(install.endpoints))
    log = Statements(pool)
    for autocommit in (True, False):
        async with factory(autocommit=autocommit) as u:
            eps = await u.installs.endpoints("tenant-a", install.install_id, "v1")
            await u.commit()
        assert eps == list(install.endpoints)
    assert await log.since() == []
    assert pool.open_connections == 0


async def test_endpoints_are_cached_no_longer_than_the_install_context(
    pool: PgPool,
) -> None:
    cache = InstallContextCache(0.5)
    cached = PgUnitOfWorkFactory(pool, endpoint_cache=cache)
    direct = PgUnitOfWorkFactory(pool)
    install = make_install((("POST", "/sync"), ("GET", "/status")))
    await save(direct, install)
    iid = install.install_id

    async def endpoints() -> list[str]:
        async with cached(autocommit=True) as u:
            return [e.selector for e in await u.installs.endpoints("tenant-a", iid, "v1")]

    assert await endpoints() == ["GET /status", "POST /sync"]
    # Changed through another process: this one may answer from its cache until the TTL ends.
    changed = Install(**{**install.__dict__, "endpoints": install.endpoints[:1]})
    await save(direct, changed)
    assert await endpoints() == ["GET /status", "POST /sync"]
    await asyncio.sleep(0.6)
    assert await endpoints() == ["POST /sync"]
    # Changed through this process (the admin servicer invalidates): seen at once.
    await save(direct, install)
    cache.invalidate(iid)
    assert await endpoints() == ["GET /status", "POST /sync"]
    # Another version is never answered from the cache of the old one.
    async with cached(autocommit=True) as u:
        assert await u.installs.endpoints("tenant-a", iid, "v2") == []


async def test_without_a_cache_time_endpoints_are_always_read(pool: PgPool) -> None:
    cache = InstallContextCache(0)
    factory = PgUnitOfWorkFactory(pool, endpoint_cache=cache)
    install = make_install()
    await save(factory, install)
    log = Statements(pool)
    for _ in range(2):
        async with factory(autocommit=True) as u:
            await u.installs.endpoints("tenant-a", install.install_id, "v1")
    assert len(await log.since()) == 2


async def test_the_rate_limit_function_is_exact_under_concurrency(engine: AsyncEngine) -> None:
    # Three pools stand for three server processes; every hit falls in one window.
    pools = [PgPool(connect_args(engine), size=8) for _ in range(3)]
    factories = [PgUnitOfWorkFactory(p) for p in pools]
    limit = 10

    async def hit(n: int) -> timedelta | None:
        async with factories[n % 3](autocommit=True) as u:
            return await u.rate_limits.hit("mutations:x", "tenant-a", limit, WINDOW, T0)

    try:
        waits = await asyncio.gather(*(hit(n) for n in range(60)))
        counted = [w for w in waits if w is None]
        assert len(counted) == limit
        assert all(w == WINDOW for w in waits if w is not None)
        conn = await asyncpg.connect(**connect_args(engine))
        try:
            stored = await conn.fetchval(
                "SELECT count(*) FROM rate_limit_hits WHERE scope = 'mutations:x'"
            )
        finally:
            await conn.close()
        assert stored == limit, "a refused hit is not stored"
    finally:
        for p in pools:
            await p.close()


async def test_a_hit_in_an_autocommit_unit_counts_even_when_the_use_case_fails(
    pool: PgPool,
) -> None:
    factory = PgUnitOfWorkFactory(pool)
    with pytest.raises(LookupError):
        async with factory(autocommit=True) as u:
            assert await u.rate_limits.hit("mutations:y", "tenant-a", 1, WINDOW, T0) is None
            raise LookupError("the mutation failed afterwards")
    async with factory(autocommit=True) as u:
        wait = await u.rate_limits.hit("mutations:y", "tenant-a", 1, WINDOW, T0 + WINDOW / 2)
    assert wait == WINDOW / 2


async def backend_pid(factory: PgUnitOfWorkFactory) -> int:
    async with factory(autocommit=True) as u:
        conn = await u._connection()
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def test_a_connection_the_server_dropped_is_discarded(
    pool: PgPool, engine: AsyncEngine
) -> None:
    factory = PgUnitOfWorkFactory(pool)
    pid = await backend_pid(factory)
    assert pool.open_connections == 1
    admin = await asyncpg.connect(**connect_args(engine))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await asyncio.sleep(0.1)
    # The closed idle connection is dropped when taken; a new one serves the call.
    assert await backend_pid(factory) != pid
    assert pool.open_connections == 1


async def test_a_connection_that_failed_mid_use_is_not_reused(pool: PgPool) -> None:
    factory = PgUnitOfWorkFactory(pool)
    pid = await backend_pid(factory)
    with pytest.raises(DatabaseUnavailable):
        async with factory() as u:
            conn = await u._connection()
            # The server ends this session while the unit of work holds it.
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    assert pool.open_connections == 0
    assert await backend_pid(factory) != pid


@pytest.mark.parametrize("autocommit", [True, False])
async def test_a_cancelled_statement_ends_server_side_before_its_connection_is_reused(
    pool: PgPool, engine: AsyncEngine, autocommit: bool
) -> None:
    factory = PgUnitOfWorkFactory(pool)
    pid = await backend_pid(factory)
    # Cancelled in the middle of a statement (a deadline).
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3), factory(autocommit=autocommit) as u:
            conn = await u._connection()
            await conn.execute("SELECT pg_sleep(30)")
    monitor = await asyncpg.connect(**connect_args(engine))
    try:
        for _ in range(100):
            state = await monitor.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
            if state == "idle":
                break
            await asyncio.sleep(0.05)
        assert state == "idle", "the statement was not cancelled (or its transaction not ended)"
    finally:
        await monitor.close()
    # Then (and only then) the connection serves again.
    for _ in range(100):
        if not pool.settling:
            break
        await asyncio.sleep(0.05)
    assert await backend_pid(factory) == pid
    assert pool.open_connections == 1


async def test_a_refused_statement_keeps_the_connection(pool: PgPool) -> None:
    factory = PgUnitOfWorkFactory(pool)
    pid = await backend_pid(factory)
    with pytest.raises(asyncpg.UndefinedTableError):
        async with factory() as u:
            conn = await u._connection()
            await conn.execute("SELECT * FROM no_such_table")
    assert await backend_pid(factory) == pid


async def test_the_pool_is_bounded_and_waits_for_a_free_connection(engine: AsyncEngine) -> None:
    pool = PgPool(connect_args(engine), size=2, acquire_timeout=0.3)
    factory = PgUnitOfWorkFactory(pool)
    try:
        first, second = await pool.acquire(), await pool.acquire()
        # Full: a third call waits, and is UNAVAILABLE when none comes free in time.
        with pytest.raises(DatabaseUnavailable):
            async with factory(autocommit=True) as u:
                await u.schedules.count("tenant-a", uuid.uuid4())
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        pool.release(first)
        third = await asyncio.wait_for(waiting, 1)
        assert third is first
        assert pool.open_connections == 2
        pool.release(second)
        pool.release(third, broken=True)
        assert pool.open_connections == 1
    finally:
        await pool.close()


async def test_an_unreachable_database_is_database_unavailable() -> None:
    pool = PgPool({"host": "127.0.0.1", "port": 1, "user": "nobody", "database": "none"}, size=2)
    factory = PgUnitOfWorkFactory(pool)
    try:
        with pytest.raises(DatabaseUnavailable):
            async with factory(autocommit=True) as u:
                await u.schedules.count("tenant-a", uuid.uuid4())
        assert pool.open_connections == 0
    finally:
        await pool.close()


async def test_waiters_are_served_in_order_before_newcomers(engine: AsyncEngine) -> None:
    pool = PgPool(connect_args(engine), size=1, acquire_timeout=5)
    served: list[str] = []

    async def use(name: str) -> None:
        conn = await pool.acquire()
        served.append(name)
        await asyncio.sleep(0.01)
        pool.release(conn)

    try:
        held = await pool.acquire()
        waiting = [asyncio.ensure_future(use(f"waiter-{n}")) for n in range(3)]
        await asyncio.sleep(0.05)
        pool.release(held)
        # Arrives while the waiters are being served: it queues behind them.
        late = asyncio.ensure_future(use("newcomer"))
        await asyncio.gather(*waiting, late)
        assert served == ["waiter-0", "waiter-1", "waiter-2", "newcomer"]
        assert pool.open_connections == 1
    finally:
        await pool.close()
