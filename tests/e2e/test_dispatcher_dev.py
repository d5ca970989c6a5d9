"""`scheduler-host dev` on the embedded PostgreSQL: its stand-in Runner receives and logs a run
made with RunScheduleNow, and stopping it stops that PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import psutil
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb

from scheduler_host.dev import DEMO_INSTALL_ID, DEMO_TENANT
from tests.support.server import (
    RUNNER_TOKEN,
    Stubs,
    admin_metadata,
    spawn_server,
    wait_until_serving,
)


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """The PostgreSQL server processes serving `data_dir`."""
    found = []
    for process in psutil.process_iter(attrs=["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(data_dir) in " ".join(
            process.info["cmdline"] or ()
        ):
            found.append(process)
    return found


async def test_dev_runs_a_schedule_now_on_its_stand_in_runner(tmp_path: Path) -> None:
    # No database URL: dev runs on the embedded PostgreSQL, here in a directory of the test's.
    server = spawn_server(
        "",
        tmp_path / "dev.log",
        args=("dev",),
        SCHEDULER_HOST_EMBEDDED_DATA_DIR=str(tmp_path / "pgdata"),
    )
    try:
        await asyncio.to_thread(wait_until_serving, server)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = Stubs(channel)
            metadata = (("x-runner-auth", RUNNER_TOKEN), ("x-install-id", str(DEMO_INSTALL_ID)))
            created = await stubs.host.CreateSchedule(
                pb.CreateScheduleRequest(
                    schedule=schedule_pb2.Schedule(endpoint="POST /sync", cron="*/5 * * * *")
                ),
                metadata=metadata,
            )
            reply = await stubs.admin.RunScheduleNow(
                admin_pb.RunScheduleNowRequest(
                    install_id=str(DEMO_INSTALL_ID), schedule_id=created.schedule.id
                ),
                metadata=admin_metadata(),
            )
    finally:
        server.stop()
    assert not postgres_processes(tmp_path / "pgdata"), "the embedded PostgreSQL kept running"
    assert reply.run.status == schedule_pb2.RUN_STATE_SUCCESS
    assert reply.run.trigger == schedule_pb2.RUN_TRIGGER_MANUAL
    log = server.log()
    assert "stand-in Runner http://127.0.0.1:" in log
    assert (
        f"runner stand-in: execute POST /sync for tenant {DEMO_TENANT} install {DEMO_INSTALL_ID}"
        in log
    )
    assert f"schedule {created.schedule.id} (trigger manual" in log
