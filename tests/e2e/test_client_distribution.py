"""scheduler-host-client as a distribution of its own: installed alone into a fresh virtual
environment (`pip install clients/python`, its dependencies from the package index), it calls a
live `scheduler-host serve`; and its wheel and the server's never ship the same file."""

from __future__ import annotations

import json
import re
import subprocess
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, scratch_database
from tests.support.server import (
    ADMIN_TOKEN,
    RUNNER_TOKEN,
    ServerProcess,
    spawn_server,
    wait_until_serving,
)

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"

# Runs in the fresh environment: registers an install, creates and lists a schedule, reads its
# run history through both services and triggers a validation error; prints what it saw as JSON.
SCRIPT = """
import asyncio, json, sys, uuid
from scheduler_host_client import (
    EndpointSpec, Install, SchedulerAdminClient, SchedulerHostClient, errors, new_schedule,
)

async def main(target, admin_token, runner_token):
    install_id = str(uuid.uuid4())
    async with SchedulerAdminClient(target, admin_token) as admin:
        await admin.upsert_install(Install(
            install_id=install_id, tenant_id="t-dist", registry_id="ext", version_id="v1",
            content_hash="sha256:1", enabled=True, granted_capabilities=["cap:scheduler.manage"],
            endpoints=[EndpointSpec(method="POST", path="/sync", handler="sync")],
        ))
        async with SchedulerHostClient(target, runner_token, install_id) as host:
            made = await host.create_schedule(new_schedule("POST /sync", "@hourly", name="h"))
            listed = [s.id async for s in host.iter_schedules()]
            runs = await host.list_schedule_runs(made.id)
            try:
                await host.create_schedule(new_schedule("POST /sync", "*/4 * * * *"))
                violations = {}
            except errors.InvalidArgument as exc:
                violations = {f: v.reason for f, v in exc.field_violations.items()}
        operator = [s.id async for s in admin.iter_schedules(install_id)]
    print(json.dumps({
        "made": made.id, "endpoint": made.endpoint, "listed": listed, "operator": operator,
        "runs": len(runs.runs), "violations": violations,
    }))

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding scheduler-host-client and nothing of the server."""
    where = tmp_path_factory.mktemp("client-venv") / "venv"
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(CLIENT)],
        check=True,
        timeout=600,
    )
    return python


@pytest.fixture(scope="module")
def live_server(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with scratch_database(postgres, prefix="scheduler_host_dist") as name:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server: ServerProcess = spawn_server(postgres.url(name), log, args=("serve", "--migrate"))
        try:
            wait_until_serving(server)
            yield server.target
        finally:
            server.stop()


def run_in(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # From an empty directory, so nothing of this checkout is importable by accident.
    return subprocess.run(
        [python, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=python.parent,
        env={"PATH": str(python.parent), "PYTHONNOUSERSITE": "1"},
    )


def test_the_client_installs_alone(client_venv: Path) -> None:
    listed = run_in(client_venv, "-m", "pip", "list", "--format=json")
    assert listed.returncode == 0, listed.stderr
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "scheduler-host-client" in names
    assert "scheduler-host" not in names

    probe = run_in(
        client_venv,
        "-c",
        "import importlib.metadata, importlib.util, json, pathlib, scheduler_host_client;"
        "import schedulerhost.v1.scheduler_host_pb2_grpc;"
        "print(json.dumps({"
        "'requires': importlib.metadata.requires('scheduler-host-client'),"
        "'server': importlib.util.find_spec('scheduler_host') is not None,"
        "'typed': pathlib.Path(scheduler_host_client.__file__).with_name('py.typed').exists()}))",
    )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    # Extras (the test tools) aside, these four and nothing else.
    runtime = {re.split(r"[^A-Za-z0-9_.-]", r)[0] for r in seen["requires"] if "extra ==" not in r}
    assert runtime == {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos"}
    assert seen["server"] is False
    assert seen["typed"] is True


def test_the_installed_client_calls_a_live_server(client_venv: Path, live_server: str) -> None:
    done = run_in(client_venv, "-c", SCRIPT, live_server, ADMIN_TOKEN, RUNNER_TOKEN)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["endpoint"] == "POST /sync"
    assert seen["listed"] == [seen["made"]] == seen["operator"]
    assert seen["runs"] == 0
    assert seen["violations"] == {"schedule.cron": "CRON_TOO_FREQUENT"}


def test_the_two_wheels_never_ship_the_same_file(client_venv: Path, tmp_path: Path) -> None:
    built = subprocess.run(
        [client_venv, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path, ROOT, CLIENT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (client_wheel,) = tmp_path.glob("scheduler_host_client-*.whl")
    (server_wheel,) = tmp_path.glob("scheduler_host-*.whl")

    def files(wheel: Path) -> set[str]:
        with zipfile.ZipFile(wheel) as archive:
            return {n for n in archive.namelist() if ".dist-info/" not in n}

    client, server = files(client_wheel), files(server_wheel)
    assert not client & server
    generated = {p.relative_to(ROOT / "generated").as_posix() for p in ROOT.glob("generated/**/*")}
    shipped = {g for g in generated if g.endswith((".py", ".pyi", "py.typed"))}
    assert shipped, "generated/ holds modules and stubs"
    assert shipped <= client, "the client carries every generated module and stub"
    assert "scheduler_host_client/py.typed" in client
    assert not any(n.startswith("schedulerhost/") for n in server)
    assert "scheduler_host/client/__init__.py" in server, "the server re-exports the client"
    with zipfile.ZipFile(server_wheel) as archive:
        (metadata,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = archive.read(metadata).decode()
    version = client_wheel.name.split("-")[1]
    assert f"Requires-Dist: scheduler-host-client=={version}" in requires
