"""Fixtures shared by every layer: a real PostgreSQL (never skipped) and scratch databases."""

from __future__ import annotations

from collections.abc import Iterator

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
