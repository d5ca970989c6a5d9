"""Quota and rate limit hold across server processes: two `scheduler-host serve`
processes share one PostgreSQL database, and every count lives in that database.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_host_pb2 as pb

from tests.support.grpc_status_details import RpcFailure, failure_of, rpc_failure
from tests.support.server import (
    InstallHandle,
    ServerProcess,
    Stubs,
    register_install,
    spawn_server,
    wait_until_serving,
)

QUOTA = 50
RATE_LIMIT = 10
WINDOW = 60.0
CALL_TIMEOUT = 60.0

StartPair = Callable[..., tuple[ServerProcess, ServerProcess]]


@pytest.fixture
def start_pair(e2e_database_url: str, tmp_path: Path) -> Iterator[StartPair]:
    """Starts two server processes on the test database; stops them at the end, whatever happens."""
    started: list[ServerProcess] = []

    def start(**env: str) -> tuple[ServerProcess, ServerProcess]:
        env = {"SCHEDULER_HOST_DISPATCHER": "false", **env}
        # The first one migrates (a no-op when the session server already did); the second starts
        # only after that, so two migrations never race.
        first = spawn_server(
            e2e_database_url, tmp_path / "server-1.log", args=("serve", "--migrate"), **env
        )
        started.append(first)
        wait_until_serving(first)
        second = spawn_server(e2e_database_url, tmp_path / "server-2.log", args=("serve",), **env)
        started.append(second)
        wait_until_serving(second)
        return first, second

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@asynccontextmanager
async def stubs_for(*servers: ServerProcess) -> AsyncIterator[list[Stubs]]:
    channels = [grpc.aio.insecure_channel(server.target) for server in servers]
    try:
        yield [Stubs(channel) for channel in channels]
    finally:
        for channel in channels:
            await channel.close()


def create_request(**fields: Any) -> pb.CreateScheduleRequest:
    return pb.CreateScheduleRequest(
        schedule=schedule_pb2.Schedule(
            **{"endpoint": "POST /sync", "cron": "0 * * * *", "timezone": "UTC", **fields}
        )
    )


async def attempt(call: Awaitable[Any]) -> tuple[Any, RpcFailure | None]:
    try:
        return await call, None
    except grpc.aio.AioRpcError as error:
        return None, failure_of(error)


def summary(failures: list[RpcFailure]) -> Counter[tuple[str, str]]:
    return Counter((f.code.name, f.reason) for f in failures)


async def test_quota_holds_exactly_across_two_processes(start_pair: StartPair) -> None:
    servers = start_pair(SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE="1000")
    async with stubs_for(*servers) as (one, two):
        install = await register_install(two.admin)
        calls = [
            (one if i % 2 == 0 else two).host.CreateSchedule(
                create_request(), metadata=install.metadata, timeout=CALL_TIMEOUT
            )
            for i in range(200)
        ]
        results = await asyncio.gather(*(attempt(call) for call in calls))

        created = [reply.schedule.id for reply, failure in results if failure is None]
        failures = [failure for _, failure in results if failure is not None]
        assert len(created) == QUOTA, summary(failures)
        assert len(set(created)) == QUOTA
        assert summary(failures) == {("RESOURCE_EXHAUSTED", "SCHEDULE_QUOTA_EXCEEDED"): 150}
        assert all(f.quota_subjects for f in failures), failures[0]
        # One count for both: each process refused calls (100 calls each, 50 in all may pass),
        # whichever of them made the creates, which the order of arrival decides.
        refused_by = Counter(i % 2 for i, (_, failure) in enumerate(results) if failure is not None)
        assert set(refused_by) == {0, 1}, refused_by

        for stubs in (one, two):
            listed = await stubs.host.ListSchedules(
                pb.ListSchedulesRequest(page_size=100), metadata=install.metadata
            )
            assert listed.total_size == QUOTA
            assert sorted(s.id for s in listed.schedules) == sorted(created)
        # Still full afterwards, through either process.
        for stubs in (one, two):
            failure = await rpc_failure(
                stubs.host.CreateSchedule(create_request(), metadata=install.metadata)
            )
            assert (failure.code, failure.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "SCHEDULE_QUOTA_EXCEEDED",
            )


def assert_rate_limited(failure: RpcFailure | None) -> float:
    assert failure is not None, "the call succeeded but the rate limit should have refused it"
    assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"), (
        failure
    )
    assert failure.retry_delay_seconds is not None, failure
    assert 0 < failure.retry_delay_seconds <= WINDOW, failure
    return failure.retry_delay_seconds


async def test_rate_limit_is_shared_by_two_processes(start_pair: StartPair) -> None:
    """10 mutating calls per install per rolling 60 s, counted in the database.

    This test waits out one rate-limit window (about 61 s): there is no setting for the window.
    """
    servers = start_pair()  # SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE is the default, 10
    async with stubs_for(*servers) as pair:

        def via(i: int) -> Stubs:
            return pair[i % 2]

        async def create(install: InstallHandle, i: int, **fields: Any) -> Any:
            return await via(i).host.CreateSchedule(
                create_request(**fields), metadata=install.metadata, timeout=CALL_TIMEOUT
            )

        # (1) A burst of 30 creates for one install, spread over both processes.
        burst = await register_install(pair[0].admin)
        burst_start = time.time()
        results = await asyncio.gather(*(attempt(create(burst, i)) for i in range(30)))
        burst_end = time.time()
        failures = [failure for _, failure in results if failure is not None]
        assert len(results) - len(failures) == RATE_LIMIT, summary(failures)
        assert summary(failures) == {("RESOURCE_EXHAUSTED", "RATE_LIMITED"): 20}
        for failure in failures:
            delay = assert_rate_limited(failure)
            # The real wait: the oldest counted call left the window no sooner than 60 s after
            # the burst began.
            assert delay >= WINDOW - (burst_end - burst_start) - 0.01, (delay, failure)

        # Reads are not limited.
        for i in range(2 * RATE_LIMIT):
            listed = await via(i).host.ListSchedules(
                pb.ListSchedulesRequest(), metadata=burst.metadata
            )
            assert listed.total_size == RATE_LIMIT

        # Keep the timed install's window a few seconds behind the burst's, so that its "still
        # refused just before the slot frees" probe below is not raced by the burst's wait on a
        # loaded machine.
        await asyncio.sleep(4)

        # (2) Ten sequential creates, alternating processes; the 11th waits for the first.
        timed = await register_install(pair[1].admin)
        first_sent = time.time()
        await create(timed, 0)
        first_answered = time.time()
        for i in range(1, RATE_LIMIT):
            await create(timed, i)
        sent = time.time()
        _, refused = await attempt(create(timed, RATE_LIMIT))
        answered = time.time()
        delay = assert_rate_limited(refused)
        # retry_delay = (time of the first counted call) + 60 s - (time of the refused call)
        assert first_sent + WINDOW - answered - 0.01 <= delay, delay
        assert delay <= first_answered + WINDOW - sent + 0.01, delay
        timed_free_at = answered + delay

        # (3) Every mutating call that reaches the limiter counts, successful or not.
        mixed = await register_install(pair[0].admin)
        md = mixed.metadata
        kept = (await create(mixed, 0)).schedule  # 1 ok
        updated = (
            await pair[1].host.UpdateSchedule(  # 2 ok
                pb.UpdateScheduleRequest(
                    schedule=schedule_pb2.Schedule(id=kept.id, cron="30 * * * *"),
                    update_mask=field_mask_pb2.FieldMask(paths=["cron"]),
                ),
                metadata=md,
            )
        ).schedule
        bad_update = pb.UpdateScheduleRequest(
            schedule=schedule_pb2.Schedule(id=kept.id, cron="61 * * * *"),
            update_mask=field_mask_pb2.FieldMask(paths=["cron"]),
        )
        # Calls 3-8 fail after the limiter let them through; each one still counts.
        counted_failures: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("VALIDATION_FAILED", lambda: pair[0].host.UpdateSchedule(bad_update, metadata=md)),
            ("VALIDATION_FAILED", lambda: create(mixed, 1, cron="not a cron")),
            ("VALIDATION_FAILED", lambda: create(mixed, 0, timezone="Mars/Olympus")),
            ("VALIDATION_FAILED", lambda: create(mixed, 1, endpoint="POST /nope")),
            (
                "SCHEDULE_NOT_FOUND",
                lambda: pair[0].host.DeleteSchedule(
                    pb.DeleteScheduleRequest(id=str(uuid.uuid4())), metadata=md
                ),
            ),
            (
                "ETAG_MISMATCH",
                lambda: pair[1].host.DeleteSchedule(
                    pb.DeleteScheduleRequest(id=kept.id, etag=kept.etag), metadata=md
                ),
            ),
        ]
        for reason, call in counted_failures:
            failure = await rpc_failure(call())
            assert failure.reason == reason, failure
        doomed = (await create(mixed, 0)).schedule  # 9 ok
        await pair[1].host.DeleteSchedule(  # 10 ok
            pb.DeleteScheduleRequest(id=doomed.id), metadata=md
        )
        refused_calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: create(mixed, 0),
            lambda: create(mixed, 1, cron="not a cron"),  # the limiter answers before validation
            lambda: pair[0].host.DeleteSchedule(pb.DeleteScheduleRequest(id=kept.id), metadata=md),
            lambda: pair[1].host.UpdateSchedule(bad_update, metadata=md),
        ]
        for call in refused_calls:
            _, refusal = await attempt(call())
            assert_rate_limited(refusal)
        still_there = await pair[1].host.GetSchedule(pb.GetScheduleRequest(id=kept.id), metadata=md)
        assert still_there.schedule.etag == updated.etag

        # (4) Waiting the retry delay lets the next call through, even though the install kept
        # calling (and being refused) meanwhile: refused calls are not counted.
        async def refused_until_free(install: InstallHandle, free_at: float) -> float:
            """Keep calling every few seconds until just before `free_at`; all are refused.

            Returns when the last refusal's retry delay says the next call will pass."""
            i = 0
            next_free = free_at
            while time.time() < free_at - 3.0:
                await asyncio.sleep(min(5.0, free_at - 3.0 - time.time()))
                sent = time.time()
                _, failure = await attempt(create(install, i))
                answered = time.time()
                delay = assert_rate_limited(failure)
                next_free = answered + delay
                # Each refusal reports the real remaining wait, not a fixed 60 s.
                assert abs((sent + delay) - free_at) <= (answered - sent) + 0.5, (delay, free_at)
                i += 1
            return next_free

        _, probe = await attempt(create(burst, 0))
        burst_free_at = time.time() + assert_rate_limited(probe)
        burst_free_at = await refused_until_free(burst, burst_free_at)
        await asyncio.sleep(max(0.0, burst_free_at - time.time()) + 0.25)
        await create(burst, 1)  # passes

        # Just before its slot frees, the timed install is still refused; just after, it passes.
        await asyncio.sleep(max(0.0, timed_free_at - 1.0 - time.time()))
        _, refusal = await attempt(create(timed, 0))
        assert_rate_limited(refusal)
        await asyncio.sleep(max(0.0, timed_free_at - time.time()) + 0.25)
        await create(timed, 1)  # passes
