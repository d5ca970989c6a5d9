"""Fixtures of the client's own tests: a recording gRPC server and clients connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from recording_server import (
    ADMIN_TOKEN,
    INSTALL_ID,
    RUNNER_TOKEN,
    RecordingServer,
    start_recording_server,
)

from scheduler_host_client import SchedulerAdminClient, SchedulerHostClient


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
