"""The SQL unit of work: one connection, one transaction, the repositories bound to it.

With autocommit, PostgreSQL runs each statement on its own (AUTOCOMMIT isolation: no BEGIN,
COMMIT or ROLLBACK round trips); SQLite keeps its transaction, which costs no round trip there
and keeps its multi-statement steps (the rate limiter) atomic."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from scheduler_host.adapters.db.engine import is_connectivity_error
from scheduler_host.adapters.db.repositories import (
    SqlInstallRepository,
    SqlRateLimiter,
    SqlRunRepository,
    SqlScheduleRepository,
)
from scheduler_host.domain.errors import DatabaseUnavailable, SchedulerError


class SqlUnitOfWork:
    schedules: SqlScheduleRepository
    installs: SqlInstallRepository
    runs: SqlRunRepository
    rate_limits: SqlRateLimiter

    def __init__(self, engine: AsyncEngine, *, autocommit: bool = False) -> None:
        self._engine = engine
        self._autocommit = autocommit and engine.dialect.name != "sqlite"
        self._conn: AsyncConnection | None = None
        self._tx: AsyncTransaction | None = None

    async def __aenter__(self) -> Self:
        try:
            self._conn = await self._engine.connect()
            if self._autocommit:
                await self._conn.execution_options(isolation_level="AUTOCOMMIT")
            else:
                self._tx = await self._conn.begin()
        except Exception as exc:
            await self._close()
            if is_connectivity_error(exc):
                raise DatabaseUnavailable() from exc
            raise
        self.schedules = SqlScheduleRepository(self._conn)
        self.installs = SqlInstallRepository(self._conn)
        self.runs = SqlRunRepository(self._conn)
        self.rate_limits = SqlRateLimiter(self._conn)
        return self

    async def commit(self) -> None:
        assert self._conn is not None
        if self._tx is not None:
            await self._tx.commit()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()
        if exc is not None and not isinstance(exc, SchedulerError) and is_connectivity_error(exc):
            raise DatabaseUnavailable() from exc

    async def _close(self) -> None:
        conn, self._conn, self._tx = self._conn, None, None
        if conn is None:
            return
        # Closing rolls back anything not committed; a broken connection must not hide the error.
        with contextlib.suppress(Exception):
            await conn.close()


class SqlUnitOfWorkFactory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def __call__(self, *, autocommit: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, autocommit=autocommit)
