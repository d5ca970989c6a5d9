"""Fixtures shared by every layer: a real PostgreSQL (never skipped) and scratch databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.postgres import PostgresServer, postgres_server, scratch_database

# The machine is shared and noisy: a slow example is not a failure; the examples' results are.
settings.register_profile("scheduler-host", deadline=None)
settings.load_profile("scheduler-host")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The test PostgreSQL server: the configured one, the local one, or a throwaway cluster."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def empty_pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, unmigrated PostgreSQL database for this test only."""
    with scratch_database(postgres) as name:
        yield postgres.url(name)


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    """A fresh, unmigrated SQLite database file for this test only."""
    return f"sqlite+aiosqlite:///{tmp_path / 'scheduler-host.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database_url(request: pytest.FixtureRequest, postgres: PostgresServer) -> Iterator[str]:
    """The same storage test on both supported databases."""
    if request.param == "sqlite":
        yield request.getfixturevalue("empty_sqlite_url")
    else:
        with scratch_database(postgres) as name:
            yield postgres.url(name)
