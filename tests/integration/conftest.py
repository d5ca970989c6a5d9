"""Storage fixtures: a scratch PostgreSQL database migrated to the head revision, the pool on
it, units of work, and a connection of the test's own for setting up and checking rows."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from scheduler_host.adapters.db.pool import DatabasePool
from scheduler_host.adapters.db.unit_of_work import PgUnitOfWorkFactory
from scheduler_host.adapters.migrations import upgrade_database
from tests.support.storage import Db, connect


@pytest.fixture
async def pg_url(empty_pg_url: str) -> str:
    """A fresh database for this test, migrated to the head revision."""
    await upgrade_database(empty_pg_url)
    return empty_pg_url


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[DatabasePool]:
    opened = await DatabasePool.open(pg_url, size=4, max_waiters=500, acquire_timeout=60)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def factory(pool: DatabasePool) -> PgUnitOfWorkFactory:
    return PgUnitOfWorkFactory(pool)


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Db]:
    """The test's own connection to the migrated database (autocommit)."""
    conn = await connect(pg_url)
    try:
        yield conn
    finally:
        await conn.close()
