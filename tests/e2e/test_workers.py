"""`scheduler-host serve --workers N`: processes sharing one port, each answering calls and
serving its own metrics, all stopped by one SIGTERM."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_admin_pb2_grpc, scheduler_host_pb2_grpc
from schedulerhost.v1 import scheduler_host_pb2 as pb

from tests.support.server import (
    RUNNER_TOKEN,
    admin_metadata,
    free_port,
    install_message,
    spawn_server,
    wait_until_serving,
)


def calls_answered(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("extension_scheduler_api_calls_total{")
    )


def test_two_workers_share_the_port_and_stop_together(
    e2e_database_url: str, tmp_path: Path
) -> None:
    metrics = free_port()
    group = spawn_server(
        e2e_database_url,
        tmp_path / "group.log",
        args=("serve", "--migrate", "--workers", "2"),
        SCHEDULER_HOST_METRICS_LISTEN=f"127.0.0.1:{metrics}",
    )
    try:
        wait_until_serving(group)
        workers = psutil.Process(group.process.pid).children()
        assert len(workers) == 2, group.log()
        install = install_message()
        with grpc.insecure_channel(group.target) as channel:
            scheduler_admin_pb2_grpc.SchedulerAdminStub(channel).UpsertInstall(
                admin_pb.UpsertInstallRequest(install=install),
                metadata=admin_metadata(),
            )
        metadata = (("x-runner-auth", RUNNER_TOKEN), ("x-install-id", install.install_id))
        # The kernel spreads connections (not calls) over the workers: use many connections.
        for n in range(40):
            options = [("grpc.use_local_subchannel_pool", 1), ("grpc.primary_user_agent", str(n))]
            with grpc.insecure_channel(group.target, options=options) as channel:
                scheduler_host_pb2_grpc.SchedulerHostStub(channel).GetEndpoints(
                    pb.GetEndpointsRequest(), metadata=metadata, timeout=5
                )
        answered = [calls_answered(metrics), calls_answered(metrics + 1)]
        assert all(a > 0 for a in answered), answered
        assert sum(answered) >= 40, answered
        group.process.send_signal(signal.SIGTERM)
        code = group.process.wait(30)
    finally:
        group.stop()
    assert code == 0, group.log()
    time.sleep(0.2)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
    assert "Traceback" not in group.log()


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    group = spawn_server(
        "postgresql://postgres@127.0.0.1:1/none",
        tmp_path / "zero.log",
        args=("serve", "--workers", "2"),
        SCHEDULER_HOST_LISTEN="127.0.0.1:0",
    )
    code = group.process.wait(30)
    assert code == 2, group.log()
    assert "SCHEDULER_HOST_LISTEN" in group.log(), group.log()
