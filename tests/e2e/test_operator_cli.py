"""The operator commands of `scheduler-host` (the installed console script, in its own process)
against the real server: tables for people, JSON for scripts, exit codes by gRPC code, and every
field violation of a refused request."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from scheduler_host.app import Application, start_application
from scheduler_host.cli.rendering import message_json
from scheduler_host_client import SchedulerAdminClient, SchedulerHostClient, new_schedule
from tests.e2e.conftest import e2e_settings
from tests.support.runner_standin import RecordingRunner
from tests.support.server import ADMIN_TOKEN, RUNNER_TOKEN, free_port

SCHEDULER_HOST = str(Path(sys.executable).with_name("scheduler-host"))


async def scheduler_host(
    target: str, *args: str, token: str | None = ADMIN_TOKEN, **env: str
) -> subprocess.CompletedProcess[str]:
    """`scheduler-host --target TARGET [--token TOKEN] ARGS...` in its own process, stdin closed."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_HOST_")}
    environment.update(env)
    command = [SCHEDULER_HOST, "--target", target]
    if token is not None:
        command += ["--token", token]
    return await asyncio.to_thread(
        subprocess.run,
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


def install_yaml(path: Path, install_id: str, **overrides: str) -> Path:
    fields = {"install_id": install_id, "tenant_id": f"tenant-{install_id[:8]}", **overrides}
    path.write_text(
        textwrap.dedent(
            """\
            # An operator's install file: the fields of schedulerhost.v1.Install.
            install_id: {install_id}
            tenant_id: {tenant_id}
            registry_id: registry-ext
            version_id: v1
            content_hash: "sha256:abc"
            enabled: true
            granted_capabilities: [cap:scheduler.manage]
            endpoints:
              - {{method: POST, path: /sync, handler: sync}}
              - {{method: GET, path: /status, handler: status}}
            """
        ).format(**fields)
    )
    return path


@pytest.fixture
def target(app: Application) -> str:
    return f"127.0.0.1:{app.port}"


def fields_of(stdout: str) -> dict[str, str]:
    """The `name  value` lines printed for one resource (up to the first blank line)."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        if not line.strip():
            break
        name, _, value = line.partition("  ")
        out[name.strip()] = value.strip()
    return out


def table_rows(stdout: str) -> list[list[str]]:
    """The rows under a `simple` table's dashed rule, split on runs of two or more spaces."""
    lines = stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    rows = []
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        rows.append([cell.strip() for cell in line.split("  ") if cell.strip()])
    return rows


async def test_upsert_from_yaml_then_list_the_installs_schedules_as_a_table(
    target: str, tmp_path: Path
) -> None:
    install_id = str(uuid.uuid4())
    upserted = await scheduler_host(
        target, "installs", "upsert", "-f", str(install_yaml(tmp_path / "install.yaml", install_id))
    )
    assert upserted.returncode == 0, upserted.stderr
    assert install_id in upserted.stdout
    assert ["POST", "/sync", "sync"] in table_rows(upserted.stdout)

    async with SchedulerHostClient(target, RUNNER_TOKEN, install_id) as host:
        hourly = await host.create_schedule(
            new_schedule("POST /sync", "0 * * * *", name="hourly", timezone="Europe/Berlin")
        )
        status = await host.create_schedule(
            new_schedule("GET /status", "30 2 * * *", name="nightly", enabled=False)
        )

    listed = await scheduler_host(target, "schedules", "list", "--install", install_id)
    assert listed.returncode == 0, listed.stderr
    header = listed.stdout.splitlines()[0].split()
    assert header == ["ID", "NAME", "ENDPOINT", "WHEN", "ENABLED", "NEXT", "RUN", "LAST", "RUN"]
    rows = table_rows(listed.stdout)
    assert [r[:5] for r in rows] == [
        [hourly.id, "hourly", "POST /sync", "0 * * * * Europe/Berlin", "yes"],
        [status.id, "nightly", "GET /status", "30 2 * * * UTC", "no"],
    ]
    assert rows[0][5] == hourly.next_run_time.ToDatetime(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert listed.stdout.rstrip().endswith("2 schedule(s)")


async def test_json_output_parses_as_the_messages(target: str, tmp_path: Path) -> None:
    install_id = str(uuid.uuid4())
    source = install_yaml(tmp_path / "install.yaml", install_id)
    upserted = await scheduler_host(target, "-o", "json", "installs", "upsert", "-f", str(source))
    assert upserted.returncode == 0, upserted.stderr
    assert json.loads(upserted.stdout)["install"]["installId"] == install_id
    async with SchedulerHostClient(target, RUNNER_TOKEN, install_id) as host:
        made = await host.create_schedule(new_schedule("POST /sync", "@daily", payload={"a": [1]}))

    listed = await scheduler_host(
        target, "-o", "json", "schedules", "list", "--install", install_id
    )
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert page["totalSize"] == 1
    assert [s["id"] for s in page["schedules"]] == [made.id]

    got = await scheduler_host(
        target, "-o", "json", "schedules", "get", "--install", install_id, "--schedule", made.id
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == message_json(made)
    assert json.loads(got.stdout)["payload"] == {"a": [1]}

    install = await scheduler_host(target, "--output", "json", "installs", "get", install_id)
    assert install.returncode == 0, install.stderr
    parsed = json.loads(install.stdout)
    assert parsed["grantedCapabilities"] == ["cap:scheduler.manage"]
    assert sorted(e["path"] for e in parsed["endpoints"]) == ["/status", "/sync"]


async def test_a_refused_request_exits_67_with_its_reason_and_every_field_violation(
    target: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "installId": "not-a-uuid",
                "tenantId": "",
                "versionId": "v1",
                "endpoints": [
                    {"method": "POST", "path": "/sync", "handler": "a"},
                    {"method": "POST", "path": "//sync", "handler": "b"},
                ],
            }
        )
    )
    refused = await scheduler_host(target, "installs", "upsert", "-f", str(bad))
    assert refused.returncode == 67, refused
    assert refused.stdout == ""
    first, *details = refused.stderr.splitlines()
    assert first.startswith("scheduler-host: INVALID_ARGUMENT VALIDATION_FAILED: ")
    fields = {line.split(":")[0].strip(): line.split(":")[1].strip() for line in details}
    assert fields == {
        "install.install_id": "ID_INVALID",
        "install.tenant_id": "INSTALL_INVALID",
        "install.registry_id": "INSTALL_INVALID",  # absent from the file: required
        "install.endpoints[1]": "INSTALL_INVALID",  # //sync is /sync again
    }
    assert all(len(line.split(": ", 2)) == 3 for line in details), "each with its description"

    as_json = await scheduler_host(target, "-o", "json", "installs", "upsert", "-f", str(bad))
    assert as_json.returncode == 67
    assert as_json.stdout == ""
    error = json.loads(as_json.stderr)
    assert (error["code"], error["reason"], error["exitCode"]) == (
        "INVALID_ARGUMENT",
        "VALIDATION_FAILED",
        67,
    )
    assert {v["field"]: v["reason"] for v in error["fieldViolations"]} == fields


async def test_exit_codes_follow_the_grpc_code(target: str) -> None:
    missing = str(uuid.uuid4())
    not_found = await scheduler_host(target, "installs", "get", missing)
    assert not_found.returncode == 69, not_found
    assert "NOT_FOUND INSTALL_NOT_FOUND" in not_found.stderr
    wrong_token = await scheduler_host(target, "installs", "get", missing, token="not-the-token")
    assert wrong_token.returncode == 80, wrong_token
    assert "UNAUTHENTICATED INVALID_TOKEN" in wrong_token.stderr
    assert "not-the-token" not in wrong_token.stderr
    closed = await scheduler_host(f"127.0.0.1:{free_port()}", "installs", "get", missing)
    assert closed.returncode == 78, closed
    assert "UNAVAILABLE" in closed.stderr, closed
    usage = await scheduler_host(target, "schedules", "list")
    assert usage.returncode == 2, usage
    assert "--install" in usage.stderr, usage


async def test_the_token_comes_from_the_servers_variables(target: str) -> None:
    missing = str(uuid.uuid4())
    for env in (
        {"SCHEDULER_HOST_ADMIN_TOKENS": f" {ADMIN_TOKEN} ,rotated-out-token"},
        {"SCHEDULER_HOST_ADMIN_TOKEN": ADMIN_TOKEN},
    ):
        answered = await scheduler_host(target, "installs", "get", missing, token=None, **env)
        assert answered.returncode == 69, (env, answered.stderr)  # authenticated, then not found
    # Without any: the development default, which this server does not accept.
    default = await scheduler_host(target, "installs", "get", missing, token=None)
    assert default.returncode == 80, default.stderr


async def test_installs_get_and_delete(target: str, tmp_path: Path) -> None:
    install_id = str(uuid.uuid4())
    source = install_yaml(tmp_path / "install.yaml", install_id)
    assert (await scheduler_host(target, "installs", "upsert", "-f", str(source))).returncode == 0

    shown = await scheduler_host(target, "installs", "get", install_id)
    assert shown.returncode == 0, shown.stderr
    fields = fields_of(shown.stdout)
    assert (fields["install id"], fields["enabled"], fields["capabilities"]) == (
        install_id,
        "yes",
        "cap:scheduler.manage",
    )

    unconfirmed = await scheduler_host(target, "installs", "delete", install_id)
    assert unconfirmed.returncode == 1
    assert "Aborted!" in unconfirmed.stderr
    assert (await scheduler_host(target, "installs", "get", install_id)).returncode == 0

    deleted = await scheduler_host(target, "installs", "delete", install_id, "--yes")
    assert deleted.returncode == 0
    assert f"deleted install {install_id}" in deleted.stdout
    assert (await scheduler_host(target, "installs", "get", install_id)).returncode == 69


@pytest.fixture
async def runner_target(app: Application) -> AsyncIterator[str]:
    """A server on the e2e database whose Runner is a stand-in that answers every run with 200."""
    runner = RecordingRunner()
    await runner.start()
    server = await start_application(e2e_settings(app.database_url, runner_base_url=runner.url))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop()
        await runner.stop()


async def test_run_now_then_list_runs(runner_target: str, tmp_path: Path) -> None:
    install_id = str(uuid.uuid4())
    source = install_yaml(tmp_path / "install.yaml", install_id)
    assert (
        await scheduler_host(runner_target, "installs", "upsert", "-f", str(source))
    ).returncode == 0
    async with SchedulerHostClient(runner_target, RUNNER_TOKEN, install_id) as host:
        schedule = await host.create_schedule(new_schedule("POST /sync", "@daily"))
    ids = ("--install", install_id, "--schedule", schedule.id)

    ran = await scheduler_host(runner_target, "schedules", "run-now", *ids)
    assert ran.returncode == 0, ran.stderr
    shown = fields_of(ran.stdout)
    assert (shown["trigger"], shown["status"]) == ("manual", "success")
    again = await scheduler_host(runner_target, "-o", "json", "schedules", "run-now", *ids)
    second = json.loads(again.stdout)
    assert second["status"] == "RUN_STATE_SUCCESS"
    assert second["scheduleId"] == schedule.id

    listed = await scheduler_host(runner_target, "runs", "list", *ids)
    assert listed.returncode == 0, listed.stderr
    rows = table_rows(listed.stdout)
    assert [r[0] for r in rows] == [second["id"], shown["id"]], "newest first"
    assert all(r[1] == "manual" and "success" in r for r in rows)

    limited = await scheduler_host(
        runner_target, "-o", "json", "runs", "list", *ids, "--limit", "1"
    )
    page = json.loads(limited.stdout)
    assert [r["id"] for r in page["runs"]] == [second["id"]]
    assert page["nextPageToken"]
    async with SchedulerAdminClient(runner_target, ADMIN_TOKEN) as admin:
        kept = [r.id async for r in admin.iter_schedule_runs(install_id, schedule.id)]
    assert kept == [second["id"], shown["id"]]


async def test_preview_computes_what_the_servers_preview_answers(
    target: str, tmp_path: Path
) -> None:
    install_id = str(uuid.uuid4())
    source = install_yaml(tmp_path / "install.yaml", install_id)
    assert (await scheduler_host(target, "installs", "upsert", "-f", str(source))).returncode == 0
    start = datetime(2026, 3, 7, tzinfo=UTC)
    cases = [
        ("30 2 * * *", "America/New_York"),  # the skipped hour runs at 03:00
        ("*/30 * * * *", "America/New_York"),
        ("@weekly", "Europe/Berlin"),
        ("0 9 * * MON-FRI", "Asia/Kolkata"),
    ]
    async with SchedulerHostClient(target, RUNNER_TOKEN, install_id) as host:
        for cron, zone in cases:
            served = await host.preview_schedule(cron, zone, count=12, start_time=start)
            local = await scheduler_host(
                target,
                "-o",
                "json",
                "preview",
                cron,
                "--timezone",
                zone,
                "--count",
                "12",
                "--start",
                start.isoformat(),
                token=None,
            )
            assert local.returncode == 0, local.stderr
            assert json.loads(local.stdout) == message_json(served), (cron, zone)


async def test_health(target: str) -> None:
    serving = await scheduler_host(target, "health", token=None)
    assert (serving.returncode, serving.stdout.strip()) == (0, "SERVING")
    host_service = await scheduler_host(
        target, "-o", "json", "health", "--service", "schedulerhost.v1.SchedulerHost"
    )
    assert json.loads(host_service.stdout) == {"status": "SERVING"}
    unknown = await scheduler_host(target, "health", "--service", "no.such.Service")
    assert unknown.returncode == 69
    assert "NOT_FOUND" in unknown.stderr


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    directory = tmp_path_factory.mktemp("cli-pki")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = authority.issue_cert("scheduler-host.internal")
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    client = authority.issue_cert("operator")
    client.private_key_pem.write_to_path(str(directory / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    return authority, directory


@pytest.mark.usefixtures("app")
async def test_tls_and_mtls_flags(e2e_database_url: str, ca: tuple[trustme.CA, Path]) -> None:
    _, pki = ca
    server = await start_application(
        e2e_settings(
            e2e_database_url,
            tls_cert=str(pki / "server.pem"),
            tls_key=str(pki / "server.key"),
            tls_client_ca=str(pki / "ca.pem"),
        )
    )
    tls = ("--tls-ca", str(pki / "ca.pem"), "--tls-server-name", "scheduler-host.internal")
    client_cert = ("--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key"))
    try:
        target = f"127.0.0.1:{server.port}"
        served = await scheduler_host(
            target, *tls, *client_cert, "installs", "get", str(uuid.uuid4())
        )
        assert served.returncode == 69, served.stderr  # through TLS and to the servicer
        without_cert = await scheduler_host(target, *tls, "health")
        assert without_cert.returncode == 78, without_cert.stderr  # mTLS refuses the handshake
        half = await scheduler_host(target, *tls, "--tls-cert", str(pki / "client.pem"), "health")
        assert half.returncode == 2, half.stderr
        assert "--tls-key" in half.stderr, half.stderr
    finally:
        await server.stop()
