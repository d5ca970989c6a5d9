"""Fixtures shared by every layer: a real PostgreSQL (never skipped) and scratch databases; and
each test's layer as a marker, from its directory (`pytest -m unit` needs no PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.postgres import PostgresServer, postgres_server, scratch_database

# The machine is shared and noisy: a slow example is not a failure; the examples' results are.
settings.register_profile("scheduler-host", deadline=None)
settings.load_profile("scheduler-host")

TESTS = Path(__file__).parent
LAYERS = ("unit", "integration", "e2e")
# The directories of tests/ and their layer: unit tests use no PostgreSQL, no server process and
# no network but loopback; integration tests use PostgreSQL (the harness's own checks included);
# end-to-end tests run the server. The client's tests (clients/python/tests) mark themselves unit.
LAYER_OF_DIRECTORY = {
    "unit": "unit",
    "integration": "integration",
    "support": "integration",
    "e2e": "e2e",
}


def _layer(path: Path) -> str | None:
    """The layer of a test file by its directory under tests/; None for any other file."""
    if not path.is_relative_to(TESTS):
        return None
    parts = path.relative_to(TESTS).parts
    return LAYER_OF_DIRECTORY.get(parts[0]) if len(parts) > 1 else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = _layer(item.path)
        if layer is not None:
            item.add_marker(layer)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Every test collected has exactly one layer: a test directly in tests/, or in a directory
    of its own, is refused rather than left out of every tier."""
    for item in session.items:
        layers = sorted({m.name for m in item.iter_markers() if m.name in LAYERS})
        if len(layers) != 1:
            raise pytest.UsageError(
                f"{item.nodeid}: layers {layers}, expected one of {', '.join(LAYERS)}; a test "
                f"of tests/ takes its layer from its directory ({', '.join(LAYER_OF_DIRECTORY)})"
            )


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
