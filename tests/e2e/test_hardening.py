"""Hardening, end to end: repeated credentials, methods that would bypass the chain, the read
limit, bounded load (concurrent calls, the pool's queue), reflection off, safe defaults at start,
the Runner's credential and answers that must not poison a schedule."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb

from scheduler_host.app import Application, start_application
from scheduler_host.transport.interceptors import ErrorBoundary, InterceptorChain
from tests.e2e.conftest import e2e_settings
from tests.e2e.test_dispatcher import START, SteppedClock, at
from tests.support.grpc_status_details import rpc_failure
from tests.support.postgres import PostgresServer, scratch_database
from tests.support.runner_standin import RecordingRunner
from tests.support.server import (
    RUNNER_TOKEN,
    InstallHandle,
    Stubs,
    admin_metadata,
    free_port,
    register_install,
    server_env,
    spawn_server,
    wait_until_serving,
)


@asynccontextmanager
async def serving(url: str, **overrides: Any) -> AsyncIterator[tuple[Application, Stubs]]:
    app = await start_application(e2e_settings(url, **overrides), migrate=True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, Stubs(channel)
    finally:
        await app.stop()


def create(name: str = "") -> pb.CreateScheduleRequest:
    return pb.CreateScheduleRequest(
        schedule=schedule_pb2.Schedule(endpoint="POST /sync", cron="0 * * * *", name=name)
    )


# --- metadata and methods -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["x-runner-auth", "x-install-id"])
async def test_a_repeated_credential_or_install_id_is_refused_first(
    stubs: Stubs, install: InstallHandle, key: str
) -> None:
    metadata = (*install.metadata, (key, dict(install.metadata)[key]))
    failure = await rpc_failure(
        stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=metadata)
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )
    # Even a wrong token is not looked at: the repetition answers first.
    wrong = (("x-runner-auth", "wrong"), ("x-runner-auth", RUNNER_TOKEN))
    failure = await rpc_failure(stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=wrong))
    assert failure.reason == "MALFORMED_REQUEST"


async def test_a_repeated_admin_authorization_is_refused(stubs: Stubs) -> None:
    twice = (*admin_metadata(), ("authorization", "Bearer other"))
    failure = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=str(uuid.uuid4())), metadata=twice
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )


async def test_a_streaming_method_of_our_services_is_refused_by_the_chain() -> None:
    """A method added later that is not unary would otherwise pass every link untouched."""

    async def stream(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
        yield b"should never be sent"

    handler = grpc.method_handlers_generic_handler(
        "schedulerhost.v1.SchedulerHost",
        {"Watch": grpc.unary_stream_rpc_method_handler(stream)},
    )
    server = grpc.aio.server(interceptors=[InterceptorChain([ErrorBoundary()])])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                "/schedulerhost.v1.SchedulerHost/Watch"
            )
            # The first read raises for the refusal; a message coming through would not raise.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await watch(b"").read()
    finally:
        await server.stop(None)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- limits on load -----------------------------------------------------------------------------


async def test_reads_are_limited_per_install_and_mutations_do_not_count(
    e2e_database_url: str,
) -> None:
    async with serving(e2e_database_url, read_limit_per_minute=3) as (_, stubs):
        limited = await register_install(stubs.admin)
        other = await register_install(stubs.admin)
        await stubs.host.CreateSchedule(create(), metadata=limited.metadata)
        for _ in range(3):
            await stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=limited.metadata)
        failure = await rpc_failure(
            stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=limited.metadata)
        )
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )
        assert failure.retry_delay_seconds is not None
        assert 0 < failure.retry_delay_seconds <= 60
        await stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=other.metadata)
        await stubs.host.CreateSchedule(create(), metadata=limited.metadata)


@asynccontextmanager
async def install_row_held(url: str, install: InstallHandle) -> AsyncIterator[None]:
    """The install's row locked by another session: creates wait, holding their connection."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("BEGIN")
        await conn.execute(
            "SELECT 1 FROM installs WHERE id = $1 FOR UPDATE", uuid.UUID(install.install_id)
        )
        yield
    finally:
        await conn.close()


async def wait_for_lock_waiters(url: str, count: int) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for _ in range(200):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} calls never waited on the lock")
    finally:
        await conn.close()


async def test_calls_beyond_the_concurrency_limit_are_refused_not_queued(
    e2e_database_url: str,
) -> None:
    async with serving(e2e_database_url, max_concurrent_rpcs=2) as (_, stubs):
        install = await register_install(stubs.admin)
        async with install_row_held(e2e_database_url, install):
            held = [
                asyncio.ensure_future(
                    stubs.host.CreateSchedule(create(), metadata=install.metadata, timeout=10)
                )
                for _ in range(2)
            ]
            await wait_for_lock_waiters(e2e_database_url, 2)
            refused = await rpc_failure(
                stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata)
            )
        await asyncio.gather(*held)
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_full_pool_queue_answers_unavailable_at_once(e2e_database_url: str) -> None:
    async with serving(
        e2e_database_url, db_pool_size=2, db_pool_max_waiters=0, install_cache_seconds=60
    ) as (_, stubs):
        install = await register_install(stubs.admin)
        await stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata)
        async with install_row_held(e2e_database_url, install):
            held = [
                asyncio.ensure_future(
                    stubs.host.CreateSchedule(create(), metadata=install.metadata, timeout=10)
                )
                for _ in range(2)
            ]
            await wait_for_lock_waiters(e2e_database_url, 2)
            refused = await rpc_failure(
                stubs.host.ListSchedules(
                    pb.ListSchedulesRequest(), metadata=install.metadata, timeout=5
                )
            )
        await asyncio.gather(*held)
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
    )


async def test_reflection_can_be_turned_off(e2e_database_url: str) -> None:
    async with (
        serving(e2e_database_url, reflection=False) as (app, _),
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call:
                pass
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- safe defaults at start ---------------------------------------------------------------------


def test_serve_on_every_address_without_tokens_exits_naming_the_variable() -> None:
    env = server_env("postgresql://postgres@127.0.0.1:1/none", free_port())
    for name in ("SCHEDULER_HOST_RUNNER_TOKENS", "SCHEDULER_HOST_ADMIN_TOKEN"):
        env.pop(name)
    env.update(SCHEDULER_HOST_LISTEN="0.0.0.0:0", SCHEDULER_HOST_ENV="development")
    result = subprocess.run(
        [sys.executable, "-m", "scheduler_host.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    (line,) = result.stderr.splitlines()
    assert "SCHEDULER_HOST_RUNNER_TOKENS" in line


def test_serve_on_every_address_without_tls_warns(e2e_database_url: str, tmp_path: Path) -> None:
    server = spawn_server(
        e2e_database_url,
        tmp_path / "exposed.log",
        host="0.0.0.0",
        SCHEDULER_HOST_RUNNER_TOKENS="r" * 32,
        SCHEDULER_HOST_ADMIN_TOKEN="a" * 32,
    )
    try:
        wait_until_serving(server)
    finally:
        server.stop()
    warnings = [line for line in server.log().splitlines() if "without TLS" in line]
    assert len(warnings) == 1, server.log()
    assert "WARNING" in warnings[0], server.log()


# --- the Runner: its credential, and answers that must not poison a schedule ----------------------


async def test_runs_carry_the_runner_call_token(postgres: PostgresServer) -> None:
    runner = RecordingRunner()
    await runner.start()
    clock = SteppedClock(START)
    try:
        with scratch_database(postgres) as name:
            settings = e2e_settings(
                postgres.url(name), runner_base_url=runner.url, runner_call_token="c" * 40
            )
            app = await start_application(settings, migrate=True, clock=clock)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                    stubs = Stubs(channel)
                    install = await register_install(stubs.admin)
                    await stubs.host.CreateSchedule(create(), metadata=install.metadata)
                    clock.now = START + timedelta(hours=1)
                    await app.dispatcher.run_once()
            finally:
                await app.stop()
    finally:
        await runner.stop()
    (sent,) = runner.executions
    assert sent.headers["authorization"] == "Bearer " + "c" * 40


class RawRunner:
    """A Runner that answers every request with the same raw bytes (whatever they are)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            self.requests += 1
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


POISON = {
    "status-1e400": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
        b'{"status": 1e400}',
        "invalid runner response",
    ),
    "bad-chunk-size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        "Runner call failed",
    ),
    "switching-protocols": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "",
    ),
}


@pytest.mark.parametrize("answer", sorted(POISON))
async def test_a_poison_answer_fails_the_run_once_and_the_schedule_goes_on(
    postgres: PostgresServer, answer: str
) -> None:
    raw, expected_error = POISON[answer]
    runner = RawRunner(raw)
    url = await runner.start()
    clock = SteppedClock(START)
    try:
        with scratch_database(postgres) as name:
            settings = e2e_settings(
                postgres.url(name),
                runner_base_url=url,
                runner_timeout_seconds=2,
                runner_retry_base_seconds=0.01,
                dispatch_lease_margin_seconds=0.5,
            )
            app = await start_application(settings, migrate=True, clock=clock)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                    stubs = Stubs(channel)
                    install = await register_install(stubs.admin)
                    made = await stubs.host.CreateSchedule(create(), metadata=install.metadata)
                    clock.now = START + timedelta(hours=1)
                    (run,) = await app.dispatcher.run_once()
                    calls = runner.requests
                    # Long after any lease: nothing is left to take over and call again.
                    clock.now = START + timedelta(hours=1, minutes=30)
                    assert await app.dispatcher.run_once() == []
                    got = await stubs.host.GetSchedule(
                        pb.GetScheduleRequest(id=made.schedule.id), metadata=install.metadata
                    )
            finally:
                await app.stop()
    finally:
        await runner.stop()
    assert run.status.value == "error", run
    assert expected_error in (run.error or ""), run
    assert 1 <= calls <= 3
    assert runner.requests == calls
    assert got.schedule.enabled
    assert at(got.schedule.next_run_time) == START + timedelta(hours=2)
    assert got.schedule.last_run_status == schedule_pb2.RUN_STATUS_ERROR
