"""The real server for end-to-end tests: in-process on a loopback port, or as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_admin_pb2_grpc, scheduler_host_pb2_grpc

RUNNER_TOKEN = "test-runner-token-1"
SECOND_RUNNER_TOKEN = "test-runner-token-2"
ADMIN_TOKEN = "test-admin-token"
CAPABILITY = "cap:scheduler.manage"

DEFAULT_ENDPOINTS = (
    ("POST", "/sync", "sync"),
    ("GET", "/status", "status"),
    ("GET", "/report", "report_get"),
    ("POST", "/report", "report_post"),
    ("PUT", "/items", "put_items"),
    ("GET", "/items/{id}", "get_item"),
    ("POST", "/users/:id", "post_user"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_metadata(token: str = ADMIN_TOKEN) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class InstallHandle:
    """An install registered through SchedulerAdmin, with the metadata its Runner sends."""

    install_id: str
    tenant_id: str
    version_id: str = "v1"
    token: str = RUNNER_TOKEN

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-runner-auth", self.token), ("x-install-id", self.install_id))


def install_message(
    install_id: str | None = None,
    *,
    tenant_id: str | None = None,
    version_id: str = "v1",
    endpoints: tuple[tuple[str, str, str], ...] = DEFAULT_ENDPOINTS,
    capabilities: tuple[str, ...] = (CAPABILITY,),
    enabled: bool = True,
) -> admin_pb.Install:
    return admin_pb.Install(
        install_id=install_id or str(uuid.uuid4()),
        tenant_id=tenant_id or f"tenant-{uuid.uuid4().hex[:8]}",
        registry_id="registry-ext",
        version_id=version_id,
        content_hash="sha256:abc",
        enabled=enabled,
        granted_capabilities=list(capabilities),
        endpoints=[admin_pb.EndpointSpec(method=m, path=p, handler=h) for m, p, h in endpoints],
    )


async def register_install(
    admin: scheduler_admin_pb2_grpc.SchedulerAdminAsyncStub, **kwargs: object
) -> InstallHandle:
    msg = install_message(**kwargs)  # type: ignore[arg-type]
    await admin.UpsertInstall(admin_pb.UpsertInstallRequest(install=msg), metadata=admin_metadata())
    return InstallHandle(msg.install_id, msg.tenant_id, msg.version_id)


@dataclass
class Stubs:
    channel: grpc.aio.Channel
    host: scheduler_host_pb2_grpc.SchedulerHostAsyncStub = field(init=False)
    admin: scheduler_admin_pb2_grpc.SchedulerAdminAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.host = scheduler_host_pb2_grpc.SchedulerHostStub(self.channel)
        self.admin = scheduler_admin_pb2_grpc.SchedulerAdminStub(self.channel)


def server_env(database_url: str, port: int, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_HOST_")}
    env.update(
        {
            "SCHEDULER_HOST_DATABASE_URL": database_url,
            "SCHEDULER_HOST_LISTEN": f"127.0.0.1:{port}",
            "SCHEDULER_HOST_RUNNER_TOKENS": f"{RUNNER_TOKEN},{SECOND_RUNNER_TOKEN}",
            "SCHEDULER_HOST_ADMIN_TOKEN": ADMIN_TOKEN,
            "SCHEDULER_HOST_ENV": "test",
            # Tests that want runs turn the dispatcher on; others must not see schedules change.
            "SCHEDULER_HOST_DISPATCHER": "false",
        }
    )
    env.update(overrides)
    return env


@dataclass
class ServerProcess:
    """`scheduler-host serve` in its own process, as an operator would run it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def spawn_server(
    database_url: str,
    log_path: Path,
    *,
    args: tuple[str, ...] = ("serve",),
    host: str = "127.0.0.1",
    **env: str,
) -> ServerProcess:
    """The server on a free port of `host` (calls go to it through 127.0.0.1)."""
    port = free_port()
    env = {"SCHEDULER_HOST_LISTEN": f"{host}:{port}", **env}
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler_host.cli", *args],
        env=server_env(database_url, port, **env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return ServerProcess(process, port, log_path)


def wait_until_serving(server: ServerProcess, timeout: float = 30) -> None:
    """Block until the health service answers SERVING, or fail with the server's log."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{server.log()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"server did not become ready:\n{server.log()}")
