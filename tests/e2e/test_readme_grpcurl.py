"""The README's grpcurl examples, run as written: the code blocks of README.md marked
`<!-- readme-test: NAME -->` are run with bash (after the `variables` block, with ADDR pointed at
`scheduler-host serve` on a free port) and their output checked; a block marked
`<!-- readme-test: NAME output -->` is the output the README shows for NAME, compared exactly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import PostgresServer, scratch_database
from tests.support.server import spawn_server, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(
    r"<!-- readme-test: (?P<name>[\w-]+)(?P<output> output)? -->\n"
    r"```\w*\n(?P<body>.*?)\n```",
    re.DOTALL,
)
BIN = Path(sys.executable).parent  # grpcurl comes with the development install


def readme_blocks() -> tuple[dict[str, str], dict[str, str]]:
    """The marked commands and the marked outputs of README.md, by name."""
    commands: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for match in BLOCK.finditer((ROOT / "README.md").read_text()):
        into = outputs if match["output"] else commands
        assert match["name"] not in into, f"two README blocks named {match['name']}"
        into[match["name"]] = match["body"]
    return commands, outputs


COMMANDS, OUTPUTS = readme_blocks()


@pytest.fixture(scope="module")
def address(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`scheduler-host serve` with the development tokens the README uses."""
    with scratch_database(postgres, prefix="scheduler_host_readme") as name:
        server = spawn_server(
            postgres.url(name),
            tmp_path_factory.mktemp("readme") / "server.log",
            args=("serve", "--migrate"),
            SCHEDULER_HOST_ENV="development",
            SCHEDULER_HOST_RUNNER_TOKENS="local-runner-key",
            SCHEDULER_HOST_ADMIN_TOKEN="local-admin-key",
        )
        try:
            wait_until_serving(server)
            yield server.target
        finally:
            server.stop()


def run_block(name: str, address: str) -> subprocess.CompletedProcess[str]:
    script = "\n".join(
        ("set -euo pipefail", COMMANDS["variables"], f"ADDR={address}", COMMANDS[name])
    )
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        cwd=ROOT,
    )


def documents(text: str) -> list[Any]:
    """The JSON documents printed one after another."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        value, at = decoder.raw_decode(text, at)
        found.append(value)
        while at < len(text) and text[at].isspace():
            at += 1
    return found


@pytest.fixture(scope="module")
def registered(address: str) -> dict[str, Any]:
    """The README's admin call: the install its host calls act for."""
    done = run_block("admin-call", address)
    assert done.returncode == 0, done.stderr
    (answer,) = documents(done.stdout)
    return dict(answer)


def test_the_readme_marks_the_blocks_this_test_runs() -> None:
    assert set(COMMANDS) == {"variables", "list", "describe", "admin-call", "host-call", "error"}
    assert set(OUTPUTS) == {"error"}
    assert all(line.startswith("grpcurl ") for line in COMMANDS["list"].splitlines())
    assert (BIN / "grpcurl").exists(), "grpcurl comes with the development install"


def test_list(address: str) -> None:
    done = run_block("list", address)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "schedulerhost.v1.SchedulerAdmin",
        "schedulerhost.v1.SchedulerHost",
    } <= set(lines)
    host_methods = {line.rsplit(".", 1)[1] for line in lines if line.count(".") == 3}
    assert host_methods >= {
        "CreateSchedule",
        "GetSchedule",
        "ListSchedules",
        "UpdateSchedule",
        "DeleteSchedule",
        "GetEndpoints",
        "PreviewSchedule",
        "ListScheduleRuns",
    }


def test_describe(address: str) -> None:
    done = run_block("describe", address)
    assert done.returncode == 0, done.stderr
    assert "schedulerhost.v1.SchedulerAdmin is a service:" in done.stdout
    assert "rpc UpsertInstall ( .schedulerhost.v1.UpsertInstallRequest )" in done.stdout
    assert "schedulerhost.v1.Schedule is a message:" in done.stdout
    assert ".google.protobuf.Timestamp next_run_time = 11;" in done.stdout


def test_admin_call(registered: dict[str, Any]) -> None:
    install_id = re.search(r"^INSTALL=(\S+)$", COMMANDS["variables"], re.MULTILINE)
    assert install_id is not None
    install = registered["install"]
    assert install["install_id"] == install_id[1]
    assert install["granted_capabilities"] == ["cap:scheduler.manage"]
    assert install["endpoints"] == [{"method": "POST", "path": "/sync", "handler": "sync"}]


@pytest.mark.usefixtures("registered")
def test_host_calls_with_their_two_headers(address: str) -> None:
    done = run_block("host-call", address)
    assert done.returncode == 0, done.stderr
    created, listed = documents(done.stdout)
    schedule = created["schedule"]
    assert (schedule["name"], schedule["endpoint"], schedule["timezone"]) == (
        "hourly sync",
        "POST /sync",
        "Europe/Berlin",
    )
    assert schedule["payload"] == {"full": True}
    assert [s["id"] for s in listed["schedules"]] == [schedule["id"]]

    again = run_block("host-call", address)
    assert again.returncode == 0, again.stderr
    assert documents(again.stdout)[0]["schedule"]["id"] == schedule["id"], "safe to repeat"


@pytest.mark.usefixtures("registered")
def test_an_error_shows_its_details_as_the_readme_does(address: str) -> None:
    done = run_block("error", address)
    assert done.returncode == 64 + 3, done  # INVALID_ARGUMENT
    (status,) = documents(done.stderr)
    assert status == json.loads(OUTPUTS["error"])
    types = [d["@type"] for d in status["details"]]
    assert types == [
        "type.googleapis.com/google.rpc.ErrorInfo",
        "type.googleapis.com/google.rpc.BadRequest",
    ], "the details resolve through reflection"
