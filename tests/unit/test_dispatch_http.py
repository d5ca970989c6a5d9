"""The Runner's HTTP client against the stand-in on loopback: size cap, deadline, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from scheduler_host.adapters.runner_http import MAX_RESPONSE_BYTES, HttpRunnerClient, RunnerRequest
from scheduler_host.runner_standin import Execution, Reply, StandInRunner
from tests.support.server import free_port

REQUEST = RunnerRequest({"context": {"schedule_id": "s"}}, {"x-idempotency-key": "k"})


def body_of(size: int) -> bytes:
    """A JSON body of exactly `size` bytes."""
    return b'{"status":200,"pad":"' + b"x" * (size - 23) + b'"}'


@pytest.fixture
async def stand_in() -> AsyncIterator[StandInRunner]:
    runner = StandInRunner()
    await runner.start()
    yield runner
    await runner.stop()


@pytest.mark.parametrize("omit_length", [False, True], ids=["content-length", "streamed"])
@pytest.mark.parametrize(
    ("size", "oversize"), [(MAX_RESPONSE_BYTES, False), (MAX_RESPONSE_BYTES + 1, True)]
)
async def test_responses_above_256_kib_are_cut_off(
    stand_in: StandInRunner, size: int, oversize: bool, omit_length: bool
) -> None:
    async def reply(execution: Execution) -> Reply:
        return Reply(body=body_of(size), omit_length=omit_length)

    stand_in.responder = reply
    client = HttpRunnerClient(stand_in.url)
    try:
        response = await client._post(REQUEST, 5)
    finally:
        await client.close()
    assert (response.http_status, response.oversize) == (200, oversize)
    assert len(response.body) <= MAX_RESPONSE_BYTES + 64 * 1024  # stopped reading early


async def test_the_request_is_posted_as_json_with_the_headers(stand_in: StandInRunner) -> None:
    seen: list[Execution] = []

    async def record(execution: Execution) -> Reply:
        seen.append(execution)
        return Reply()

    stand_in.responder = record
    client = HttpRunnerClient(stand_in.url + "/")
    try:
        response = await client._post(REQUEST, 5)
    finally:
        await client.close()
    assert response.http_status == 200 and response.transport_error is None
    (execution,) = seen
    assert execution.body == REQUEST.body
    assert execution.idempotency_key == "k"
    assert execution.headers["content-type"] == "application/json"


async def test_a_slow_runner_is_a_timeout(stand_in: StandInRunner) -> None:
    async def slow(execution: Execution) -> Reply:
        await asyncio.sleep(5)
        return Reply()

    stand_in.responder = slow
    client = HttpRunnerClient(stand_in.url)
    try:
        response = await client._post(REQUEST, 0.2)
    finally:
        await client.close()
    assert response.transport_error == "Runner request timed out after 0.2 s"


async def test_a_runner_that_is_not_listening_is_a_transport_error() -> None:
    client = HttpRunnerClient(f"http://127.0.0.1:{free_port()}")
    try:
        response = await client._post(REQUEST, 5)
    finally:
        await client.close()
    assert response.http_status is None
    assert response.transport_error is not None
    assert response.transport_error.startswith("ConnectError")
