"""`python -m soak --seconds 60`: the soak run; see the package docstring.

Set-up: a scratch database on the test PostgreSQL (tests/support/postgres.py: the configured or
local server, else a throwaway cluster), a Runner stand-in on loopback, `--processes` servers
(`scheduler-host serve`, dispatcher on, fast poll), `--installs` installs with a few schedules
each (a few "hot" installs start near their quota). Load: `--clients` concurrent clients calling
create, update, delete, list, get and GetEndpoints without pause. Runs: schedules with
`* * * * *` (the minimum interval is lowered to 60 s) fire at each minute, and every 2 s some
schedules are made due at once with SQL. Memory: VmRSS of each server after `--warmup` seconds
and at the end of the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo

import grpc
import sqlalchemy as sa
from google.protobuf import struct_pb2
from schedulerhost.v1 import schedule_pb2, scheduler_host_pb2_grpc
from schedulerhost.v1 import scheduler_host_pb2 as pb
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from scheduler_host.domain.cron import parse_cron
from scheduler_host.domain.endpoints import endpoint_id
from scheduler_host.domain.occurrences import next_occurrence
from scheduler_host.domain.runs import RunTrigger
from scheduler_host.domain.schedule import Schedule
from scheduler_host.runner_standin import Execution, Reply
from scheduler_host.service.dispatch import RUN_HISTORY_LIMIT, idempotency_key
from tests.support.grpc_status_details import failure_of
from tests.support.postgres import postgres_server, scratch_database
from tests.support.runner_standin import RecordingRunner
from tests.support.server import (
    InstallHandle,
    ServerProcess,
    Stubs,
    register_install,
    spawn_server,
    wait_until_serving,
)
from tests.support.storage import Db, connect, insert_schedule

QUOTA = 50
HOT_INSTALLS = 10
HOT_SEED = 45  # schedules a hot install starts with: its creates meet the quota
SEED = 4
MEMORY_GROWTH_LIMIT = 0.10
CALL_TIMEOUT = 10.0
FORCE_EVERY_SECONDS = 2.0
FORCE_BATCH = 30
# Every minute (allowed: the soak lowers the minimum interval to 60 s), and some slower ones.
CRONS = ("* * * * *", "* * * * *", "*/5 * * * *", "0 * * * *", "30 2 * * *", "0 0 1 1 *")
# Answers the load may get: anything else fails the soak.
EXPECTED = {
    ("OK", ""),
    ("RESOURCE_EXHAUSTED", "SCHEDULE_QUOTA_EXCEEDED"),
    ("RESOURCE_EXHAUSTED", "RATE_LIMITED"),
    ("NOT_FOUND", "SCHEDULE_NOT_FOUND"),  # a schedule another client deleted
    ("ABORTED", "ETAG_MISMATCH"),  # an update with an etag another client made stale
}

_started = time.monotonic()


def say(message: str) -> None:
    print(f"[soak {time.monotonic() - _started:6.1f} s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    seconds: float
    installs: int
    clients: int
    processes: int
    warmup: float
    rate_limit: int
    seed: int


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60, help="length of the load (60)")
    parser.add_argument("--installs", type=int, default=200, help="installs (200)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--processes", type=int, default=2, help="server processes (2)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the memory baseline (a third of the run, at least 20 s or half "
        "of a shorter run, at most 60 s)",
    )
    parser.add_argument(
        "--rate-limit", type=int, default=120, help="mutating calls per install per minute (120)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the load (1)")
    args = parser.parse_args(argv)
    # The first seconds fill caches, the connection pools and the allocator's arenas.
    default_warmup = min(max(args.seconds / 3, min(20, args.seconds / 2)), 60)
    warmup = args.warmup if args.warmup is not None else default_warmup
    if args.installs <= HOT_INSTALLS:
        parser.error(f"--installs must be more than {HOT_INSTALLS}")
    return Options(
        args.seconds,
        args.installs,
        args.clients,
        args.processes,
        warmup,
        args.rate_limit,
        args.seed,
    )


# --------------------------------------------------------------------------------------------
# The Runner stand-in
# --------------------------------------------------------------------------------------------


@dataclass
class Deliveries:
    """Every Runner call by idempotency key: the schedule and the HTTP status answered."""

    by_key: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    schedule_of: dict[str, str] = field(default_factory=dict)


def flaky(key: str) -> bool:
    """One key in twenty fails its first call (HTTP 503): the dispatcher retries it."""
    return hashlib.sha256(key.encode()).digest()[0] % 20 == 0


def make_runner(deliveries: Deliveries, rng: random.Random) -> RecordingRunner:
    runner = RecordingRunner()

    async def respond(execution: Execution) -> Reply:
        key = execution.idempotency_key
        await asyncio.sleep(rng.uniform(0, 0.05))
        status = 503 if flaky(key) and not deliveries.by_key[key] else 200
        deliveries.by_key[key].append(status)
        deliveries.schedule_of[key] = execution.schedule_id
        # The executions list would only grow: the soak keeps its own summary.
        runner.executions.clear()
        return Reply() if status == 200 else Reply(status, b'{"error":"try again"}')

    runner.default = respond
    return runner


# --------------------------------------------------------------------------------------------
# Servers and memory
# --------------------------------------------------------------------------------------------


def server_env(runner_url: str, opts: Options) -> dict[str, str]:
    return {
        "SCHEDULER_HOST_DISPATCHER": "true",
        "SCHEDULER_HOST_DISPATCH_POLL_SECONDS": "0.2",
        "SCHEDULER_HOST_RUNNER_BASE_URL": runner_url,
        "SCHEDULER_HOST_RUNNER_TIMEOUT_SECONDS": "5",
        "SCHEDULER_HOST_RUNNER_RETRY_BASE_SECONDS": "0.1",
        "SCHEDULER_HOST_MIN_INTERVAL_SECONDS": "60",
        "SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE": str(opts.rate_limit),
        "SCHEDULER_HOST_SHUTDOWN_GRACE_SECONDS": "5",
        # One line per RPC at info would make the log the largest cost; errors still show.
        "SCHEDULER_HOST_LOG_LEVEL": "warning",
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextlib.asynccontextmanager
async def running_servers(
    url: str, opts: Options, runner_url: str, logs: Path
) -> AsyncIterator[list[ServerProcess]]:
    """The servers; waits and stops run in threads, so the Runner stand-in keeps answering."""
    env = server_env(runner_url, opts)
    servers: list[ServerProcess] = []
    try:
        first = spawn_server(url, logs / "server-0.log", args=("serve", "--migrate"), **env)
        servers.append(first)
        await asyncio.to_thread(wait_until_serving, first, 60)
        for n in range(1, opts.processes):
            servers.append(spawn_server(url, logs / f"server-{n}.log", args=("serve",), **env))
        for server in servers[1:]:
            await asyncio.to_thread(wait_until_serving, server, 60)
        yield servers
    finally:
        await stop_servers(servers)


async def stop_servers(servers: list[ServerProcess]) -> list[int]:
    return list(await asyncio.gather(*(asyncio.to_thread(s.stop, 30) for s in servers)))


# --------------------------------------------------------------------------------------------
# The load
# --------------------------------------------------------------------------------------------


@dataclass
class Call:
    op: str
    code: str
    reason: str
    seconds: float


@dataclass
class Load:
    installs: list[InstallHandle]
    hot: list[InstallHandle]
    known: dict[str, list[str]]  # install id -> schedule ids it may have
    etags: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)


def payload_data(rng: random.Random) -> dict[str, Any]:
    return {"n": rng.randrange(1000), "text": "soak " * rng.randrange(1, 20), "list": [1, 2, 3]}


def payload(rng: random.Random) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update(payload_data(rng))
    return value


async def one_call(load: Load, op: str, method: Any, request: Any, md: Any) -> Any:
    started = time.monotonic()
    try:
        reply = await method(request, metadata=md, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        failure = failure_of(error)
        load.calls.append(Call(op, failure.code.name, failure.reason, time.monotonic() - started))
        return None
    load.calls.append(Call(op, "OK", "", time.monotonic() - started))
    return reply


Metadata = tuple[tuple[str, str], ...]
# The asyncio stub's type exists only in the generated .pyi.
HostStub: TypeAlias = "scheduler_host_pb2_grpc.SchedulerHostAsyncStub"


async def create(
    load: Load, host: HostStub, md: Metadata, known: list[str], rng: random.Random
) -> None:
    schedule = schedule_pb2.Schedule(
        endpoint="POST /sync",
        cron=rng.choice(CRONS),
        timezone=rng.choice(("UTC", "Europe/Berlin", "America/New_York")),
        name=f"s-{uuid.uuid4().hex[:12]}",
        payload=payload(rng),
    )
    request = pb.CreateScheduleRequest(schedule=schedule, request_id=str(uuid.uuid4()))
    reply = await one_call(load, "create", host.CreateSchedule, request, md)
    if reply is not None:
        known.append(reply.schedule.id)
        load.etags[reply.schedule.id] = reply.schedule.etag


async def get(
    load: Load, host: HostStub, md: Metadata, known: list[str], rng: random.Random
) -> None:
    sid = rng.choice(known)
    reply = await one_call(load, "get", host.GetSchedule, pb.GetScheduleRequest(id=sid), md)
    if reply is not None:
        load.etags[sid] = reply.schedule.etag


async def update(
    load: Load, host: HostStub, md: Metadata, known: list[str], rng: random.Random
) -> None:
    sid = rng.choice(known)
    changes = schedule_pb2.Schedule(
        id=sid,
        cron=rng.choice(CRONS),
        name=f"u-{uuid.uuid4().hex[:12]}",
        enabled=rng.random() < 0.9,
        payload=payload(rng),
    )
    if rng.random() < 0.3:  # read-modify-write with the etag last seen
        changes.etag = load.etags.get(sid, "")
    request = pb.UpdateScheduleRequest(schedule=changes)
    reply = await one_call(load, "update", host.UpdateSchedule, request, md)
    if reply is not None:
        load.etags[sid] = reply.schedule.etag


async def delete(
    load: Load, host: HostStub, md: Metadata, known: list[str], rng: random.Random
) -> None:
    sid = rng.choice(known)
    known.remove(sid)
    await one_call(load, "delete", host.DeleteSchedule, pb.DeleteScheduleRequest(id=sid), md)


async def list_pages(
    load: Load, host: HostStub, md: Metadata, _known: list[str], _rng: random.Random
) -> None:
    token = ""
    for _ in range(3):  # up to three pages
        request = pb.ListSchedulesRequest(page_size=20, page_token=token)
        reply = await one_call(load, "list", host.ListSchedules, request, md)
        if reply is None or not reply.next_page_token:
            break
        token = reply.next_page_token


async def endpoints(
    load: Load, host: HostStub, md: Metadata, _known: list[str], _rng: random.Random
) -> None:
    await one_call(load, "endpoints", host.GetEndpoints, pb.GetEndpointsRequest(), md)


# The calls of the load by name; get, update and delete need a schedule the install may have.
OPS = {
    "create": create,
    "get": get,
    "update": update,
    "delete": delete,
    "list": list_pages,
    "endpoints": endpoints,
}


async def client(
    n: int, stubs_list: list[Stubs], load: Load, stop: asyncio.Event, seed: int
) -> None:
    rng = random.Random(seed * 1000 + n)
    stubs = stubs_list[n % len(stubs_list)]
    ops = ["create"] * 20 + ["update"] * 20 + ["delete"] * 8 + ["list"] * 20
    ops += ["get"] * 25 + ["endpoints"] * 7
    while not stop.is_set():
        install = rng.choice(load.hot) if rng.random() < 0.2 else rng.choice(load.installs)
        known = load.known[install.install_id]
        op = rng.choice(ops)
        if op in ("get", "update", "delete") and not known:
            op = "create"
        await OPS[op](load, stubs.host, install.metadata, known, rng)


async def force_due(engine: AsyncEngine, stop: asyncio.Event) -> int:
    """Every few seconds, some enabled schedules become due now: a steady flow of runs."""
    forced = 0
    while not stop.is_set():
        async with engine.begin() as conn:
            result = await conn.execute(
                sa.text(
                    "UPDATE schedules SET next_run_time = now() - interval '1 second' "
                    "WHERE id IN (SELECT id FROM schedules WHERE enabled "
                    "AND next_run_time IS NOT NULL ORDER BY random() LIMIT :n)"
                ),
                {"n": FORCE_BATCH},
            )
            forced += result.rowcount
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FORCE_EVERY_SECONDS)
    return forced


async def sample_memory(
    servers: list[ServerProcess], samples: list[list[int]], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        samples.append([rss_kib(s.process.pid) for s in servers])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)


# --------------------------------------------------------------------------------------------
# Set-up, run, checks
# --------------------------------------------------------------------------------------------


async def register(stubs_list: list[Stubs], url: str, opts: Options) -> Load:
    """The installs through SchedulerAdmin (every server at once), and their first schedules
    written as rows in one transaction: set-up in seconds, not a minute of creates. The load then
    makes its own schedules through the API."""
    gate = asyncio.Semaphore(8 * len(stubs_list))

    async def one_install(n: int) -> InstallHandle:
        async with gate:
            return await register_install(stubs_list[n % len(stubs_list)].admin)

    installs = list(await asyncio.gather(*(one_install(n) for n in range(opts.installs))))
    load = Load(installs, installs[:HOT_INSTALLS], {i.install_id: [] for i in installs})
    rng = random.Random(opts.seed)
    now = datetime.now(UTC)
    db = await connect(url)
    try:
        async with db.transaction():
            for install in installs:
                await seed_schedules(db, install, load, rng, now)
    finally:
        await db.close()
    return load


async def seed_schedules(
    db: Db, install: InstallHandle, load: Load, rng: random.Random, now: datetime
) -> None:
    iid = uuid.UUID(install.install_id)
    utc = ZoneInfo("UTC")
    for k in range(HOT_SEED if install in load.hot else SEED):
        cron = CRONS[k % len(CRONS)]
        schedule = Schedule(
            id=uuid.uuid4(),
            install_id=iid,
            tenant_id=install.tenant_id,
            endpoint_id=endpoint_id(iid, install.version_id, "POST", "/sync"),
            endpoint_method="POST",
            endpoint_path="/sync",
            name=f"seed-{k}",
            cron=cron,
            timezone="UTC",
            enabled=True,
            payload=payload_data(rng),
            next_run_time=next_occurrence(parse_cron(cron), utc, now),
            last_run_time=None,
            last_run_status=None,
            last_error=None,
            create_time=now,
            update_time=now,
            revision=1,
        )
        await insert_schedule(db, schedule)
        load.known[install.install_id].append(str(schedule.id))


async def wait_for_open_runs(engine: AsyncEngine, within: float) -> int:
    deadline = time.monotonic() + within
    while True:
        async with engine.connect() as conn:
            open_runs = int(
                await conn.scalar(
                    sa.text(
                        "SELECT count(*) FROM schedule_runs WHERE status IN ('pending','running')"
                    )
                )
                or 0
            )
        if open_runs == 0 or time.monotonic() > deadline:
            return open_runs
        await asyncio.sleep(0.2)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Stored:
    """What the database holds at the end."""

    per_install: list[Any]  # (install_id, n)
    duplicates: list[Any]  # occurrences with more than one run record
    runs: list[Any]  # (schedule_id, trigger, scheduled_time, status)
    schedule_ids: set[str]


async def read_stored(engine: AsyncEngine) -> Stored:
    async with engine.connect() as conn:
        per_install = (
            await conn.execute(
                sa.text("SELECT install_id, count(*) AS n FROM schedules GROUP BY install_id")
            )
        ).all()
        duplicates = (
            await conn.execute(
                sa.text(
                    "SELECT schedule_id, trigger, scheduled_time, count(*) FROM schedule_runs "
                    "GROUP BY schedule_id, trigger, scheduled_time HAVING count(*) > 1"
                )
            )
        ).all()
        runs = (
            await conn.execute(
                sa.text("SELECT schedule_id, trigger, scheduled_time, status FROM schedule_runs")
            )
        ).all()
        schedule_ids = {
            str(r[0]) for r in (await conn.execute(sa.text("SELECT id FROM schedules"))).all()
        }
    return Stored(list(per_install), list(duplicates), list(runs), schedule_ids)


def reconciliation(
    stored: Stored, deliveries: Deliveries, success_deliveries: dict[str, int]
) -> tuple[Check, Counter[str]]:
    """The run records against the Runner's log, for the schedules that still exist (deleting a
    schedule deletes its runs); and the runs by status."""
    runs_per_schedule = Counter(str(r.schedule_id) for r in stored.runs)
    db_keys: dict[str, set[str]] = defaultdict(set)
    by_status: Counter[str] = Counter()
    for r in stored.runs:
        by_status[r.status] += 1
        if r.status == "success":
            key = idempotency_key(r.schedule_id, RunTrigger(r.trigger), r.scheduled_time)
            db_keys[str(r.schedule_id)].add(key)
    runner_keys: dict[str, set[str]] = defaultdict(set)
    for key, n in success_deliveries.items():
        sid = deliveries.schedule_of[key]
        if n and sid in stored.schedule_ids:
            runner_keys[sid].add(key)
    mismatched = []
    for sid in stored.schedule_ids:
        recorded, delivered = db_keys.get(sid, set()), runner_keys.get(sid, set())
        # A full history (RUN_HISTORY_LIMIT runs) has dropped its oldest records.
        full = runs_per_schedule[sid] >= RUN_HISTORY_LIMIT
        if recorded != delivered and not (full and recorded <= delivered):
            mismatched.append(sid)
    recorded_total = sum(len(v) for v in db_keys.values())
    delivered_total = sum(len(v) for v in runner_keys.values())
    check = Check(
        "run records reconcile with the Runner's log",
        not mismatched and by_status["error"] == 0 and recorded_total > 0,
        f"{recorded_total} successful runs recorded, {delivered_total} delivered, "
        f"{len(mismatched)} schedules differ, {by_status['error']} runs in error",
    )
    return check, by_status


async def database_checks(
    engine: AsyncEngine, deliveries: Deliveries
) -> tuple[list[Check], dict[str, Any]]:
    stored = await read_stored(engine)
    checks: list[Check] = []
    most = max((r.n for r in stored.per_install), default=0)
    at_quota = sum(1 for r in stored.per_install if r.n == QUOTA)
    checks.append(
        Check(
            "no install above quota",
            most <= QUOTA,
            f"largest install {most}, {at_quota} at {QUOTA}",
        )
    )

    success_deliveries = {
        key: sum(1 for s in statuses if 200 <= s < 300)
        for key, statuses in deliveries.by_key.items()
    }
    twice = [k for k, n in success_deliveries.items() if n > 1]
    checks.append(
        Check(
            "no occurrence fired twice",
            not stored.duplicates and not twice,
            f"{len(stored.duplicates)} duplicate run records, {len(twice)} keys delivered OK twice",
        )
    )
    reconciled, by_status = reconciliation(stored, deliveries, success_deliveries)
    checks.append(reconciled)
    checks.append(
        Check(
            "no run left open",
            by_status["running"] + by_status["pending"] == 0,
            f"{by_status['running']} running, {by_status['pending']} pending",
        )
    )
    figures = {
        "schedules": len(stored.schedule_ids),
        "installs_at_quota": at_quota,
        "runs": dict(by_status),
        "runner_calls": sum(len(v) for v in deliveries.by_key.values()),
        "runner_keys": len(deliveries.by_key),
        "runner_retried_keys": sum(1 for v in deliveries.by_key.values() if len(v) > 1),
    }
    return checks, figures


@dataclass
class Run:
    """What the load and the servers did, as measured during the run."""

    load: Load
    warm: list[int]  # VmRSS (KiB) of each server after the warm-up
    end: list[int]  # and at the end of the load
    samples: list[list[int]]  # every 5 s
    calls_at_warmup: int
    elapsed: float
    forced: int
    still_open: int
    exit_codes: list[int] = field(default_factory=list)
    server_logs: list[str] = field(default_factory=list)


async def run_load(
    opts: Options,
    servers: list[ServerProcess],
    stubs_list: list[Stubs],
    url: str,
    engine: AsyncEngine,
) -> Run:
    """The installs and their seed schedules, then the load for `opts.seconds` with runs made
    due, memory sampled; then the runs in flight are awaited."""
    say(f"{len(servers)} servers up; registering {opts.installs} installs")
    setup_started = time.monotonic()
    load = await register(stubs_list, url, opts)
    seeded = sum(len(v) for v in load.known.values())
    say(
        f"{seeded} schedules seeded in {time.monotonic() - setup_started:.1f} s; "
        f"load for {opts.seconds:.0f} s"
    )
    stop, stop_samples = asyncio.Event(), asyncio.Event()
    samples: list[list[int]] = []
    forcer = asyncio.create_task(force_due(engine, stop))
    sampler = asyncio.create_task(sample_memory(servers, samples, stop_samples))
    clients = [
        asyncio.create_task(client(n, stubs_list, load, stop, opts.seed))
        for n in range(opts.clients)
    ]
    load_started = time.monotonic()
    await asyncio.sleep(opts.warmup)
    warm = [rss_kib(s.process.pid) for s in servers]
    calls_at_warmup = len(load.calls)
    say(f"warm-up done: RSS {', '.join(f'{k / 1024:.1f} MiB' for k in warm)}")
    await asyncio.sleep(max(opts.seconds - opts.warmup, 0))
    stop.set()
    await asyncio.gather(*clients)
    forced = await forcer
    elapsed = time.monotonic() - load_started
    end = [rss_kib(s.process.pid) for s in servers]
    stop_samples.set()
    await sampler
    say(f"load done: {len(load.calls)} calls; waiting for runs in flight")
    still_open = await wait_for_open_runs(engine, 30)
    return Run(load, warm, end, samples, calls_at_warmup, elapsed, forced, still_open)


def run_checks(run: Run) -> tuple[list[Check], list[float], Counter[tuple[str, str]]]:
    """The checks of the answers, the memory and the servers' ends; the memory growth of each
    server and the answers by code and reason."""
    answers = Counter((c.code, c.reason) for c in run.load.calls)
    unexpected = {f"{c} {r}".strip(): n for (c, r), n in answers.items() if (c, r) not in EXPECTED}
    growth = [(e - w) / w for w, e in zip(run.warm, run.end, strict=True)]
    crashed = [
        i
        for i, text in enumerate(run.server_logs)
        if "unhandled error" in text or "Traceback" in text
    ]
    checks = [
        Check("only expected answers", not unexpected, f"unexpected: {unexpected or 'none'}"),
        Check(
            "server memory growth under 10% after warm-up",
            all(g < MEMORY_GROWTH_LIMIT for g in growth),
            ", ".join(
                f"server {i}: {w / 1024:.1f} -> {e / 1024:.1f} MiB ({g:+.1%})"
                for i, (w, e, g) in enumerate(zip(run.warm, run.end, growth, strict=True))
            ),
        ),
        Check(
            "servers stopped cleanly, no crash in their logs",
            all(code == 0 for code in run.exit_codes) and not crashed and run.still_open == 0,
            f"exit codes {run.exit_codes}; crash in logs of {crashed or 'none'}",
        ),
    ]
    return checks, growth, answers


def build_report(
    opts: Options,
    run: Run,
    figures: dict[str, Any],
    growth: list[float],
    answers: Counter[tuple[str, str]],
) -> dict[str, Any]:
    calls = run.load.calls
    servers = len(run.warm)
    peak = [max(s[i] for s in run.samples) for i in range(servers)] if run.samples else run.end
    by_op: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_op[c.op].append(c)
    return {
        "seconds": round(run.elapsed, 1),
        "warmup_seconds": opts.warmup,
        "installs": opts.installs,
        "clients": opts.clients,
        "processes": opts.processes,
        "calls": len(calls),
        "calls_per_second": round(len(calls) / run.elapsed, 1),
        "calls_after_warmup": len(calls) - run.calls_at_warmup,
        "answers": {f"{c} {r}".strip(): n for (c, r), n in answers.most_common()},
        "ops": {
            op: {
                "calls": len(op_calls),
                "ok": sum(1 for c in op_calls if c.code == "OK"),
                "p50_ms": round(statistics.median(c.seconds for c in op_calls) * 1000, 1),
                "p99_ms": round(percentile([c.seconds for c in op_calls], 99) * 1000, 1),
            }
            for op, op_calls in sorted(by_op.items())
        },
        "forced_due": run.forced,
        **figures,
        "memory_curve_mib": [[round(k / 1024, 1) for k in sample] for sample in run.samples],
        "memory_mib": [
            {
                "warm": round(w / 1024, 1),
                "end": round(e / 1024, 1),
                "peak": round(p / 1024, 1),
                "growth": f"{g:+.1%}",
            }
            for w, e, p, g in zip(run.warm, run.end, peak, growth, strict=True)
        ],
    }


async def soak(opts: Options) -> int:
    logs = Path(tempfile.mkdtemp(prefix="scheduler-host-soak-"))
    rng = random.Random(opts.seed)
    deliveries = Deliveries()
    runner = make_runner(deliveries, rng)
    await runner.start()
    with postgres_server() as pg, scratch_database(pg, prefix="scheduler_host_soak") as name:
        url = pg.url(name)
        say(f"database {pg.host}:{pg.port}/{name}; logs in {logs}")
        engine = create_async_engine(url, pool_size=2)
        try:
            async with running_servers(url, opts, runner.url, logs) as servers:
                channels = [grpc.aio.insecure_channel(s.target) for s in servers]
                try:
                    run = await run_load(opts, servers, [Stubs(c) for c in channels], url, engine)
                finally:
                    for channel in channels:
                        await channel.close()
                run.exit_codes = await stop_servers(servers)
            run.server_logs = [server.log() for server in servers]
            db_checks, figures = await database_checks(engine, deliveries)
        finally:
            await engine.dispose()
            await runner.stop()

    (answers_check, memory_check, servers_check), growth, answers = run_checks(run)
    checks = [answers_check, *db_checks, memory_check, servers_check]
    report = build_report(opts, run, figures, growth, answers)
    print_report(report, checks)
    (logs / "soak.json").write_text(
        json.dumps({"figures": report, "checks": [c.__dict__ for c in checks]}, indent=2)
    )
    say(f"figures written to {logs / 'soak.json'}")
    return 0 if all(c.ok for c in checks) else 1


def print_report(report: dict[str, Any], checks: list[Check]) -> None:
    out = sys.stdout
    print("\n== scheduler-host soak", file=out)
    print(
        f"{report['seconds']} s of load ({report['warmup_seconds']:.0f} s warm-up), "
        f"{report['installs']} installs, {report['clients']} clients, "
        f"{report['processes']} server processes",
        file=out,
    )
    print(
        f"calls: {report['calls']} ({report['calls_per_second']}/s); answers: "
        + ", ".join(f"{k} {v}" for k, v in report["answers"].items()),
        file=out,
    )
    print(f"{'op':<10} {'calls':>7} {'ok':>7} {'p50 ms':>8} {'p99 ms':>8}", file=out)
    for op, f in report["ops"].items():
        print(f"{op:<10} {f['calls']:>7} {f['ok']:>7} {f['p50_ms']:>8} {f['p99_ms']:>8}", file=out)
    print(
        f"schedules at the end: {report['schedules']} ({report['installs_at_quota']} installs at "
        f"the quota); made due by SQL: {report['forced_due']}",
        file=out,
    )
    print(
        f"runs: {report['runs']}; Runner: {report['runner_calls']} calls for "
        f"{report['runner_keys']} occurrences ({report['runner_retried_keys']} retried after 503)",
        file=out,
    )
    for i, m in enumerate(report["memory_mib"]):
        print(
            f"server {i} RSS: {m['warm']} MiB after warm-up, {m['end']} MiB at the end "
            f"({m['growth']}), peak {m['peak']} MiB",
            file=out,
        )
    curve = report["memory_curve_mib"]
    step = max(1, len(curve) // 12)
    print(
        "RSS every 5 s (MiB): " + " ".join("/".join(f"{m:g}" for m in s) for s in curve[::step]),
        file=out,
    )
    for c in checks:
        print(f"[{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}", file=out)
    print(f"soak: {'PASSED' if all(c.ok for c in checks) else 'FAILED'}", file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    return asyncio.run(soak(opts))


if __name__ == "__main__":
    sys.exit(main())
