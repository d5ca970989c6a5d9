"""`scheduler-host serve` on PostgreSQL under load: its set-up data and the API workloads.

The server is the real command in its own process (tests.support.server.spawn_server), with the
mutation rate limit raised so that the limiter's database work is measured, not its refusals, and
the per-process read limit raised so that reads are not refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_host_pb2 as pb

from bench import load
from tests.support.server import (
    RUNNER_TOKEN,
    InstallHandle,
    ServerProcess,
    Stubs,
    register_install,
    spawn_server,
    wait_until_serving,
)

HOST = "/schedulerhost.v1.SchedulerHost/"
RATE_LIMIT_PER_MINUTE = "1000000"
READ_LIMIT_PER_MINUTE = "100000000"
PAGE_SIZE = 50
# Installs the mutations spread over (each a Runner's install), and schedules updated per install.
MUTATION_INSTALLS = 128
UPDATE_SCHEDULES_PER_INSTALL = 2

Metadata = tuple[tuple[str, str], ...]


def start_server(
    database_url: str,
    log_path: Path,
    args: tuple[str, ...] = ("serve", "--migrate"),
    **env: str,
) -> ServerProcess:
    """`scheduler-host serve --migrate` (or `args`) on `database_url`; returns once health says
    SERVING."""
    server = spawn_server(
        database_url,
        log_path,
        args=args,
        SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE=RATE_LIMIT_PER_MINUTE,
        SCHEDULER_HOST_READ_LIMIT_PER_MINUTE=READ_LIMIT_PER_MINUTE,
        **env,
    )
    try:
        wait_until_serving(server, timeout=90)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass(frozen=True)
class Fixture:
    """What the workloads call: one install read from, and installs that are changed."""

    reader: InstallHandle
    read_schedule_id: str
    update_targets: tuple[tuple[str, str], ...]  # (install id, schedule id)
    create_installs: tuple[str, ...]


def new_schedule(index: int) -> schedule_pb2.Schedule:
    payload = struct_pb2.Value()
    payload.struct_value.update({"full": True, "batch": index})
    return schedule_pb2.Schedule(
        endpoint="POST /sync",
        name=f"bench-{index:03d}",
        cron=f"{index % 60} */2 * * *",
        timezone="Europe/Berlin",
        payload=payload,
    )


async def _create(stubs: Stubs, install: InstallHandle, count: int) -> list[str]:
    ids = []
    host: Any = stubs.host  # grpc.aio stubs; the generated stubs are typed for the sync API
    for index in range(count):
        reply = await host.CreateSchedule(
            pb.CreateScheduleRequest(schedule=new_schedule(index), request_id=str(uuid.uuid4())),
            metadata=install.metadata,
        )
        ids.append(reply.schedule.id)
    return ids


async def prepare(address: str) -> Fixture:
    """Register installs through SchedulerAdmin and create their schedules through the API."""
    async with grpc.aio.insecure_channel(address) as channel:
        stubs = Stubs(channel)
        reader = await register_install(stubs.admin)
        read_ids = await _create(stubs, reader, PAGE_SIZE)
        updaters = await asyncio.gather(
            *(register_install(stubs.admin) for _ in range(MUTATION_INSTALLS))
        )
        creators = await asyncio.gather(
            *(register_install(stubs.admin) for _ in range(MUTATION_INSTALLS))
        )
        made = await asyncio.gather(
            *(_create(stubs, i, UPDATE_SCHEDULES_PER_INSTALL) for i in updaters)
        )
    targets = tuple(
        (install.install_id, sid)
        for install, ids in zip(updaters, made, strict=True)
        for sid in ids
    )
    return Fixture(
        reader=reader,
        read_schedule_id=read_ids[0],
        update_targets=targets,
        create_installs=tuple(i.install_id for i in creators),
    )


@dataclass(frozen=True)
class ReadCall:
    """A call h2load repeats unchanged: its method, request bytes and metadata."""

    name: str
    path: str
    request: bytes
    metadata: Metadata


PREVIEW_START = datetime(2026, 3, 1, tzinfo=UTC)


def read_calls(fixture: Fixture) -> list[ReadCall]:
    md = fixture.reader.metadata
    start = timestamp_pb2.Timestamp()
    start.FromDatetime(PREVIEW_START)
    return [
        ReadCall(
            "GetSchedule",
            HOST + "GetSchedule",
            pb.GetScheduleRequest(id=fixture.read_schedule_id).SerializeToString(),
            md,
        ),
        ReadCall(
            "ListSchedules",
            HOST + "ListSchedules",
            pb.ListSchedulesRequest(page_size=PAGE_SIZE).SerializeToString(),
            md,
        ),
        ReadCall(
            "GetEndpoints", HOST + "GetEndpoints", pb.GetEndpointsRequest().SerializeToString(), md
        ),
        ReadCall(
            "PreviewSchedule",
            HOST + "PreviewSchedule",
            pb.PreviewScheduleRequest(
                cron="30 2 * * *", timezone="America/New_York", count=10, start_time=start
            ).SerializeToString(),
            md,
        ),
    ]


async def _answer(address: str, path: str, request: bytes, metadata: Metadata) -> bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        call: Any = channel.unary_unary(path)
        answer: bytes = await call(request, metadata=metadata, timeout=30)
        return answer


def expected_answer(address: str, path: str, request: bytes, metadata: Metadata) -> bytes:
    """The answer a grpc stub gets for the exact bytes h2load will send; raises unless it is OK."""
    return asyncio.run(_answer(address, path, request, metadata))


def check_list_page(answer: bytes) -> None:
    page = pb.ListSchedulesResponse.FromString(answer)
    if len(page.schedules) != PAGE_SIZE:
        raise RuntimeError(f"ListSchedules answered {len(page.schedules)} schedules, not 50")


def measure_read(
    call: ReadCall,
    address: str,
    concurrencies: Sequence[int],
    *,
    seconds: float,
    warmup: float,
    server_pid: load.Pids,
    workdir: Path,
    label: str = "",
    max_connections: int = load.MAX_CONNECTIONS,
) -> list[load.LoadResult]:
    answer = expected_answer(address, call.path, call.request, call.metadata)
    if call.name == "ListSchedules":
        check_list_page(answer)
    return [
        load.h2load(
            label or call.name,
            address,
            call.path,
            call.request,
            answer,
            call.metadata,
            c,
            seconds=seconds,
            warmup=warmup,
            server_pid=server_pid,
            workdir=workdir,
            max_connections=max_connections,
        )
        for c in concurrencies
    ]


def mutation_workloads(fixture: Fixture) -> dict[str, load.PyWorkload]:
    return {
        "CreateSchedule+DeleteSchedule": load.PyWorkload(
            kind="create_delete", token=RUNNER_TOKEN, installs=fixture.create_installs
        ),
        "UpdateSchedule": load.PyWorkload(
            kind="update", token=RUNNER_TOKEN, schedules=fixture.update_targets
        ),
    }
