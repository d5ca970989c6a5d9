"""The unit of work on the pool: a connection taken on the first statement, one transaction or
none (autocommit: a one-statement read is one round trip), and the mapping of database failures
to the domain's errors. A unit that needs no statement takes no connection at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import asyncpg

from scheduler_host.adapters.db.installs import InstallDirectory, PgInstallRepository
from scheduler_host.adapters.db.pool import Connection, DatabasePool, is_connectivity_error
from scheduler_host.adapters.db.runs import PgHousekeeping, PgRateLimiter, PgRunRepository
from scheduler_host.adapters.db.schedules import PgScheduleRepository
from scheduler_host.domain.errors import DatabaseUnavailable, SchedulerError
from scheduler_host.service.ports import EndpointCache


def _connection_intact(exc: BaseException) -> bool:
    """Whether the connection is usable after `exc` ended the unit of work: the server refused a
    statement, or the use case stopped on a rule of its own; not after anything else."""
    if isinstance(exc, SchedulerError):
        return True
    return isinstance(exc, asyncpg.PostgresError) and not is_connectivity_error(exc)


class PooledSession:
    """A pooled connection taken on the first statement, given back when the session ends."""

    __slots__ = ("_autocommit", "_conn", "_pool")

    def __init__(self, pool: DatabasePool, *, autocommit: bool) -> None:
        self._pool = pool
        self._autocommit = autocommit
        self._conn: Connection | None = None

    async def connection(self) -> Connection:
        conn = self._conn
        if conn is not None:
            return conn
        conn = await self._pool.acquire()
        self._conn = conn
        if not self._autocommit:
            await conn.execute("BEGIN")
        return conn

    async def __aenter__(self) -> Self:
        return self

    async def commit(self) -> None:
        conn = self._conn
        if conn is not None and not self._autocommit:
            await conn.execute("COMMIT")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            if exc is not None and is_connectivity_error(exc):
                raise DatabaseUnavailable() from exc
            return
        if isinstance(exc, asyncio.CancelledError | TimeoutError) and not conn.is_closed():
            # Cancelled mid-statement (a deadline, the command timeout): asyncpg asks the server
            # to cancel it; the pool waits for that before the connection is used again.
            self._pool.settle(conn)
            if isinstance(exc, TimeoutError):
                raise DatabaseUnavailable() from exc
            return
        intact = exc is None or _connection_intact(exc)
        if intact and conn.is_in_transaction():
            # Not committed (or the commit failed): undo. If that fails the connection goes.
            try:
                await conn.execute("ROLLBACK")
            except Exception:
                intact = False
        await self._pool.release(conn, broken=not intact)
        if exc is not None and not isinstance(exc, SchedulerError) and is_connectivity_error(exc):
            raise DatabaseUnavailable() from exc


class PgUnitOfWork(PooledSession):
    """The use cases' unit of work: a session with the repositories on its connection."""

    __slots__ = ("housekeeping", "installs", "rate_limits", "runs", "schedules")

    def __init__(
        self,
        pool: DatabasePool,
        directory: InstallDirectory,
        cache: EndpointCache | None,
        *,
        autocommit: bool,
    ) -> None:
        super().__init__(pool, autocommit=autocommit)
        connect = self.connection
        self.schedules = PgScheduleRepository(connect)
        self.installs = PgInstallRepository(connect, directory, cache)
        self.runs = PgRunRepository(connect)
        self.rate_limits = PgRateLimiter(connect)
        self.housekeeping = PgHousekeeping(connect)


class PgUnitOfWorkFactory:
    """Units of work on `pool`; endpoint reads go through `endpoint_cache` when given."""

    def __init__(self, pool: DatabasePool, endpoint_cache: EndpointCache | None = None) -> None:
        self.pool = pool
        self._cache = endpoint_cache
        self._directory = InstallDirectory()

    def __call__(self, *, autocommit: bool = False) -> PgUnitOfWork:
        return PgUnitOfWork(self.pool, self._directory, self._cache, autocommit=autocommit)


def traced_connection_class(tracer: Any, database: str) -> type[Any]:
    """An asyncpg Connection whose statements are spans of `tracer` (children of the current
    span, e.g. the RPC's)."""
    from opentelemetry.trace import SpanKind

    def span(conn: Any, query: str) -> Any:
        verb = query.split(None, 1)[0].upper() if query.strip() else "SQL"
        addr = conn._addr  # (host, port) or a socket path
        attributes = {"db.system": "postgresql", "db.name": database, "db.statement": query}
        if isinstance(addr, tuple) and len(addr) >= 2:
            attributes["net.peer.name"], attributes["net.peer.port"] = str(addr[0]), addr[1]
        return tracer.start_as_current_span(
            f"{verb} {database}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def traced(name: str) -> Callable[..., Awaitable[Any]]:
        untraced = getattr(asyncpg.Connection, name)

        async def send(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            with span(self, query):
                return await untraced(self, query, *args, **kwargs)

        return send

    # Each of the ways a statement is sent becomes a span.
    methods = {name: traced(name) for name in ("execute", "fetch", "fetchrow", "fetchval")}
    return type("TracedConnection", (asyncpg.Connection,), methods)
