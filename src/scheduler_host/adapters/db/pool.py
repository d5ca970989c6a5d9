"""The process's one asyncpg pool: who may wait for it, how long, and what its failures mean.

asyncpg's own pool does the pooling. Around it: a first-come-first-served gate with a bounded
queue (a burst gets `DatabaseUnavailable` when the queue is full or after the acquire timeout; a
released connection goes to the longest waiter, where asyncpg's queue lets a newcomer barge in),
no reset round trip on release, and the one test of "the database cannot be reached".
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from scheduler_host.domain.errors import DatabaseUnavailable

Connection: TypeAlias = "PoolConnectionProxy[Any]"
QueryLogger = Callable[[Any], None]
# The connection a repository uses: the unit of work's, opened (and its transaction begun) on the
# first statement.
Connect = Callable[[], Awaitable[Connection]]

# SQLSTATE classes and codes of a server that is going away, starting up or full, e.g. "the
# database system is starting up" (57P03) while PostgreSQL restarts.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P")
_UNAVAILABLE_SQLSTATES = frozenset({"53300"})  # too_many_connections
# How long a connection whose statement was cancelled may take to settle before it is closed.
SETTLE_SECONDS = 5.0


def is_connectivity_error(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached (as opposed to a refused statement).

    InternalClientError is asyncpg's protocol out of step, seen when the server ends sessions
    mid-statement (a fast shutdown): that connection is lost like the others."""
    if isinstance(
        exc,
        asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.InternalClientError
        | OSError
        | TimeoutError,
    ):
        return True
    code = getattr(exc, "sqlstate", None)
    return isinstance(code, str) and (
        code.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES) or code in _UNAVAILABLE_SQLSTATES
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _set_codecs(conn: Any) -> None:
    # JSON and JSONB (payloads, capabilities) in C: orjson decodes a payload in 0.17 us, json 1.3.
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog"
        )


async def _keep_as_is(conn: Any) -> None:
    """Release without a reset query: a unit of work hands its connection back idle."""


def connect_dsn(url: str) -> str:
    """The libpq DSN of a `postgresql://` or `postgresql+asyncpg://` URL."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql{sep}{rest}" if scheme.startswith("postgres") else url


class _Gate:
    """`permits` holders at a time; the others wait in arrival order, at most `max_waiters`."""

    def __init__(self, permits: int, max_waiters: int) -> None:
        self._free = permits
        self._max_waiters = max_waiters
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self, wait_seconds: float) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        if len(self._waiters) >= self._max_waiters:
            raise DatabaseUnavailable("the database is busy; retry later")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), wait_seconds)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a permit just as it gave up: pass it on
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise DatabaseUnavailable("no database connection became free in time") from None
            raise

    def leave(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class DatabasePool:
    """asyncpg's pool behind a fair, bounded gate; `acquire` and `release` one connection."""

    def __init__(
        self, pool: asyncpg.Pool, size: int, *, max_waiters: int, acquire_timeout: float
    ) -> None:
        self._pool = pool
        self.size = size
        self._gate = _Gate(size, max_waiters)
        self._acquire_timeout = acquire_timeout
        self._loggers: list[QueryLogger] = []
        self._settling: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        size: int,
        max_waiters: int,
        acquire_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        connection_class: type[Any] = asyncpg.Connection,
    ) -> DatabasePool:
        holder: list[DatabasePool] = []

        async def init(conn: Any) -> None:
            await _set_codecs(conn)
            for logger in holder[0]._loggers if holder else ():
                conn.add_query_logger(logger)

        try:
            pool = await asyncpg.create_pool(
                connect_dsn(url),
                min_size=0,
                max_size=size,
                init=init,
                reset=_keep_as_is,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                connection_class=connection_class,
            )
        except Exception as exc:
            if is_connectivity_error(exc):
                raise DatabaseUnavailable() from exc
            raise
        opened = cls(pool, size, max_waiters=max_waiters, acquire_timeout=acquire_timeout)
        holder.append(opened)
        return opened

    @property
    def waiting(self) -> int:
        """Calls waiting for a connection."""
        return self._gate.waiting

    async def add_query_logger(self, logger: QueryLogger) -> None:
        """Called with each statement's LoggedQuery on every connection (tests, the bench)."""
        self._loggers.append(logger)
        await self._pool.expire_connections()  # replaced on their next use, with the logger

    async def acquire(self) -> Connection:
        """A connection, or DatabaseUnavailable (queue full, timeout, database unreachable)."""
        await self._gate.enter(self._acquire_timeout)
        try:
            # Past the gate one is free; asyncpg's timeout would add a task and a timer a call.
            conn: Connection = await self._pool.acquire()
        except BaseException as exc:
            self._gate.leave()
            if isinstance(exc, Exception) and is_connectivity_error(exc):
                raise DatabaseUnavailable() from exc
            raise
        return conn

    async def release(self, conn: Connection, *, broken: bool = False) -> None:
        """Take a connection back; a broken one (a lost connection, a bug) is closed."""
        try:
            if broken:
                conn.terminate()
            await self._pool.release(conn)
        except asyncpg.InterfaceError:
            pass  # its connection closed, and asyncpg already took it back
        finally:
            self._gate.leave()

    def settle(self, conn: Connection) -> None:
        """Take back, in the background, a connection whose statement was cancelled: asyncpg runs
        the ROLLBACK once the server ended the statement (else the session would keep it and its
        locks); the connection is closed if that fails or takes over SETTLE_SECONDS."""
        task = asyncio.get_running_loop().create_task(self._settle(conn))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, conn: Connection) -> None:
        broken = True
        try:
            async with asyncio.timeout(SETTLE_SECONDS):
                await conn.execute("ROLLBACK")
            broken = False
        except Exception:  # noqa: S110 - the connection is closed below; nothing else to do
            pass
        finally:
            await asyncio.shield(self.release(conn, broken=broken))

    async def close(self, wait_seconds: float = 5.0) -> None:
        # A call cut at the shutdown grace's end may wait on a lock: unless its cancel reaches
        # the server first, the session runs (and commits) it once the lock is free.
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=wait_seconds)
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
        try:
            await asyncio.wait_for(self._pool.close(), wait_seconds)
        except (TimeoutError, Exception):
            self._pool.terminate()


class Repository:
    """Statements on the connection of a unit of work."""

    __slots__ = ("_connect",)

    def __init__(self, connect: Connect) -> None:
        self._connect = connect


class DatabaseProbe:
    """Whether the database answers, on a connection of its own (not a busy pool's)."""

    def __init__(self, url: str) -> None:
        self._dsn = connect_dsn(url)
        self._conn: Any = None

    async def answers(self, within: float) -> bool:
        started = time.monotonic()
        try:
            async with asyncio.timeout(within):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._dsn, timeout=within)
                await self._conn.fetchval("SELECT 1")
        except Exception:
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            return False
        return time.monotonic() - started <= within

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
