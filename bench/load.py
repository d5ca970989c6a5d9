"""The load generators and what one measurement point is.

Two generators, both outside the server's process:

- `h2load` (Debian nghttp2-client), a C HTTP/2 client, sends one pre-serialised gRPC frame per
  request. It cannot vary a request or chain two calls, so it drives every call whose request can
  repeat unchanged (reads, PreviewSchedule, the echo baseline).
- `py_client`, processes of grpc.aio stubs over one channel each, drives the mutations: an update
  must change something each time (else the service answers without writing), and a
  CreateSchedule+DeleteSchedule pair needs the created id.

h2load counts HTTP 200 even when the gRPC status is an error, so each h2load point is checked: a
gRPC error is a trailers-only answer without DATA, and the DATA bytes received must be exactly
requests x the length of the expected (OK) response frame.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import procstat

H2LOAD = "h2load"
# Most connections per point; concurrency above this is multiplexed as streams per connection,
# as a few Runner replicas, each with one gRPC channel, would call.
MAX_CONNECTIONS = 4


@dataclass
class LoadResult:
    """One measurement point: a workload at one concurrency for a fixed window."""

    name: str
    generator: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    generator_cpu: float  # cores the generator used on average during the window
    server_cpu: float  # cores the server process used on average during the window
    error_codes: dict[str, int] = field(default_factory=dict)
    note: str = ""
    # With several server processes (workers, a 2-process echo): the cores of each.
    server_cpu_split: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def grpc_frame(message: bytes) -> bytes:
    """The 5-byte gRPC prefix (uncompressed, big-endian length) and the message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def layout(concurrency: int, max_connections: int = MAX_CONNECTIONS) -> tuple[int, int]:
    """(connections, streams per connection) for a concurrency."""
    connections = min(concurrency, max_connections)
    return connections, max(1, concurrency // connections)


Pids = int | Sequence[int]


def _pids(server_pid: Pids) -> list[int]:
    return [server_pid] if isinstance(server_pid, int) else list(server_pid)


def _cpu_each(pids: Sequence[int]) -> list[float]:
    return [procstat.cpu_seconds(pid) for pid in pids]


# --------------------------------------------------------------------------------------------
# h2load
# --------------------------------------------------------------------------------------------

_FINISHED = re.compile(r"finished in [\d.]+s, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_DATA = re.compile(r"traffic: .*\((\d+)\) total, .*\((\d+)\) headers .*, .*\((\d+)\) data")


class H2LoadError(RuntimeError):
    pass


def _h2load_argv(
    address: str,
    path: str,
    body_file: Path,
    metadata: Sequence[tuple[str, str]],
    concurrency: int,
    seconds: float,
    log_file: Path | None,
    max_connections: int = MAX_CONNECTIONS,
) -> list[str]:
    connections, streams = layout(concurrency, max_connections)
    argv = [
        H2LOAD,
        "-D",
        f"{max(1, round(seconds * 1000))}ms",
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-t",
        "1",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        str(body_file),
    ]
    for key, value in metadata:
        argv += ["-H", f"{key}: {value}"]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    return [*argv, f"http://{address}{path}"]


def h2load(
    name: str,
    address: str,
    path: str,
    request: bytes,
    response: bytes,
    metadata: Sequence[tuple[str, str]],
    concurrency: int,
    *,
    seconds: float,
    warmup: float,
    server_pid: Pids,
    workdir: Path,
    max_connections: int = MAX_CONNECTIONS,
) -> LoadResult:
    """Run `path` with `request` at `concurrency` for `seconds` after a separate warm-up run.

    `response` is the serialised OK answer (as a stub received it); every answer must have its
    length, so that an answer with a gRPC error status is counted as an error. `server_pid` may
    name several processes (a group sharing a port): their CPU is added up, and each one's is
    kept in `server_cpu_split`. `max_connections` caps the connections (the rest of the
    concurrency is streams on them).
    """
    pids = _pids(server_pid)
    workdir.mkdir(parents=True, exist_ok=True)
    slug = f"{name}-c{concurrency}".replace(" ", "_").replace("/", "_")
    body_file = workdir / f"{slug}.req"
    body_file.write_bytes(grpc_frame(request))
    log_file = workdir / f"{slug}.log"
    log_file.unlink(missing_ok=True)  # h2load appends
    if warmup > 0:
        # A warm-up of its own: with --warm-up-time h2load counts warm-up bytes in its totals.
        subprocess.run(
            _h2load_argv(
                address, path, body_file, metadata, concurrency, warmup, None, max_connections
            ),
            check=True,
            capture_output=True,
        )
    argv = _h2load_argv(
        address, path, body_file, metadata, concurrency, seconds, log_file, max_connections
    )
    cpu_gen, cpu_before = procstat.children_cpu_seconds(), _cpu_each(pids)
    started = time.monotonic()
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    wall = time.monotonic() - started
    cpu_gen = procstat.children_cpu_seconds() - cpu_gen
    cpu_each = [after - before for after, before in zip(_cpu_each(pids), cpu_before, strict=True)]
    cpu_server = sum(cpu_each)
    (workdir / f"{slug}.out").write_text(done.stdout + done.stderr)
    finished, counts, data = (
        _FINISHED.search(done.stdout),
        _REQUESTS.search(done.stdout),
        _DATA.search(done.stdout),
    )
    if done.returncode != 0 or not (finished and counts and data):
        raise H2LoadError(f"h2load failed for {name} (exit {done.returncode}):\n{done.stdout}")
    rps = float(finished.group(1))
    total_done, succeeded = int(counts.group(3)), int(counts.group(4))
    data_bytes = int(data.group(3))
    frame = len(grpc_frame(response))
    # Requests whose answer carried no message: gRPC errors (HTTP 200, trailers only).
    grpc_errors = max(0, succeeded - data_bytes // frame) if frame else 0
    http_errors = total_done - succeeded
    latencies = [
        int(fields[2]) / 1000
        for line in log_file.read_text().splitlines()
        if len(fields := line.split("\t")) == 3 and fields[1] == "200"
    ]
    note = ""
    if data_bytes % frame:
        note = f"answers of unexpected length ({data_bytes} data bytes, frame {frame})"
    return LoadResult(
        name=name,
        generator="h2load",
        concurrency=concurrency,
        seconds=seconds,
        requests=succeeded - grpc_errors,
        errors=grpc_errors + http_errors,
        rps=rps * (1 - grpc_errors / succeeded) if succeeded else 0.0,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        generator_cpu=cpu_gen / wall,
        server_cpu=cpu_server / wall,
        error_codes={"grpc-error": grpc_errors, "http-error": http_errors}
        if grpc_errors or http_errors
        else {},
        note=note,
        server_cpu_split=[c / wall for c in cpu_each] if len(pids) > 1 else [],
    )


def h2load_available() -> bool:
    try:
        subprocess.run([H2LOAD, "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# py_client: processes of grpc.aio stubs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PyWorkload:
    """What the Python client processes do.

    kind "echo": `path` with `body`; "update": UpdateSchedule of (install, schedule) pairs, each
    call a new payload; "create_delete": CreateSchedule then DeleteSchedule of what it made, for
    each install in turn.
    """

    kind: str
    token: str
    installs: tuple[str, ...] = ()
    schedules: tuple[tuple[str, str], ...] = ()
    path: str = ""
    body: bytes = b""


HOST = "/schedulerhost.v1.SchedulerHost/"
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 1024 * 1024)]


def _metadata(token: str, install_id: str) -> tuple[tuple[str, str], ...]:
    return (("x-runner-auth", token), ("x-install-id", install_id))


class _Recorder:
    """Latencies (ms) of calls that started after the warm-up and ended inside the window."""

    def __init__(self, warmup: float, seconds: float) -> None:
        self.warmup, self.seconds = warmup, seconds
        self.begin = self.end = float("inf")
        self.cpu_at_begin: float | None = None

    def start(self) -> None:
        self.begin = time.monotonic() + self.warmup
        self.end = self.begin + self.seconds
        self.latencies: dict[str, list[float]] = {}
        self.errors: Counter[str] = Counter()

    def record(self, label: str, started: float, ended: float) -> None:
        if started >= self.begin and ended <= self.end:
            self.latencies.setdefault(label, []).append((ended - started) * 1000)


async def _drive(
    workload: PyWorkload,
    address: str,
    worker: int,
    workers: int,
    tasks: int,
    recorder: _Recorder,
    ready: Any,
    go: Any,
) -> None:
    import grpc
    from google.protobuf import field_mask_pb2, struct_pb2
    from schedulerhost.v1 import schedule_pb2
    from schedulerhost.v1 import scheduler_host_pb2 as pb

    async with grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        await channel.channel_ready()
        # Every process connected and imported: start together, warm up, then measure.
        ready.put(worker)
        await asyncio.to_thread(go.wait)
        recorder.start()

        async def mark_cpu() -> None:
            await asyncio.sleep(max(0.0, recorder.begin - time.monotonic()))
            recorder.cpu_at_begin = time.process_time()

        marker = asyncio.create_task(mark_cpu())
        create: Any = channel.unary_unary(HOST + "CreateSchedule")
        delete: Any = channel.unary_unary(HOST + "DeleteSchedule")
        update: Any = channel.unary_unary(HOST + "UpdateSchedule")
        generic: Any = channel.unary_unary(workload.path) if workload.path else None

        async def timed(label: str, call: Any, body: bytes, metadata: Any) -> bytes | None:
            started = time.monotonic()
            try:
                answer: bytes = await call(body, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as exc:
                if started >= recorder.begin:
                    recorder.errors[f"{label}:{exc.code().name}"] += 1
                return None
            recorder.record(label, started, time.monotonic())
            return answer

        async def echo_loop(_task: int) -> None:
            metadata = _metadata(workload.token, str(uuid.UUID(int=0)))
            while time.monotonic() < recorder.end:
                await timed("echo", generic, workload.body, metadata)

        async def update_loop(task: int) -> None:
            # Each task owns its own schedules: no two calls wait on one row lock.
            mine = workload.schedules[worker * tasks + task :: workers * tasks]
            n = 0
            while time.monotonic() < recorder.end:
                install_id, schedule_id = mine[n % len(mine)]
                n += 1
                payload = struct_pb2.Value()
                payload.struct_value.update({"n": n, "worker": worker, "task": task})
                body = pb.UpdateScheduleRequest(
                    schedule=schedule_pb2.Schedule(id=schedule_id, payload=payload),
                    update_mask=field_mask_pb2.FieldMask(paths=["payload"]),
                ).SerializeToString()
                await timed("UpdateSchedule", update, body, _metadata(workload.token, install_id))

        async def create_delete_loop(task: int) -> None:
            mine = workload.installs[worker * tasks + task :: workers * tasks]
            n = 0
            while time.monotonic() < recorder.end:
                install_id = mine[n % len(mine)]
                n += 1
                metadata = _metadata(workload.token, install_id)
                payload = struct_pb2.Value()
                payload.struct_value.update({"full": True, "n": n})
                body = pb.CreateScheduleRequest(
                    schedule=schedule_pb2.Schedule(
                        endpoint="POST /sync",
                        name=f"bench-{uuid.uuid4().hex[:12]}",
                        cron="*/15 * * * *",
                        timezone="Europe/Berlin",
                        payload=payload,
                    ),
                    request_id=str(uuid.uuid4()),
                ).SerializeToString()
                answer = await timed("CreateSchedule", create, body, metadata)
                if answer is None:
                    continue
                created = pb.CreateScheduleResponse.FromString(answer).schedule
                request = pb.DeleteScheduleRequest(id=created.id, etag=created.etag)
                await timed("DeleteSchedule", delete, request.SerializeToString(), metadata)

        loop = {"echo": echo_loop, "update": update_loop, "create_delete": create_delete_loop}[
            workload.kind
        ]
        await asyncio.gather(*(loop(t) for t in range(tasks)))
        await marker


def _worker_main(
    workload: PyWorkload,
    address: str,
    worker: int,
    workers: int,
    tasks: int,
    warmup: float,
    seconds: float,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    recorder = _Recorder(warmup, seconds)
    asyncio.run(_drive(workload, address, worker, workers, tasks, recorder, ready, go))
    began = recorder.cpu_at_begin
    used = time.process_time() - began if began is not None else 0.0
    results.put(
        json.dumps({"latencies": recorder.latencies, "errors": recorder.errors, "cpu": used})
    )


def py_client(
    name: str,
    address: str,
    workload: PyWorkload,
    concurrency: int,
    *,
    seconds: float,
    warmup: float,
    server_pid: Pids,
) -> dict[str, LoadResult]:
    """Run `workload` at `concurrency` (spread over up to MAX_CONNECTIONS processes, one channel
    each); a LoadResult per call label ("CreateSchedule", ...), and `name` for all calls."""
    processes, tasks = layout(concurrency)
    ctx = multiprocessing.get_context("spawn")  # grpc does not survive fork
    ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker_main,
            args=(workload, address, w, processes, tasks, warmup, seconds, ready, go, results),
        )
        for w in range(processes)
    ]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            ready.get(timeout=120)
    except BaseException:
        for w in workers:
            w.kill()
        raise
    go.set()
    time.sleep(warmup)
    pids = _pids(server_pid)
    cpu_server = procstat.total_cpu_seconds(pids)
    time.sleep(seconds)
    cpu_server = procstat.total_cpu_seconds(pids) - cpu_server
    outcomes = [json.loads(results.get(timeout=seconds + warmup + 120)) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    latencies: dict[str, list[float]] = {}
    errors: Counter[str] = Counter()
    for outcome in outcomes:
        for label, values in outcome["latencies"].items():
            latencies.setdefault(label, []).extend(values)
        errors.update(outcome["errors"])
    generator_cpu = sum(o["cpu"] for o in outcomes) / seconds
    generator = f"py-client ({processes} proc x {tasks} tasks)"

    def result(label: str, values: list[float], failed: int) -> LoadResult:
        return LoadResult(
            name=label,
            generator=generator,
            concurrency=concurrency,
            seconds=seconds,
            requests=len(values),
            errors=failed,
            rps=len(values) / seconds,
            p50_ms=percentile(values, 50),
            p99_ms=percentile(values, 99),
            generator_cpu=generator_cpu,
            server_cpu=cpu_server / seconds,
            error_codes={k: v for k, v in errors.items() if k.startswith(label)},
        )

    out = {
        label: result(label, values, sum(v for k, v in errors.items() if k.startswith(label)))
        for label, values in latencies.items()
    }
    every = [v for values in latencies.values() for v in values]
    out[name] = result(name, every, sum(errors.values()))
    out[name].error_codes = dict(errors)
    return out


def h2load_background(
    address: str,
    path: str,
    request: bytes,
    metadata: Sequence[tuple[str, str]],
    concurrency: int,
    seconds: float,
    workdir: Path,
) -> subprocess.Popen[bytes]:
    """h2load running `seconds` in the background (load for a profiler); the caller waits."""
    workdir.mkdir(parents=True, exist_ok=True)
    body_file = workdir / "background.req"
    body_file.write_bytes(grpc_frame(request))
    argv = _h2load_argv(address, path, body_file, metadata, concurrency, seconds, None)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
