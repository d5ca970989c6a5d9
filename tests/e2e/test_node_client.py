"""The generated Node.js client (clients/node: ts-proto + @grpc/grpc-js) against the real server.

`npm ci` runs in clients/node when its node_modules do not match package-lock.json (a stamp file
records the lockfile's hash), so a second run costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from scheduler_host.app import Application
from tests.support.server import ADMIN_TOKEN, RUNNER_TOKEN

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node"
STAMP = NODE_CLIENT / "node_modules" / ".lockfile-sha256"
STEPS = (
    "admin.upsertInstall",
    "getEndpoints",
    "createSchedule",
    "getSchedule",
    "listSchedules",
    "updateSchedule",
    "updateSchedule.staleEtag",
    "previewSchedule",
    "oneTimeSchedule",
    "deleteSchedule",
    "errorDetails",
    "unauthenticated",
    "admin.deleteInstall",
)


def npm_ci(directory: Path, stamp: Path) -> None:
    """`npm ci` in `directory` unless its node_modules were installed from this very lockfile."""
    digest = hashlib.sha256((directory / "package-lock.json").read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return
    npm = shutil.which("npm")
    assert npm, "npm is required (Node.js 18+ with npm)"
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"npm ci failed in {directory}:\n{done.stdout}\n{done.stderr}"
    stamp.write_text(digest + "\n")


@pytest.fixture(scope="module")
def node_client() -> Path:
    npm_ci(NODE_CLIENT, STAMP)
    if not (ROOT / "node_modules" / ".bin" / "buf").exists():  # the repository's buf
        npm_ci(ROOT, ROOT / "node_modules" / ".lockfile-sha256")
    return NODE_CLIENT


async def run_node(*args: str, cwd: Path, limit_seconds: float = 120) -> tuple[int, str, str]:
    """Run node without blocking the event loop: the in-process server must keep answering."""
    node = shutil.which("node")
    assert node, "node is required"
    process = await asyncio.create_subprocess_exec(
        node,
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), limit_seconds)
    return int(process.returncode or 0), out.decode(), err.decode()


async def test_node_client_against_the_real_server(app: Application, node_client: Path) -> None:
    install_id = str(uuid.uuid4())
    code, out, err = await run_node(
        "test/e2e.mjs",
        "--address",
        f"127.0.0.1:{app.port}",
        "--runner-token",
        RUNNER_TOKEN,
        "--admin-token",
        ADMIN_TOKEN,
        "--install-id",
        install_id,
        cwd=node_client,
    )
    assert code == 0, f"node e2e failed ({code}):\n{out}\n{err}"
    lines = out.strip().splitlines()
    done = [line.split()[1] for line in lines if line.startswith("ok ")]
    assert done == list(STEPS), out
    summary = json.loads(lines[-1])
    assert summary == {
        "result": "passed",
        "installId": install_id,
        "created": 3,
        "validationReason": "VALIDATION_FAILED",
        "violations": {
            "schedule.cron": "CRON_TOO_FREQUENT",
            "schedule.timezone": "TIMEZONE_INVALID",
            "schedule.endpoint": "ENDPOINT_NOT_FOUND",
        },
    }


async def test_node_client_fails_loudly(node_client: Path) -> None:
    """A wrong address makes the script exit non-zero, so CI cannot pass by accident."""
    code, _out, err = await run_node(
        "test/e2e.mjs",
        "--address",
        "127.0.0.1:1",
        "--runner-token",
        RUNNER_TOKEN,
        "--admin-token",
        ADMIN_TOKEN,
        cwd=node_client,
    )
    assert code == 1
    assert "FAILED" in err
    assert "UNAVAILABLE" in err


async def test_node_generated_code_is_fresh(node_client: Path) -> None:
    """clients/node/generated/ is what generate.sh makes from protos/ today."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(node_client / "generate.sh"),
        "--check",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, out.decode()
