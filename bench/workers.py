"""Workers: `scheduler-host serve --workers 2` against a 2-process echo, at c=64.

Four servers, each measured while the others idle: the echo server alone and twice on one port
(`bench/echo_server.py --reuseport`, SO_REUSEPORT as the workers set it), the API part's
`scheduler-host serve` (one process) and `scheduler-host serve --workers 2` on the same database
(the same fixture). GetSchedule and GetEndpoints are driven by h2load at c=64 over CONNECTIONS
connections: the kernel gives each new connection to one of the processes sharing the port (a
hash of its addresses), so with few connections one process could get most of them; 16 keep the
split near even, and each point records each process's CPU to show it. Ratios compare each
service with the echo of as many processes.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schedulerhost.v1 import scheduler_host_pb2 as pb

from bench import load, procstat, service
from bench.echo_server import PATH as ECHO_PATH
from tests.support.server import ServerProcess, free_port

WORKERS = 2
CONCURRENCY = 64
CONNECTIONS = 16
CALLS = ("GetSchedule", "GetEndpoints")
START_TIMEOUT = 90.0


@dataclass
class WorkersResult:
    workers: int
    concurrency: int
    connections: int
    streams: int
    points: list[dict[str, Any]] = field(default_factory=list)  # LoadResult.to_json()
    peak_mib: dict[str, list[float]] = field(default_factory=dict)  # per process

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def label(name: str, processes: int) -> str:
    """The point's name: "echo x2", "GetSchedule x1", ..."""
    return f"{name} x{processes}"


@contextmanager
def echo_group(processes: int) -> Iterator[tuple[str, list[int]]]:
    """`processes` echo servers on one port (SO_REUSEPORT when more than one): the address and
    their pids."""
    port = free_port()
    reuse = ["--reuseport"] if processes > 1 else []
    servers: list[subprocess.Popen[str]] = []
    try:
        for _ in range(processes):
            server = subprocess.Popen(
                [sys.executable, "-m", "bench.echo_server", str(port), *reuse],
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(server)
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError("an echo server did not start")
        yield f"127.0.0.1:{port}", [s.pid for s in servers]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)


def start_workers(
    database_url: str, log_path: Path, workers: int
) -> tuple[ServerProcess, list[int]]:
    """`scheduler-host serve --workers N` (its supervisor) and the pids of its N workers, once
    every worker listens."""
    group = service.start_server(database_url, log_path, args=("serve", "--workers", str(workers)))
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            pids = procstat.children_of(group.process.pid)
            if len(pids) == workers and group.log().count("listening on") >= workers:
                return group, pids
            if time.monotonic() > deadline or group.process.poll() is not None:
                raise RuntimeError(f"the workers did not all start:\n{group.log()}")
            time.sleep(0.2)
    except BaseException:
        group.stop()
        raise


def _echo_points(
    processes: int, seconds: float, warmup: float, workdir: Path
) -> tuple[load.LoadResult, list[float]]:
    with echo_group(processes) as (address, pids):
        body = pb.GetScheduleRequest(id=str(uuid.uuid4())).SerializeToString()
        metadata = (("x-runner-auth", "bench"), ("x-install-id", str(uuid.uuid4())))
        answer = service.expected_answer(address, ECHO_PATH, body, metadata)
        point = load.h2load(
            label("echo", processes),
            address,
            ECHO_PATH,
            body,
            answer,
            metadata,
            CONCURRENCY,
            seconds=seconds,
            warmup=warmup,
            server_pid=pids,
            workdir=workdir,
            max_connections=CONNECTIONS,
        )
        return point, [procstat.peak_rss_mib(pid) for pid in pids]


def _service_points(
    address: str,
    pids: list[int],
    processes: int,
    fixture: service.Fixture,
    seconds: float,
    warmup: float,
    workdir: Path,
) -> list[load.LoadResult]:
    points = []
    for call in service.read_calls(fixture):
        if call.name in CALLS:
            points += service.measure_read(
                call,
                address,
                (CONCURRENCY,),
                seconds=seconds,
                warmup=warmup,
                server_pid=pids,
                workdir=workdir,
                label=label(call.name, processes),
                max_connections=CONNECTIONS,
            )
    return points


def measure(
    single: ServerProcess,
    fixture: service.Fixture,
    database_url: str,
    log_path: Path,
    *,
    seconds: float,
    warmup: float,
    workdir: Path,
) -> WorkersResult:
    """The echo with 1 and WORKERS processes, `single` (a one-process `serve` holding
    `fixture`) and `serve --workers WORKERS` on the same database, one after the other."""
    connections, streams = load.layout(CONCURRENCY, CONNECTIONS)
    result = WorkersResult(WORKERS, CONCURRENCY, connections, streams)
    points: list[load.LoadResult] = []
    for processes in (1, WORKERS):
        point, peaks = _echo_points(processes, seconds, warmup, workdir)
        points.append(point)
        result.peak_mib[label("echo", processes)] = peaks
    pid = single.process.pid
    points += _service_points(single.target, [pid], 1, fixture, seconds, warmup, workdir)
    result.peak_mib[label("serve", 1)] = [procstat.peak_rss_mib(pid)]
    group, pids = start_workers(database_url, log_path, WORKERS)
    try:
        points += _service_points(
            group.target, [group.process.pid, *pids], WORKERS, fixture, seconds, warmup, workdir
        )
        result.peak_mib[label("serve", WORKERS)] = [procstat.peak_rss_mib(p) for p in pids]
    finally:
        group.stop()
    for point in points:
        if len(point.server_cpu_split) > WORKERS:
            point.server_cpu_split = point.server_cpu_split[1:]  # the supervisor, idle
    result.points = [p.to_json() for p in points]
    return result
