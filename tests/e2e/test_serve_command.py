"""`scheduler-host serve | migrate` as an operator runs them: subprocesses, exit codes, signals."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_host_pb2 as pb

from scheduler_host.app import Application
from tests.support.server import (
    ServerProcess,
    Stubs,
    free_port,
    register_install,
    server_env,
    spawn_server,
    wait_until_serving,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GRACE_SECONDS = 5.0


def cli() -> list[str]:
    """The installed console script, as an operator runs it (the module as a fallback)."""
    script = Path(sys.executable).with_name("scheduler-host")
    return [str(script)] if script.exists() else [sys.executable, "-m", "scheduler_host.cli"]


def run_cli(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli(), *args],
        env=server_env(database_url, free_port(), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# Never connected to: the tests that use it stop before touching a database.
NO_DATABASE = "postgresql://postgres@127.0.0.1:1/none"


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def stop_and_check(server: ServerProcess) -> None:
    code = server.stop()
    assert code == 0, f"exit {code} after SIGTERM:\n{server.log()}"


@pytest.fixture
def unmigrated_url(empty_pg_url: str) -> str:
    return empty_pg_url


# --------------------------------------------------------------------------------------------
# Migrations at start
# --------------------------------------------------------------------------------------------


def test_serve_refuses_an_unmigrated_database(unmigrated_url: str, tmp_path: Path) -> None:
    server = spawn_server(unmigrated_url, tmp_path / "server.log")
    try:
        code = server.process.wait(timeout=60)
    finally:
        server.stop()
    log = server.log()
    assert code != 0, log
    assert "Traceback" not in log, log
    matching = [
        line for line in lines(log) if "not migrated" in line and "scheduler-host migrate" in line
    ]
    assert len(matching) == 1, log
    assert matching[0].startswith("scheduler-host: "), log


def test_serve_refuses_an_unmigrated_database_with_one_stderr_line(
    unmigrated_url: str,
) -> None:
    result = run_cli(unmigrated_url, "serve")
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert len(lines(result.stderr)) == 1, result.stderr
    assert "not migrated" in result.stderr
    assert "scheduler-host migrate" in result.stderr


@pytest.mark.parametrize("database", ["configured", "embedded"])
def test_migrate_then_serve(database: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # Embedded: no URL, so both commands use the embedded PostgreSQL in the test's directory.
    url = str(request.getfixturevalue("empty_pg_url")) if database == "configured" else ""
    embedded = {"SCHEDULER_HOST_EMBEDDED_DATA_DIR": str(tmp_path / "pgdata")}
    migrated = run_cli(url, "migrate", **embedded)
    assert migrated.returncode == 0, migrated.stderr
    assert "Traceback" not in migrated.stderr

    again = run_cli(url, "migrate", **embedded)
    assert again.returncode == 0, again.stderr

    server = spawn_server(url, tmp_path / "server.log", args=("serve",), **embedded)
    try:
        wait_until_serving(server)
    finally:
        stop_and_check(server)


def test_serve_with_migrate_on_an_empty_database(empty_pg_url: str, tmp_path: Path) -> None:
    server = spawn_server(empty_pg_url, tmp_path / "server.log", args=("serve", "--migrate"))
    try:
        wait_until_serving(server)
    finally:
        stop_and_check(server)
    # The database is now migrated: a plain serve starts as well.
    again = spawn_server(empty_pg_url, tmp_path / "again.log")
    try:
        wait_until_serving(again)
    finally:
        stop_and_check(again)


# --------------------------------------------------------------------------------------------
# Bad configuration, busy port
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("serve",), ("migrate",), ("serve", "--migrate")])
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SCHEDULER_HOST_LISTEN", "nonsense"),
        ("SCHEDULER_HOST_DATABASE_URL", "mysql://x"),
        ("SCHEDULER_HOST_MIN_INTERVAL_SECONDS", "abc"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    command: tuple[str, ...], variable: str, value: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "pgdata"
    result = run_cli(
        NO_DATABASE, *command, SCHEDULER_HOST_EMBEDDED_DATA_DIR=str(data_dir), **{variable: value}
    )
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert variable in result.stderr
    assert result.stderr.startswith("scheduler-host: configuration error: ")
    assert not data_dir.exists(), "nothing is touched before the settings are good"


def test_weak_tokens_in_production_exit_2() -> None:
    result = run_cli(
        NO_DATABASE,
        "serve",
        SCHEDULER_HOST_ENV="production",
        SCHEDULER_HOST_RUNNER_TOKENS="changeme",
    )
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "SCHEDULER_HOST_RUNNER_TOKENS" in result.stderr
    assert "changeme" not in result.stderr


def test_a_port_in_use_gives_a_clear_error(empty_pg_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            empty_pg_url, "serve", "--migrate", SCHEDULER_HOST_LISTEN=f"127.0.0.1:{port}"
        )
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    ours = [line for line in lines(result.stderr) if line.startswith("scheduler-host: ")]
    assert len(ours) == 1, result.stderr
    assert f"127.0.0.1:{port}" in ours[0], result.stderr


# --------------------------------------------------------------------------------------------
# SIGTERM while a call is in flight
# --------------------------------------------------------------------------------------------


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def wait_for_lock_waiter(conn: asyncpg.Connection) -> None:
    """Until some other session of this database waits on a lock (the blocked CreateSchedule)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the CreateSchedule call never blocked on the install's row lock")


async def test_sigterm_lets_the_call_in_flight_finish_and_refuses_new_ones(
    app: Application, e2e_database_url: str, tmp_path: Path
) -> None:
    server = spawn_server(
        e2e_database_url,
        tmp_path / "server.log",
        SCHEDULER_HOST_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
        SCHEDULER_HOST_DISPATCHER="false",
    )
    conn: asyncpg.Connection | None = None
    try:
        await asyncio.to_thread(wait_until_serving, server)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = Stubs(channel)
            install = await register_install(stubs.admin)

            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            first = await asyncio.wait_for(watch.read(), 10)
            assert first.status == SERVING

            # Hold the install's row lock, which CreateSchedule takes: the call blocks on it.
            conn = await asyncpg.connect(asyncpg_dsn(e2e_database_url))
            await conn.execute("BEGIN")
            await conn.execute(
                "SELECT 1 FROM installs WHERE id = $1 FOR UPDATE", uuid.UUID(install.install_id)
            )
            in_flight = asyncio.ensure_future(
                stubs.host.CreateSchedule(
                    pb.CreateScheduleRequest(
                        schedule=schedule_pb2.Schedule(
                            endpoint="/sync", cron="*/5 * * * *", name="in-flight"
                        )
                    ),
                    metadata=install.metadata,
                    timeout=30,
                )
            )
            await wait_for_lock_waiter(conn)
            assert not in_flight.done()

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            update = await asyncio.wait_for(watch.read(), 5)
            assert update.status == NOT_SERVING, server.log()
            watch.cancel()

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs.host.GetEndpoints(
                    pb.GetEndpointsRequest(), metadata=install.metadata, timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
            assert not in_flight.done(), "the call in flight is still waiting for the lock"

            await asyncio.sleep(1)
            await conn.execute("ROLLBACK")

            created = (await asyncio.wait_for(in_flight, GRACE_SECONDS)).schedule
            assert created.name == "in-flight"
            assert created.endpoint == "POST /sync"

        remaining = GRACE_SECONDS + 2 - (time.monotonic() - signalled)
        try:
            code = await asyncio.to_thread(server.process.wait, max(remaining, 0.1))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {GRACE_SECONDS + 2} s after SIGTERM:\n{server.log()}"
            ) from None
        assert code == 0, server.log()
        assert "Traceback" not in server.log(), server.log()
    finally:
        if conn is not None:
            await conn.close()
        server.stop()

    # The schedule created during the stop was committed.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        listed = await Stubs(channel).host.ListSchedules(
            pb.ListSchedulesRequest(), metadata=install.metadata
        )
    assert [s.id for s in listed.schedules] == [created.id]
