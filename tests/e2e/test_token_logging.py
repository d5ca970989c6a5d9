"""Tokens never reach the log, and production refuses weak runner tokens at start."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb

from tests.support.grpc_status_details import rpc_failure
from tests.support.server import (
    ServerProcess,
    Stubs,
    admin_metadata,
    free_port,
    install_message,
    server_env,
    spawn_server,
    wait_until_serving,
)

STARTUP_TIMEOUT = 30
# Long and random, so that finding any piece of one in the log cannot be a coincidence.
GOOD_RUNNER_TOKEN = "runner-" + secrets.token_urlsafe(32)
SECOND_RUNNER_TOKEN = "runner2-" + secrets.token_urlsafe(32)
ADMIN_TOKEN = "admin-" + secrets.token_urlsafe(32)
BAD_TOKEN = "bad-" + secrets.token_urlsafe(48)
TOKENS = {
    "good runner": GOOD_RUNNER_TOKEN,
    "second runner": SECOND_RUNNER_TOKEN,
    "admin": ADMIN_TOKEN,
    "bad": BAD_TOKEN,
}
FRAGMENT = 12  # no 12-character piece of a token may appear either


@pytest.fixture
def debug_server(e2e_database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    server = spawn_server(
        e2e_database_url,
        tmp_path / "server.log",
        args=("serve", "--migrate"),
        SCHEDULER_HOST_RUNNER_TOKENS=f"{GOOD_RUNNER_TOKEN},{SECOND_RUNNER_TOKEN}",
        SCHEDULER_HOST_ADMIN_TOKEN=ADMIN_TOKEN,
        SCHEDULER_HOST_LOG_FORMAT="json",
        SCHEDULER_HOST_LOG_LEVEL="debug",
        SCHEDULER_HOST_DISPATCHER="false",
    )
    try:
        wait_until_serving(server)
        yield server
    finally:
        server.stop()


def nul_payload() -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update({"text": "a\x00b"})
    return value


async def test_no_token_reaches_the_log(debug_server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(debug_server.target) as channel:
        stubs = Stubs(channel)
        msg = install_message()
        await stubs.admin.UpsertInstall(
            admin_pb.UpsertInstallRequest(install=msg), metadata=admin_metadata(ADMIN_TOKEN)
        )
        good = (("x-runner-auth", GOOD_RUNNER_TOKEN), ("x-install-id", msg.install_id))
        second = (("x-runner-auth", SECOND_RUNNER_TOKEN), ("x-install-id", msg.install_id))
        created = await stubs.host.CreateSchedule(
            pb.CreateScheduleRequest(
                schedule=schedule_pb2.Schedule(endpoint="POST /sync", cron="0 * * * *")
            ),
            metadata=good,
        )
        await stubs.host.GetSchedule(pb.GetScheduleRequest(id=created.schedule.id), metadata=second)
        # Refused tokens, in every place a token is read.
        refused: list[Awaitable[Any]] = [
            stubs.host.ListSchedules(
                pb.ListSchedulesRequest(),
                metadata=(("x-runner-auth", BAD_TOKEN), ("x-install-id", msg.install_id)),
            ),
            stubs.host.ListSchedules(
                pb.ListSchedulesRequest(),
                metadata=(("x-runner-auth", ADMIN_TOKEN), ("x-install-id", msg.install_id)),
            ),
            stubs.admin.GetInstall(
                admin_pb.GetInstallRequest(install_id=msg.install_id),
                metadata=admin_metadata(BAD_TOKEN),
            ),
            stubs.admin.GetInstall(
                admin_pb.GetInstallRequest(install_id=msg.install_id),
                metadata=admin_metadata(GOOD_RUNNER_TOKEN),
            ),
            stubs.admin.GetInstall(
                admin_pb.GetInstallRequest(install_id=msg.install_id),
                metadata=(("authorization", f"Basic {ADMIN_TOKEN}"),),
            ),
        ]
        for call in refused:
            failure = await rpc_failure(call)
            assert failure.code == grpc.StatusCode.UNAUTHENTICATED, failure
        # Calls that fail inside the server, so the error path (with its traceback) is logged
        # too: a NUL character cannot be stored in PostgreSQL. Where the server rejects one as
        # invalid instead, it still goes through the logging of a failed call.
        nul_install = install_message()
        nul_install.granted_capabilities.append("cap:\x00")
        nul_install.content_hash = "sha256:\x00"
        crashes = [
            await rpc_failure(
                stubs.host.CreateSchedule(
                    pb.CreateScheduleRequest(
                        schedule=schedule_pb2.Schedule(
                            endpoint="POST /sync", cron="0 * * * *", payload=nul_payload()
                        )
                    ),
                    metadata=good,
                )
            ),
            await rpc_failure(
                stubs.admin.UpsertInstall(
                    admin_pb.UpsertInstallRequest(install=nul_install),
                    metadata=admin_metadata(ADMIN_TOKEN),
                )
            ),
        ]
        for crash in crashes:
            assert crash.code in {grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT}
            for token in TOKENS.values():
                assert token not in crash.message

    assert debug_server.stop() == 0
    log = debug_server.log()

    # The log is the structured one, and it did record the calls above.
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    codes = {r.get("grpc_code") for r in records}
    assert {"OK", "UNAUTHENTICATED"} <= codes, codes
    if any(crash.code == grpc.StatusCode.INTERNAL for crash in crashes):
        assert "INTERNAL" in codes
        assert any("exception" in r for r in records), "the internal error was not logged"

    for name, token in TOKENS.items():
        assert token not in log, f"the {name} token appears in the log"
        pieces = {token[i : i + FRAGMENT] for i in range(len(token) - FRAGMENT + 1)}
        leaked = sorted(piece for piece in pieces if piece in log)
        assert not leaked, f"pieces of the {name} token appear in the log: {leaked}"


# --- production refuses weak runner tokens ---------------------------------------------------


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler_host.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )


def production_env(database_url: str, **overrides: str | None) -> dict[str, str]:
    env = server_env(
        database_url,
        free_port(),
        SCHEDULER_HOST_ENV="production",
        SCHEDULER_HOST_ADMIN_TOKEN=ADMIN_TOKEN,
        SCHEDULER_HOST_DISPATCHER="false",
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def assert_refused_naming(result: subprocess.CompletedProcess[str], variable: str) -> None:
    assert result.returncode != 0, result
    output = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    assert len(output) == 1, output
    assert variable in output[0], output


@pytest.mark.parametrize(
    "tokens",
    [
        None,
        "",
        " , ",
        "changeme",
        "change-me",
        "secret",
        "local-runner-key",
        "CHANGEME",
        f"{GOOD_RUNNER_TOKEN},changeme",
    ],
    ids=[
        "unset",
        "empty",
        "blank-list",
        "changeme",
        "change-me",
        "secret",
        "local-runner-key",
        "changeme-upper",
        "strong-and-weak",
    ],
)
def test_production_refuses_weak_runner_tokens(e2e_database_url: str, tokens: str | None) -> None:
    env = production_env(e2e_database_url, SCHEDULER_HOST_RUNNER_TOKENS=tokens)
    assert_refused_naming(run_serve(env), "SCHEDULER_HOST_RUNNER_TOKENS")


@pytest.mark.parametrize("admin_token", ["", "changeme", "secret"])
def test_production_refuses_a_weak_admin_token(e2e_database_url: str, admin_token: str) -> None:
    env = production_env(
        e2e_database_url,
        SCHEDULER_HOST_RUNNER_TOKENS=GOOD_RUNNER_TOKEN,
        SCHEDULER_HOST_ADMIN_TOKEN=admin_token,
    )
    assert_refused_naming(run_serve(env), "SCHEDULER_HOST_ADMIN_TOKEN")


def test_production_starts_with_strong_tokens(e2e_database_url: str, tmp_path: Path) -> None:
    """The control case: the refusals above are about the tokens, not production itself."""
    server = spawn_server(
        e2e_database_url,
        tmp_path / "production.log",
        args=("serve", "--migrate"),
        SCHEDULER_HOST_ENV="production",
        SCHEDULER_HOST_RUNNER_TOKENS="r" * 32,
        SCHEDULER_HOST_ADMIN_TOKEN="a" * 32,
        SCHEDULER_HOST_RUNNER_CALL_TOKEN="c" * 32,
        SCHEDULER_HOST_DISPATCHER="false",
    )
    try:
        wait_until_serving(server)
    finally:
        code = server.stop()
    assert code == 0, server.log()
