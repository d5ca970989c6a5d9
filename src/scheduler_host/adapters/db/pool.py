"""The process's one connection pool: who may wait for it, how long, and what its failures mean.

A fair gate with a bounded queue admits `size` holders (a burst gets DatabaseUnavailable when the
queue is full or after the acquire timeout); each takes the newest idle connection or opens one,
and gives it back as it is (a unit of work leaves it idle) unless broken or closed. Not asyncpg's
Pool, by measurement: behind the same gate its acquire and release (a proxy, a future, a shielded
task, an idle timer) cost about 75 us of server CPU per GetSchedule at c=32 (about 495 against
420 us; max_inactive_connection_lifetime=0 did not take it back)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import asyncpg
import orjson

from scheduler_host.domain.errors import DatabaseUnavailable

Connection: TypeAlias = "asyncpg.Connection[Any]"
QueryLogger = Callable[[Any], None]
# Gives a connection: to a repository, its unit of work's (opened, and its transaction begun, on
# the first statement); to the pool, a new one.
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
    """Connections behind a fair, bounded gate; `acquire` and `release` one connection."""

    def __init__(
        self, connect: Connect, size: int, *, max_waiters: int, acquire_timeout: float
    ) -> None:
        self._connect = connect
        self.size = size
        self._gate = _Gate(size, max_waiters)
        self._acquire_timeout = acquire_timeout
        self._idle: list[Connection] = []  # newest last: taken first, its caches are warm
        self._open: set[Connection] = set()
        self._loggers: list[QueryLogger] = []
        self._settling: set[asyncio.Task[None]] = set()
        self._closed = False
        self._all_back = asyncio.Event()  # once closed: set when none is in use

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
        """A pool on `url`; it connects on first use."""
        dsn = connect_dsn(url)

        async def connect() -> Connection:
            conn: Connection = await asyncpg.connect(
                dsn,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                connection_class=connection_class,
            )
            try:  # JSON and JSONB in C: orjson decodes a payload in 0.17 us, json 1.3
                for name in ("jsonb", "json"):
                    await conn.set_type_codec(
                        name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog"
                    )
            except BaseException:
                conn.terminate()
                raise
            return conn

        return cls(connect, size, max_waiters=max_waiters, acquire_timeout=acquire_timeout)

    @property
    def waiting(self) -> int:
        """Calls waiting for a connection."""
        return self._gate.waiting

    async def add_query_logger(self, logger: QueryLogger) -> None:
        """Called with each statement's LoggedQuery on every connection (tests, the bench)."""
        self._loggers.append(logger)
        for conn in self._open:
            conn.add_query_logger(logger)

    async def acquire(self) -> Connection:
        """A connection, or DatabaseUnavailable (queue full, timeout, database unreachable)."""
        if self._closed:
            raise DatabaseUnavailable("the server is stopping")
        await self._gate.enter(self._acquire_timeout)
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._open.discard(conn)
            conn = await self._connect()
        except BaseException as exc:
            self._gate.leave()
            if isinstance(exc, Exception) and is_connectivity_error(exc):
                raise DatabaseUnavailable() from exc
            raise
        for logger in self._loggers:
            conn.add_query_logger(logger)
        self._open.add(conn)
        return conn

    async def release(self, conn: Connection, *, broken: bool = False) -> None:
        """Take a connection back; a broken one (a lost connection, a bug) is closed."""
        if broken or conn.is_closed() or conn.is_in_transaction():
            conn.terminate()
            self._open.discard(conn)
        else:
            self._idle.append(conn)
        self._gate.leave()
        if self._closed and len(self._idle) == len(self._open):
            self._all_back.set()

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
        # Then the connections still in use are waited for, and every one is closed.
        self._closed = True
        if len(self._idle) < len(self._open):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_back.wait(), wait_seconds)
        idle, self._idle = self._idle, []
        closing = [conn.close(timeout=wait_seconds) for conn in idle]
        await asyncio.gather(*closing, return_exceptions=True)
        for conn in self._open:
            conn.terminate()  # still in use past the wait, or not closed in time
        self._open.clear()


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
            await self.close()
            return False
        return time.monotonic() - started <= within

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
