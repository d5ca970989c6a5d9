"""`buf curl` (from @bufbuild/buf in the root package.json) through server reflection only.

Every command runs in an empty directory with no proto files and no buf.yaml, so buf can only
learn the schema from the server's reflection service, as an operator debugging a deployment does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2

from scheduler_host.app import Application
from tests.support.server import RUNNER_TOKEN, InstallHandle, Stubs, register_install

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
HOST = "schedulerhost.v1.SchedulerHost"
ADMIN = "schedulerhost.v1.SchedulerAdmin"


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():  # `make test` installs it; a bare pytest run may not have yet
        npm = shutil.which("npm")
        assert npm, "npm is required to install buf"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=ROOT,
            check=True,
            timeout=600,
        )
    return BUF


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    (tmp_path / "nowhere").mkdir()
    return tmp_path / "nowhere"


async def buf_curl(buf: Path, cwd: Path, *args: str, check: bool = True) -> tuple[int, str, str]:
    """Run `buf curl` without blocking the loop that serves the in-process server."""
    process = await asyncio.create_subprocess_exec(
        str(buf),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    code = int(process.returncode or 0)
    if check:
        assert code == 0, f"buf curl {' '.join(args)} exited {code}:\n{out.decode()}{err.decode()}"
    return code, out.decode(), err.decode()


def runner_headers(install: InstallHandle) -> tuple[str, ...]:
    return ("-H", f"x-runner-auth: {install.token}", "-H", f"x-install-id: {install.install_id}")


def url(app: Application, method: str = "") -> str:
    return f"http://127.0.0.1:{app.port}/{method}"


async def test_lists_services_and_methods(app: Application, buf: Path, empty_dir: Path) -> None:
    _, out, _ = await buf_curl(buf, empty_dir, "--list-services", url(app))
    services = set(out.split())
    assert {HOST, ADMIN, "grpc.health.v1.Health"} <= services
    assert any(s.startswith("grpc.reflection.") for s in services)

    _, out, _ = await buf_curl(buf, empty_dir, "--list-methods", url(app))
    methods = set(out.split())
    host_methods = {
        "CreateSchedule",
        "GetSchedule",
        "ListSchedules",
        "UpdateSchedule",
        "DeleteSchedule",
        "GetEndpoints",
        "PreviewSchedule",
    }
    admin_methods = {
        "UpsertInstall",
        "GetInstall",
        "DeleteInstall",
        "RunScheduleNow",
        "ListScheduleRuns",
    }
    assert {f"{HOST}/{m}" for m in host_methods} <= methods
    assert {f"{ADMIN}/{m}" for m in admin_methods} <= methods


async def test_list_schedules_and_get_endpoints(
    app: Application, stubs: Stubs, buf: Path, empty_dir: Path
) -> None:
    install = await register_install(stubs.admin)
    headers = runner_headers(install)
    ids = []
    for name in ("first", "second"):
        body = json.dumps({"schedule": {"endpoint": "POST /sync", "name": name, "cron": "@hourly"}})
        _, out, _ = await buf_curl(
            buf, empty_dir, *headers, "-d", body, url(app, f"{HOST}/CreateSchedule")
        )
        ids.append(json.loads(out)["schedule"]["id"])

    _, out, _ = await buf_curl(
        buf, empty_dir, *headers, "-d", '{"page_size": 1}', url(app, f"{HOST}/ListSchedules")
    )
    page: dict[str, Any] = json.loads(out)
    assert [s["id"] for s in page["schedules"]] == ids[:1]
    assert page["totalSize"] == 2
    assert page["nextPageToken"]
    body = json.dumps({"page_size": 1, "page_token": page["nextPageToken"]})
    _, out, _ = await buf_curl(
        buf, empty_dir, *headers, "-d", body, url(app, f"{HOST}/ListSchedules")
    )
    page = json.loads(out)
    assert [s["id"] for s in page["schedules"]] == ids[1:]
    assert page["schedules"][0]["endpoint"] == "POST /sync"
    assert "nextPageToken" not in page  # empty: the last page

    _, out, _ = await buf_curl(buf, empty_dir, *headers, url(app, f"{HOST}/GetEndpoints"))
    endpoints = {f"{e['method']} {e['path']}": e for e in json.loads(out)["endpoints"]}
    assert endpoints["POST /sync"]["schedulable"] is True
    assert "schedulable" not in endpoints["PUT /items"]  # false is omitted in JSON
    assert endpoints["PUT /items"]["unschedulableReason"]


async def test_errors_carry_their_details(
    app: Application, stubs: Stubs, buf: Path, empty_dir: Path
) -> None:
    install = await register_install(stubs.admin)
    wrong = InstallHandle(install.install_id, install.tenant_id, token="not-" + RUNNER_TOKEN)
    code, _, err = await buf_curl(
        buf, empty_dir, *runner_headers(wrong), url(app, f"{HOST}/ListSchedules"), check=False
    )
    assert code != 0
    error = json.loads(err)  # buf curl prints the error status as JSON on stderr
    assert error["code"] == "unauthenticated"
    details = {d["type"]: d["value"] for d in error["details"]}
    info = error_details_pb2.ErrorInfo()
    raw = details["google.rpc.ErrorInfo"]
    info.ParseFromString(base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_"))
    assert (info.reason, info.domain) == ("INVALID_TOKEN", "schedulerhost.v1")


async def test_health_check(app: Application, buf: Path, empty_dir: Path) -> None:
    _, out, _ = await buf_curl(buf, empty_dir, url(app, "grpc.health.v1.Health/Check"))
    assert json.loads(out) == {"status": "SERVING"}
