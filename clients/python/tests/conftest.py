"""Fixtures of the client's own tests: a recording gRPC server and clients connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from recording_server import (
    ADMIN_TOKEN,
    INSTALL_ID,
    RUNNER_TOKEN,
    RecordingServer,
    start_recording_server,
)

from scheduler_host_client import SchedulerAdminClient, SchedulerHostClient

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    # Registered here as well for a run from clients/python, whose configuration has no markers.
    config.addinivalue_line("markers", "unit: fast tests without PostgreSQL or a server process")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The client's tests are unit tests: an in-process recording server, no PostgreSQL."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker("unit")


@pytest.fixture
async def recorder() -> AsyncIterator[RecordingServer]:
    server = await start_recording_server()
    try:
        yield server
    finally:
        await server.server.stop(None)


@pytest.fixture
async def host(recorder: RecordingServer) -> AsyncIterator[SchedulerHostClient]:
    async with SchedulerHostClient(recorder.target, RUNNER_TOKEN, INSTALL_ID, timeout=5) as client:
        yield client


@pytest.fixture
async def admin(recorder: RecordingServer) -> AsyncIterator[SchedulerAdminClient]:
    async with SchedulerAdminClient(recorder.target, ADMIN_TOKEN, timeout=5) as client:
        yield client
