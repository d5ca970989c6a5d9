"""The one connection pool and its sessions on real PostgreSQL: the fair, bounded gate, statements
cancelled mid-flight (settled before their connection serves again), lost connections, the
statements a unit of work sends, query loggers and the health probe."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from scheduler_host.adapters.db.pool import Connection, DatabasePool, DatabaseProbe
from scheduler_host.adapters.db.unit_of_work import PgUnitOfWorkFactory, PooledSession
from scheduler_host.domain.errors import DatabaseUnavailable
from scheduler_host.service.access import InstallContextCache
from tests.support.storage import Db, make_install, save_installs, wait_for

UNREACHABLE = "postgresql://nobody:s3cret@127.0.0.1:1/nowhere"
LOCK_KEY = 4242


@pytest.fixture
async def open_pool(pg_url: str) -> AsyncIterator[Callable[..., Awaitable[DatabasePool]]]:
    """Pools of the test's own size and limits, closed at the end."""
    opened: list[DatabasePool] = []

    async def make(
        size: int = 1,
        max_waiters: int = 10,
        acquire_timeout: float = 60.0,
        command_timeout: float = 60.0,
    ) -> DatabasePool:
        pool = await DatabasePool.open(
            pg_url,
            size=size,
            max_waiters=max_waiters,
            acquire_timeout=acquire_timeout,
            command_timeout=command_timeout,
        )
        opened.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in opened:
            await pool.close()


async def waiting(pool: DatabasePool, count: int) -> None:
    """Until `count` calls wait at the pool's gate."""

    async def enough() -> bool:
        return pool.waiting >= count

    await wait_for(enough, f"{count} calls waiting for a connection")


async def backend_pid(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def pid_of_next_unit(factory: PgUnitOfWorkFactory) -> int:
    async with factory(autocommit=True) as u:
        return await backend_pid(await u.connection())


async def session_state(db: Db, pid: int) -> str | None:
    """The server's state of session `pid`; None once it ended."""
    state = await db.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
    return None if state is None else str(state)


async def wait_until_running(db: Db, pid: int, statement: str) -> None:
    async def running() -> bool:
        row = await db.fetchrow("SELECT state, query FROM pg_stat_activity WHERE pid = $1", pid)
        return row is not None and row["state"] == "active" and statement in row["query"]

    await wait_for(running, f"running {statement!r} in session {pid}")


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------


async def test_waiters_are_served_first_come_first_served(
    open_pool: Callable[..., Awaitable[DatabasePool]],
) -> None:
    pool = await open_pool(size=1)
    served: list[str] = []

    async def use(name: str) -> None:
        conn = await pool.acquire()
        served.append(name)
        await conn.fetchval("SELECT 1")
        await pool.release(conn)

    held = await pool.acquire()
    waiters = []
    for n in range(3):
        waiters.append(asyncio.create_task(use(f"waiter-{n}")))
        await waiting(pool, n + 1)
    await pool.release(held)
    # Arrives while the released connection is on its way to the first waiter: it queues
    # behind every waiter instead of taking it.
    newcomer = asyncio.create_task(use("newcomer"))
    await asyncio.gather(*waiters, newcomer)
    assert served == ["waiter-0", "waiter-1", "waiter-2", "newcomer"]
    assert pool.waiting == 0


async def test_with_the_waiter_queue_full_a_further_acquire_is_refused_at_once(
    open_pool: Callable[..., Awaitable[DatabasePool]],
) -> None:
    # The acquire timeout is an hour: only a refusal without waiting can end the call.
    pool = await open_pool(size=1, max_waiters=2, acquire_timeout=3600)
    held = await pool.acquire()
    queued = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await waiting(pool, 2)

    with pytest.raises(DatabaseUnavailable, match="busy"):
        async with asyncio.timeout(60):  # a guard against hanging, not a measure
            await pool.acquire()

    assert pool.waiting == 2, "the refused call took no place in the queue"
    await pool.release(held)
    for task in queued:
        await pool.release(await task)
    assert pool.waiting == 0


async def test_an_acquire_that_waits_longer_than_the_timeout_is_database_unavailable(
    open_pool: Callable[..., Awaitable[DatabasePool]],
) -> None:
    pool = await open_pool(size=1, acquire_timeout=0.2)
    factory = PgUnitOfWorkFactory(pool)
    held = await pool.acquire()
    with pytest.raises(DatabaseUnavailable, match="in time"):
        await pool.acquire()
    with pytest.raises(DatabaseUnavailable):
        async with factory(autocommit=True) as u:
            await u.installs.context(uuid.uuid4())
    assert pool.waiting == 0, "a caller that gave up leaves the queue"
    await pool.release(held)
    # The permits of the callers that gave up were not lost.
    assert await pid_of_next_unit(factory) > 0


async def test_a_cancelled_waiter_leaves_the_queue_without_taking_a_permit(
    open_pool: Callable[..., Awaitable[DatabasePool]],
) -> None:
    pool = await open_pool(size=1)
    held = await pool.acquire()
    gone = asyncio.create_task(pool.acquire())
    await waiting(pool, 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert pool.waiting == 0
    await pool.release(held)
    conn = await pool.acquire()
    await pool.release(conn)


async def test_an_unreachable_database_is_database_unavailable_and_frees_its_permit() -> None:
    pool = await DatabasePool.open(UNREACHABLE, size=2, max_waiters=0, acquire_timeout=5)
    try:
        # More failures than permits: each one gives its permit back (never "busy").
        for _ in range(5):
            with pytest.raises(DatabaseUnavailable) as raised:
                await PgUnitOfWorkFactory(pool)(autocommit=True).connection()
            assert "busy" not in str(raised.value)
            assert "s3cret" not in str(raised.value)
        assert pool.waiting == 0
    finally:
        await pool.close()


# --------------------------------------------------------------------------------------------
# Cancelled statements and lost connections
# --------------------------------------------------------------------------------------------


async def start_sleeping_unit(
    factory: PgUnitOfWorkFactory, db: Db, *, autocommit: bool
) -> tuple[asyncio.Task[None], int]:
    """A unit of work that takes an advisory lock (in its transaction, if any) and sleeps in a
    statement; returned once the server runs that statement."""
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def unit() -> None:
        async with factory(autocommit=autocommit) as u:
            conn = await u.connection()
            started.set_result(await backend_pid(conn))
            if not autocommit:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute("SELECT pg_sleep(600)")
            await u.commit()

    task = asyncio.create_task(unit())
    pid = await started
    await wait_until_running(db, pid, "pg_sleep")
    return task, pid


async def assert_settled(db: Db, pool: DatabasePool, pid: int) -> None:
    """Once the pool hands out a connection again, the cancelled session is idle (its statement
    and transaction ended, its locks free) or gone; a reused connection serves."""
    conn = await pool.acquire()  # after the settling, which holds the one permit
    try:
        assert await session_state(db, pid) in ("idle", None)
        assert await db.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY) is True
        await db.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        reused = await backend_pid(conn)
        assert reused == pid or await session_state(db, pid) is None
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT 41 + 1") == 42
    finally:
        await pool.release(conn)


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
async def test_a_cancelled_statement_is_settled_before_its_connection_serves_again(
    open_pool: Callable[..., Awaitable[DatabasePool]], db: Db, autocommit: bool
) -> None:
    pool = await open_pool(size=1)
    factory = PgUnitOfWorkFactory(pool)
    task, pid = await start_sleeping_unit(factory, db, autocommit=autocommit)

    task.cancel()  # a deadline, mid-statement
    with pytest.raises(asyncio.CancelledError):
        await task

    await assert_settled(db, pool, pid)


async def test_a_statement_past_the_command_timeout_is_database_unavailable_and_settled(
    open_pool: Callable[..., Awaitable[DatabasePool]], db: Db
) -> None:
    pool = await open_pool(size=1, command_timeout=0.5)
    factory = PgUnitOfWorkFactory(pool)
    pids: list[int] = []

    async def lock_then_sleep() -> None:
        async with factory() as u:
            conn = await u.connection()
            pids.append(await backend_pid(conn))
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute("SELECT pg_sleep(600)")

    with pytest.raises(DatabaseUnavailable):
        await lock_then_sleep()
    await assert_settled(db, pool, pids[0])


async def test_the_pool_stays_usable_after_more_cancellations_than_it_has_connections(
    open_pool: Callable[..., Awaitable[DatabasePool]], db: Db
) -> None:
    pool = await open_pool(size=2, max_waiters=20)
    factory = PgUnitOfWorkFactory(pool)

    async def sleeper() -> None:
        async with factory() as u:
            await (await u.connection()).execute("SELECT pg_sleep(600)")

    async def sleeping_sessions() -> int:
        return int(
            await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND query LIKE 'SELECT pg_sleep%'"
            )
        )

    for _ in range(3):
        # Two sleep on the two connections, three wait at the gate; all are cancelled.
        tasks = [asyncio.create_task(sleeper()) for _ in range(5)]

        async def both_sleeping() -> bool:
            return await sleeping_sessions() == 2 and pool.waiting == 3

        await wait_for(both_sleeping, "two statements running and three callers waiting")
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)

    # Both permits come back, on settled connections.
    conns = [await pool.acquire(), await pool.acquire()]
    try:
        assert await sleeping_sessions() == 0
        assert [await c.fetchval("SELECT 1") for c in conns] == [1, 1]
        assert not any(c.is_in_transaction() for c in conns)
    finally:
        for c in conns:
            await pool.release(c)
    assert pool.waiting == 0


async def test_a_connection_lost_mid_statement_is_not_reused(
    open_pool: Callable[..., Awaitable[DatabasePool]], db: Db
) -> None:
    pool = await open_pool(size=1)
    factory = PgUnitOfWorkFactory(pool)
    task, pid = await start_sleeping_unit(factory, db, autocommit=False)

    assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
    # A lost connection is the database being unavailable (UNAVAILABLE: retry), not a bug.
    with pytest.raises(DatabaseUnavailable):
        await task

    assert await pid_of_next_unit(factory) != pid
    assert await session_state(db, pid) is None


async def test_a_connection_the_server_ends_inside_a_unit_is_not_reused(
    open_pool: Callable[..., Awaitable[DatabasePool]],
) -> None:
    pool = await open_pool(size=1)
    factory = PgUnitOfWorkFactory(pool)
    pid = await pid_of_next_unit(factory)

    async def end_its_own_session() -> None:
        async with factory() as u:
            conn = await u.connection()
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(DatabaseUnavailable):
        await end_its_own_session()
    assert await pid_of_next_unit(factory) != pid


async def test_a_connection_the_server_ended_while_idle_is_replaced_when_next_taken(
    open_pool: Callable[..., Awaitable[DatabasePool]], db: Db
) -> None:
    pool = await open_pool(size=1)
    conn = await pool.acquire()
    pid = await backend_pid(conn)
    await pool.release(conn)

    assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)

    async def seen_closed() -> bool:
        return conn.is_closed()

    await wait_for(seen_closed, "the idle connection seen closed")
    # The next unit is served on a new session, not refused with the dead one.
    assert await pid_of_next_unit(PgUnitOfWorkFactory(pool)) != pid


async def wait_until_ended(db: Db, pid: int) -> None:
    async def ended() -> bool:
        return await session_state(db, pid) is None

    await wait_for(ended, f"session {pid} ended")


async def test_a_burst_never_opens_more_connections_than_the_size(
    open_pool: Callable[..., Awaitable[DatabasePool]], db: Db
) -> None:
    pool = await open_pool(size=3, max_waiters=50)
    factory = PgUnitOfWorkFactory(pool)
    pids: set[int] = set()

    async def unit() -> None:
        async with factory(autocommit=True) as u:
            conn = await u.connection()
            pids.add(await backend_pid(conn))
            await conn.execute("SELECT pg_sleep(0.01)")

    await asyncio.gather(*(unit() for _ in range(30)))
    assert len(pids) == 3  # each of the three was opened once and reused
    alive = await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids)
    assert alive == 3


async def test_close_waits_for_a_connection_in_use_then_ends_every_session(
    open_pool: Callable[..., Awaitable[DatabasePool]], db: Db
) -> None:
    pool = await open_pool(size=2)
    idle = await pool.acquire()
    idle_pid = await backend_pid(idle)
    await pool.release(idle)
    busy = await pool.acquire()
    busy_pid = await backend_pid(busy)

    closing = asyncio.create_task(pool.close(wait_seconds=30))
    await asyncio.sleep(0.05)
    assert not closing.done()  # the connection in use is waited for
    with pytest.raises(DatabaseUnavailable):
        await pool.acquire()  # a closing pool hands out nothing
    await busy.fetchval("SELECT 1")  # and the holder finishes its work
    await pool.release(busy)
    await closing

    for pid in (idle_pid, busy_pid):
        await wait_until_ended(db, pid)


async def test_a_refused_statement_keeps_the_connection_and_undoes_the_transaction(
    open_pool: Callable[..., Awaitable[DatabasePool]], db: Db
) -> None:
    pool = await open_pool(size=1)
    factory = PgUnitOfWorkFactory(pool)
    pid = await pid_of_next_unit(factory)

    async def lock_then_refused() -> None:
        async with factory() as u:
            conn = await u.connection()
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(asyncpg.UndefinedTableError):
        await lock_then_refused()
    assert await pid_of_next_unit(factory) == pid
    assert await db.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY) is True


# --------------------------------------------------------------------------------------------
# What a unit of work sends
# --------------------------------------------------------------------------------------------


class Statements:
    """The statements of a pool, as its query loggers report them."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, record: object) -> None:
        self.seen.append(" ".join(str(getattr(record, "query", "")).split()))

    async def since(self, mark: int = 0) -> list[str]:
        await asyncio.sleep(0)  # loggers are called soon after the statement, not inline
        return self.seen[mark:]

    async def verbs(self, mark: int = 0) -> list[str]:
        return [q.split()[0] for q in await self.since(mark)]


async def test_query_loggers_see_every_statement_of_every_connection(
    open_pool: Callable[..., Awaitable[DatabasePool]],
) -> None:
    pool = await open_pool(size=2)
    install = make_install()
    await save_installs(PgUnitOfWorkFactory(pool), install)  # a connection before the logger
    log = Statements()
    await pool.add_query_logger(log)
    # A process that never saw the install: the directory, then the install's bucket.
    factory = PgUnitOfWorkFactory(pool)

    async with factory(autocommit=True) as u:
        assert await u.installs.context(install.install_id) == install.context()
        assert not (await u.connection()).is_in_transaction()
    read = await log.since()
    assert len(read) == 2, read
    assert all(q.startswith("SELECT") for q in read), read
    assert "FROM install_directory" in read[0]
    assert "FROM installs" in read[1]

    # An autocommit read is then one statement (the directory entry is kept).
    mark = len(log.seen)
    async with factory(autocommit=True) as u:
        await u.installs.context(install.install_id)
    assert await log.verbs(mark) == ["SELECT"]

    mark = len(log.seen)
    async with factory() as u:
        await u.installs.context(install.install_id)
        await u.commit()
    assert await log.verbs(mark) == ["BEGIN", "SELECT", "COMMIT"]

    mark = len(log.seen)
    async with factory() as u:
        await u.installs.context(install.install_id)
    assert await log.verbs(mark) == ["BEGIN", "SELECT", "ROLLBACK"]


async def test_a_unit_whose_endpoints_are_cached_takes_no_connection(
    open_pool: Callable[..., Awaitable[DatabasePool]],
) -> None:
    pool = await open_pool(size=1, acquire_timeout=0.2)
    cache = InstallContextCache(60)
    factory = PgUnitOfWorkFactory(pool, endpoint_cache=cache)
    install = make_install()
    await save_installs(factory, install)
    async with factory(autocommit=True) as u:
        eps = await u.installs.endpoints(install.tenant_id, install.install_id, "v1")
    log = Statements()
    await pool.add_query_logger(log)
    held = await pool.acquire()  # the pool's only connection: a unit needing one would fail
    try:
        for autocommit in (True, False):
            async with factory(autocommit=autocommit) as u:
                assert (
                    await u.installs.endpoints(install.tenant_id, install.install_id, "v1") == eps
                )
                await u.commit()
    finally:
        await pool.release(held)
    assert await log.since() == []
    assert len(eps) == 2


async def test_cached_endpoints_last_no_longer_than_the_install_context(
    open_pool: Callable[..., Awaitable[DatabasePool]],
) -> None:
    pool = await open_pool(size=1)
    now = [0.0]
    cache = InstallContextCache(1.0, ticker=lambda: now[0])
    cached = PgUnitOfWorkFactory(pool, endpoint_cache=cache)
    direct = PgUnitOfWorkFactory(pool)
    install = make_install()
    await save_installs(direct, install)
    iid = install.install_id

    async def endpoints(version: str = "v1") -> list[str]:
        async with cached(autocommit=True) as u:
            return [e.selector for e in await u.installs.endpoints("tenant-a", iid, version)]

    assert await endpoints() == ["GET /status", "POST /sync"]
    # Changed through another process: this one may answer from its cache until the TTL ends.
    await save_installs(direct, make_install(install_id=iid, endpoints=(("POST", "/sync"),)))
    assert await endpoints() == ["GET /status", "POST /sync"]
    now[0] = 1.5
    assert await endpoints() == ["POST /sync"]
    # Changed through this process (the admin use case invalidates): seen at once.
    await save_installs(direct, install)
    cache.invalidate(iid)
    assert await endpoints() == ["GET /status", "POST /sync"]
    # Another version is never answered from the cache of the old one.
    assert await endpoints("v2") == []


async def test_a_session_without_statements_sends_nothing(
    open_pool: Callable[..., Awaitable[DatabasePool]],
) -> None:
    pool = await open_pool(size=1)
    log = Statements()
    await pool.add_query_logger(log)
    for autocommit in (True, False):
        async with PooledSession(pool, autocommit=autocommit) as session:
            await session.commit()
    assert await log.since() == []


# --------------------------------------------------------------------------------------------
# The health probe
# --------------------------------------------------------------------------------------------


async def test_the_probe_answers_whether_the_database_does(pg_url: str, db: Db) -> None:
    probe = DatabaseProbe(pg_url)
    unreachable = DatabaseProbe(UNREACHABLE)
    try:
        assert await probe.answers(within=10) is True
        assert await unreachable.answers(within=10) is False
        # Its own connection, kept between calls.
        pid = int(
            await db.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND query = 'SELECT 1'"
            )
        )
        assert await probe.answers(within=10) is True
        assert await session_state(db, pid) == "idle"
        # A connection the server ended is replaced.
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        answers = [await probe.answers(within=10) for _ in range(2)]
        assert answers[-1] is True, answers
    finally:
        await probe.close()
        await unreachable.close()
