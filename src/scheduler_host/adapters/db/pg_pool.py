"""A small asyncpg connection pool for the API's PostgreSQL path, and its error mapping.

asyncpg's own Pool resets every connection it takes back (a query round trip per call); the
units of work here always leave a connection idle (committed or rolled back), so this pool
takes it back as it is. It is bounded; a connection whose last use failed at the connection
level is closed instead of reused. One whose statement was cancelled (a deadline) is settled
first: asyncpg's cancel request must reach the server, or the session would keep running the
statement and holding its locks. Idle connections are not pinged: one the server closed is
seen as closed (asyncpg learns it from the socket) and dropped when taken.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from scheduler_host.adapters.db.engine import is_connectivity_error

QueryLogger = Callable[[Any], None]
# How long a cancelled statement may take to end before its connection is closed instead.
SETTLE_SECONDS = 5.0


class PoolTimeout(TimeoutError):
    """No connection became free in time: every one is busy in a slow database (transient)."""


def is_pg_connectivity_error(exc: BaseException) -> bool:
    """Like engine.is_connectivity_error, for asyncpg's own exceptions. InternalClientError
    is asyncpg's protocol out of step, seen when the server ends sessions mid-statement (a
    fast shutdown): that connection is lost like the others."""
    if isinstance(
        exc,
        asyncpg.InterfaceError | asyncpg.PostgresConnectionError | asyncpg.InternalClientError,
    ):
        return True
    return is_connectivity_error(exc)


async def _setup(conn: Any) -> None:
    # JSON and JSONB (payloads, capabilities) decode to Python values and encode from them.
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name,
            encoder=_dumps,
            decoder=json.loads,
            schema="pg_catalog",
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class PgPool:
    """At most `size` connections; idle ones reused newest first (their caches are warm)."""

    def __init__(
        self,
        connect_args: Mapping[str, Any],
        *,
        size: int,
        acquire_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        connection_class: type[Any] | None = None,
    ) -> None:
        # asyncpg.connect keywords (host, port, user, password, database, ssl, ...).
        self._connect_args = dict(connect_args)
        self._connect_args.pop("async_creator_fn", None)
        connect_timeout = self._connect_args.pop("timeout", connect_timeout)
        command_timeout = self._connect_args.pop("command_timeout", command_timeout)
        self._size = size
        self._acquire_timeout = acquire_timeout
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._connection_class = connection_class or asyncpg.Connection
        self._idle: list[Any] = []
        self._connections: set[Any] = set()  # idle and in use
        self._open = 0  # idle, in use and being opened
        # Each waiter's future is given a released connection, or None when a slot came free.
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._loggers: list[QueryLogger] = []
        self._settling: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def settling(self) -> int:
        """Connections waiting for a cancelled statement to end (see settle)."""
        return len(self._settling)

    def add_query_logger(self, logger: QueryLogger) -> None:
        """Called (soon after) with each statement's asyncpg LoggedQuery, on every connection."""
        self._loggers.append(logger)
        for conn in self._connections:
            conn.add_query_logger(logger)

    async def acquire(self) -> Any:
        """A connection: an idle one, a new one while below `size`, or the next one released,
        first come first served; PoolTimeout after `acquire_timeout` seconds of waiting."""
        if self._closed:
            raise asyncpg.InterfaceError("the pool is closed")
        if not self._waiters:  # those already waiting are served first
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._forget(conn)
            if self._open < self._size:
                return await self._connect()
        deadline = time.monotonic() + self._acquire_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PoolTimeout("no database connection became free in time")
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await asyncio.wait_for(waiter, remaining)
            except BaseException as exc:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    # Served as it gave up: pass the connection (or the free slot) on.
                    if waiter.result() is not None:
                        self.release(waiter.result())
                    else:
                        self._wake()
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout("no database connection became free in time") from None
                raise
            if self._closed:
                if handed is not None:
                    self._forget(handed)
                raise asyncpg.InterfaceError("the pool is closed")
            if handed is not None:
                if not handed.is_closed():
                    return handed
                self._forget(handed)
            if self._open < self._size:  # a slot came free
                return await self._connect()

    async def _connect(self) -> Any:
        self._open += 1
        try:
            conn = await asyncpg.connect(
                **self._connect_args,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                connection_class=self._connection_class,
            )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        try:
            await _setup(conn)
        except BaseException:
            conn.terminate()
            self._open -= 1
            self._wake()
            raise
        for logger in self._loggers:
            conn.add_query_logger(logger)
        self._connections.add(conn)
        return conn

    def _forget(self, conn: Any) -> None:
        conn.terminate()
        self._connections.discard(conn)
        self._open -= 1

    def release(self, conn: Any, *, broken: bool = False) -> None:
        """Take a connection back: to the first waiter, else idle; a broken (or closed, or busy)
        one is closed instead, and its slot offered to the first waiter."""
        if broken or self._closed or conn.is_closed() or conn.is_in_transaction():
            self._forget(conn)
            self._wake()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def settle(self, conn: Any) -> None:
        """Take back a connection whose statement was cancelled, in the background: once the
        cancel request ended the statement server-side, ROLLBACK ends any transaction and the
        connection is reused; it is closed if that fails or takes over SETTLE_SECONDS."""
        task = asyncio.get_running_loop().create_task(self._settle(conn))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, conn: Any) -> None:
        try:
            async with asyncio.timeout(SETTLE_SECONDS):
                # asyncpg runs this only after the cancellation in progress completed.
                await conn.execute("ROLLBACK")
        except asyncio.CancelledError:
            self._forget(conn)
            self._wake()
            raise
        except Exception:
            self._forget(conn)
            self._wake()
            return
        self.release(conn)

    def _wake(self) -> None:
        """Tell the first waiter that a slot came free (it opens a connection)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close the idle connections now; those in use close when they come back."""
        self._closed = True
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            self._connections.discard(conn)
            self._open -= 1
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:
                conn.terminate()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
