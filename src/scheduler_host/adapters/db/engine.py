"""Engine construction and the mapping of connectivity failures to DatabaseUnavailable."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Failures that mean "the database cannot be reached", as opposed to a bad statement.
_CONNECTIVITY_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    # The pool had no connection for pool_timeout seconds (every one busy in a slow database):
    # transient, so UNAVAILABLE that clients retry, not INTERNAL.
    sa.exc.TimeoutError,
)

# SQLSTATEs of a server that is going away, starting up or full. The asyncpg dialect reports
# them as a plain DBAPIError (not OperationalError), e.g. "the database system is starting up"
# (57P03) while PostgreSQL restarts, or "terminating connection due to administrator command"
# (57P01) when it stops mid-statement; without this they answered INTERNAL during an outage.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P")
_UNAVAILABLE_SQLSTATES = frozenset({"53300"})  # too_many_connections


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE the driver reported: on the DBAPI error (`orig`) or the exception itself."""
    for candidate in (getattr(exc, "orig", None), exc):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def is_connectivity_error(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.OperationalError) and "locked" in str(exc.orig).lower():
        return False  # SQLite lock contention is not an outage
    code = _sqlstate(exc)
    if code is not None and (
        code.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES) or code in _UNAVAILABLE_SQLSTATES
    ):
        return True
    return isinstance(exc, _CONNECTIVITY_ERRORS)


# Connections kept per process; as many again may be opened under load (overflow).
POOL_SIZE = 10


def build_engine(url: str, *, pool_size: int = POOL_SIZE) -> AsyncEngine:
    if url.startswith("sqlite"):
        # One connection: the embedded default serialises writers instead of failing them with
        # "database is locked".
        engine = create_async_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=30, connect_args={"timeout": 30}
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The driver would otherwise open transactions itself and not before a SAVEPOINT,
            # which then commits on release; SQLAlchemy's "begin" event below emits BEGIN instead.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    return create_async_engine(
        url,
        # Errors are logged; bound values (payloads, tenant ids) stay out of the log.
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No ping round trip per checkout: a connection the server dropped fails its statement
        # once (UNAVAILABLE, retried by the caller) and SQLAlchemy then discards the whole pool.
        pool_pre_ping=False,
        pool_timeout=10,
        connect_args={"timeout": 5, "command_timeout": 30},
    )


async def database_answers(engine: AsyncEngine, within: float) -> bool:
    """Whether a trivial query completes within `within` seconds."""
    try:
        async with asyncio.timeout(within), engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception:
        return False
    return True
