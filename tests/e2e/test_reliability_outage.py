"""A database outage under a mixed load, against `scheduler-host serve` and a PostgreSQL cluster
this test stops and starts.

While PostgreSQL is down: every call answers within its deadline, with UNAVAILABLE /
DATABASE_UNAVAILABLE when it needs the database (never INTERNAL, never a hang); health turns
NOT_SERVING; the dispatcher pauses and records no run as failed because of the outage. When
PostgreSQL is back, the same process (no restart) serves again within 5 s, every create that
answered OK exists, and no half-written change is visible. A run whose Runner call finished while
the database was down could not be recorded: its lease expires and it is run again with the same
idempotency key, then recorded once.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.support.grpc_status_details import failure_of
from tests.support.postgres import ThrowawayCluster, scratch_database, start_throwaway_cluster
from tests.support.runner_standin import RecordingRunner, hold_until
from tests.support.server import (
    InstallHandle,
    ServerProcess,
    Stubs,
    admin_metadata,
    register_install,
    spawn_server,
    wait_until_serving,
)

CALL_TIMEOUT = 3.0
HEALTH_CHECK_SECONDS = 2.0  # the default: recovery within 5 s must hold with it
RECOVERY_LIMIT = 5.0
OUTAGE_SECONDS = 4.0
YEARLY = "0 0 1 1 *"
# An update writes a name and a cron together: a half-written update would split a pair.
UPDATE_CRONS = ("0 1 * * *", "0 2 * * *", "0 3 * * *", "0 4 * * *", "0 5 * * *")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    """A private PostgreSQL that these tests may stop (the shared one must stay up)."""
    with start_throwaway_cluster() as throwaway:
        yield throwaway


@pytest.fixture
def database_url(cluster: ThrowawayCluster) -> Iterator[str]:
    cluster.start()  # in case a failed test left it stopped
    with scratch_database(cluster.server, prefix="scheduler_host_outage") as name:
        yield cluster.server.url(name)
        cluster.start()  # the database is dropped through the running server


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    sql = create_async_engine(database_url, pool_pre_ping=True)
    # The throwaway cluster runs with synchronous_commit=off (fast, not durable), so an
    # immediate stop may lose the last commits. The service assumes a durable database: this
    # database gets the PostgreSQL default back for every session.
    async with sql.begin() as conn:
        name = sql.url.database
        await conn.execute(sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit = on'))
    yield sql
    await sql.dispose()


@pytest.fixture
async def runner() -> AsyncIterator[RecordingRunner]:
    stand_in = RecordingRunner()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@dataclass
class Result:
    op: str
    code: grpc.StatusCode
    reason: str
    started: float
    seconds: float


@dataclass
class Ledger:
    """What the load did, as its callers saw it."""

    results: list[Result] = field(default_factory=list)
    created: dict[str, str] = field(default_factory=dict)  # request id -> schedule id (OK)
    create_failed: dict[str, tuple[InstallHandle, str]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)  # OK
    delete_failed: dict[str, InstallHandle] = field(default_factory=dict)
    owned: dict[str, list[str]] = field(default_factory=dict)  # install id -> schedule ids
    # Schedules an install may have, counting creates whose answer was lost: kept below the
    # quota, so that retrying those creates afterwards cannot be refused for it.
    possible: Counter[str] = field(default_factory=Counter)


async def timed(
    ledger: Ledger, op: str, method: Callable[..., Awaitable[Any]], request: Any, md: Any
) -> tuple[grpc.StatusCode, Any]:
    started = time.monotonic()
    try:
        reply = await method(request, metadata=md, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        failure = failure_of(error)
        ledger.results.append(
            Result(op, failure.code, failure.reason, started, time.monotonic() - started)
        )
        return failure.code, None
    ledger.results.append(Result(op, grpc.StatusCode.OK, "", started, time.monotonic() - started))
    return grpc.StatusCode.OK, reply


async def worker(
    n: int, stubs: Stubs, installs: list[InstallHandle], ledger: Ledger, stop: asyncio.Event
) -> None:
    rng = random.Random(n)
    ops = ["create", "create", "get", "list", "update", "update", "delete", "endpoints", "admin"]
    host = stubs.host
    for step in itertools.count():
        if stop.is_set():
            return
        install = installs[(n + step) % len(installs)]
        md = install.metadata
        own = ledger.owned[install.install_id]
        op = rng.choice(ops)
        if op == "create" and ledger.possible[install.install_id] < 48:
            ledger.possible[install.install_id] += 1
            rid = str(uuid.uuid4())
            name = f"c-{rid[:8]}"
            request: Message = pb.CreateScheduleRequest(
                schedule=schedule_pb2.Schedule(endpoint="/sync", cron=YEARLY, name=name),
                request_id=rid,
            )
            code, reply = await timed(ledger, op, host.CreateSchedule, request, md)
            if code == grpc.StatusCode.OK:
                ledger.created[rid] = reply.schedule.id
                own.append(reply.schedule.id)
            else:
                ledger.create_failed[rid] = (install, name)
        elif op in ("get", "update", "delete") and own:
            sid = rng.choice(own)
            if op == "get":
                request = pb.GetScheduleRequest(id=sid)
                code, _ = await timed(ledger, op, host.GetSchedule, request, md)
            elif op == "update":
                k = rng.randrange(1000)
                schedule = schedule_pb2.Schedule(
                    id=sid, name=f"u-{sid[:8]}-{k}", cron=UPDATE_CRONS[k % len(UPDATE_CRONS)]
                )
                request = pb.UpdateScheduleRequest(schedule=schedule)
                code, _ = await timed(ledger, op, host.UpdateSchedule, request, md)
            else:
                own.remove(sid)
                ledger.possible[install.install_id] -= 1
                request = pb.DeleteScheduleRequest(id=sid)
                code, _ = await timed(ledger, op, host.DeleteSchedule, request, md)
                if code == grpc.StatusCode.OK:
                    ledger.deleted.add(sid)
                else:
                    ledger.delete_failed[sid] = install
        elif op in ("list", "create", "get", "update", "delete"):
            request = pb.ListSchedulesRequest(page_size=20)
            code, _ = await timed(ledger, "list", host.ListSchedules, request, md)
        elif op == "endpoints":
            code, _ = await timed(ledger, op, host.GetEndpoints, pb.GetEndpointsRequest(), md)
        else:
            request = admin_pb.GetInstallRequest(install_id=install.install_id)
            code, _ = await timed(
                ledger, "admin", stubs.admin.GetInstall, request, admin_metadata()
            )
        # A client backs off after a failure; a steady pace otherwise.
        await asyncio.sleep(0.03 if code == grpc.StatusCode.OK else 0.1)


async def watch_health(
    channel: grpc.aio.Channel, seen: list[tuple[float, int]], stop: asyncio.Event
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    while not stop.is_set():
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            seen.append((time.monotonic(), reply.status))
        except grpc.aio.AioRpcError:
            seen.append((time.monotonic(), -1))
        await asyncio.sleep(0.1)


async def make_due(engine: AsyncEngine, schedule_ids: list[str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE schedules SET next_run_time = :due WHERE id = ANY(:ids)"),
            {
                "due": datetime.now(UTC).replace(microsecond=0),
                "ids": [uuid.UUID(s) for s in schedule_ids],
            },
        )


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def server_env(runner: RecordingRunner) -> dict[str, str]:
    return {
        "SCHEDULER_HOST_DISPATCHER": "true",
        "SCHEDULER_HOST_DISPATCH_POLL_SECONDS": "0.1",
        "SCHEDULER_HOST_RUNNER_BASE_URL": runner.url,
        # A short lease (3 x 2 s + backoff + 0.5 s): the run whose result could not be recorded
        # during the outage is taken over soon after. The held Runner calls last the time the
        # database takes to stop, well within 2 s.
        "SCHEDULER_HOST_RUNNER_TIMEOUT_SECONDS": "2",
        "SCHEDULER_HOST_RUNNER_RETRY_BASE_SECONDS": "0.05",
        "SCHEDULER_HOST_DISPATCH_LEASE_MARGIN_SECONDS": "0.5",
        "SCHEDULER_HOST_HEALTH_CHECK_SECONDS": str(HEALTH_CHECK_SECONDS),
        "SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE": "1000000",
        "SCHEDULER_HOST_SHUTDOWN_GRACE_SECONDS": "2",
    }


async def seed_schedule(stubs: Stubs, install: InstallHandle, ledger: Ledger) -> str:
    """A schedule of `install` made before the load, in the ledger as the install's."""
    rid = str(uuid.uuid4())
    reply = await stubs.host.CreateSchedule(
        pb.CreateScheduleRequest(
            schedule=schedule_pb2.Schedule(endpoint="/sync", cron=YEARLY), request_id=rid
        ),
        metadata=install.metadata,
    )
    ledger.created[rid] = reply.schedule.id
    ledger.possible[install.install_id] += 1
    ledger.owned[install.install_id].append(reply.schedule.id)
    sid: str = reply.schedule.id
    return sid


async def retry_lost_answers(stubs: Stubs, ledger: Ledger) -> None:
    """Deletes and creates whose answer was lost are retried, creates with the same request id
    (as the client does): each makes or returns one schedule. Deletes first: one that did not
    happen still takes a quota slot."""
    for sid, install in ledger.delete_failed.items():
        try:
            await stubs.host.DeleteSchedule(
                pb.DeleteScheduleRequest(id=sid), metadata=install.metadata, timeout=3
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: it was deleted
                raise
        ledger.deleted.add(sid)

    for rid, (install, name) in ledger.create_failed.items():
        reply = await stubs.host.CreateSchedule(
            pb.CreateScheduleRequest(
                schedule=schedule_pb2.Schedule(endpoint="/sync", cron=YEARLY, name=name),
                request_id=rid,
            ),
            metadata=install.metadata,
            timeout=CALL_TIMEOUT,
        )
        ledger.created[rid] = reply.schedule.id


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_database_outage_under_load(
    cluster: ThrowawayCluster,
    database_url: str,
    engine: AsyncEngine,
    runner: RecordingRunner,
    tmp_path: Path,
    mode: str,
) -> None:
    server: ServerProcess = spawn_server(
        database_url, tmp_path / "server.log", args=("serve", "--migrate"), **server_env(runner)
    )
    try:
        await asyncio.to_thread(wait_until_serving, server)
        pid = server.process.pid
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = Stubs(channel)
            installs = [await register_install(stubs.admin) for _ in range(4)]
            ledger = Ledger(owned={i.install_id: [] for i in installs})
            seeds = [
                await seed_schedule(stubs, install, ledger)
                for install in installs
                for _ in range(3)
            ]

            # Runs in flight when the database goes: the Runner answers once it is down.
            held = [seeds[i * 3] for i in range(len(installs))]
            for install in installs:
                ledger.owned[install.install_id] = [
                    s for s in ledger.owned[install.install_id] if s not in held
                ]
            db_down = asyncio.Event()
            for sid in held:
                runner.script[sid] = [hold_until(db_down)]

            stop_load, stop_health = asyncio.Event(), asyncio.Event()
            health: list[tuple[float, int]] = []
            health_task = asyncio.create_task(watch_health(channel, health, stop_health))
            workers = [
                asyncio.create_task(worker(n, stubs, installs, ledger, stop_load)) for n in range(6)
            ]
            await asyncio.sleep(1.5)
            await make_due(engine, held)
            await runner.wait_for(len(held), within=10)
            await asyncio.to_thread(cluster.stop, mode)
            down_at = time.monotonic()
            db_down.set()
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(cluster.start)
            up_at = time.monotonic()

            async def serves_again() -> bool:
                try:
                    await stubs.host.ListSchedules(
                        pb.ListSchedulesRequest(), metadata=installs[0].metadata, timeout=1
                    )
                except grpc.aio.AioRpcError:
                    return False
                return bool(health) and health[-1][1] == SERVING

            recovery = await until(serves_again, RECOVERY_LIMIT, "recovery after the restart")
            recovered_at = time.monotonic()
            await asyncio.sleep(1.5)  # load on the recovered database
            stop_load.set()
            await asyncio.gather(*workers)
            stop_health.set()
            await health_task

            # The same process, never restarted.
            assert server.process.poll() is None, server.log()
            assert server.process.pid == pid

            # Every answer was one the outage allows, within its deadline.
            allowed = {
                (grpc.StatusCode.OK, ""),
                (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
                (grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND"),
            }
            answers = Counter((r.code, r.reason) for r in ledger.results)
            assert set(answers) <= allowed, f"{answers}\n{server.log()[-5000:]}"
            slowest = max(r.seconds for r in ledger.results)
            assert slowest < CALL_TIMEOUT, slowest
            during = [r for r in ledger.results if down_at + 1.5 < r.started < up_at - 0.5]
            assert during, "no calls were made during the outage"
            assert all(r.code == grpc.StatusCode.UNAVAILABLE for r in during), Counter(
                (r.op, r.code) for r in during
            )
            after = [r for r in ledger.results if r.started > recovered_at + 0.2]
            assert after
            assert all(r.code != grpc.StatusCode.UNAVAILABLE for r in after)

            # Health followed the database.
            went_down = [t for t, s in health if t > down_at and s == NOT_SERVING]
            assert went_down, health
            assert went_down[0] - down_at < HEALTH_CHECK_SECONDS * 2 + 1
            assert all(s == SERVING for t, s in health if t > recovered_at)
            assert recovery <= RECOVERY_LIMIT

            await retry_lost_answers(stubs, ledger)

            # The dispatcher: the held runs were recorded once each, as successes, after the
            # outage; the Runner saw each occurrence only with its one idempotency key.
            async def held_runs_done() -> bool:
                async with engine.connect() as conn:
                    done: int = await conn.scalar(
                        sa.text(
                            "SELECT count(*) FROM schedule_runs WHERE schedule_id = ANY(:ids) "
                            "AND status = 'success'"
                        ),
                        {"ids": [uuid.UUID(s) for s in held]},
                    )
                return done == len(held)

            await until(held_runs_done, 20, "the runs in flight during the outage finished")
            await asyncio.sleep(0.3)
        code = await asyncio.to_thread(server.stop)
        assert code == 0, server.log()
    finally:
        server.stop()

    async with engine.connect() as conn:
        runs = (
            await conn.execute(
                sa.text("SELECT schedule_id, status, attempt, error FROM schedule_runs")
            )
        ).all()
        rows = (
            await conn.execute(
                sa.text(
                    "SELECT s.id, s.name, s.cron, k.request_id FROM schedules s "
                    "LEFT JOIN idempotency_keys k ON k.schedule_id = s.id"
                )
            )
        ).all()
    assert [r for r in runs if r.status == "error"] == [], runs
    assert Counter(str(r.schedule_id) for r in runs if str(r.schedule_id) in held) == Counter(
        held
    ), runs
    for sid in held:
        keys = {e.idempotency_key for e in runner.of(sid)}
        assert len(keys) == 1, (sid, keys)
        assert len(runner.of(sid)) >= 2  # the call before the outage, and the one after

    existing = {str(r.id) for r in rows}
    expected = set(ledger.created.values()) - ledger.deleted
    assert existing == expected, (existing - expected, expected - existing)
    # No half-written change: each schedule has its request id, and every updated schedule
    # has the name and the cron of one and the same update.
    assert all(r.request_id is not None for r in rows), rows
    for r in rows:
        if r.name and r.name.startswith("u-"):
            k = int(r.name.rsplit("-", 1)[1])
            assert r.cron == UPDATE_CRONS[k % len(UPDATE_CRONS)], r
        else:
            assert r.cron == YEARLY, r
    log = server.log()
    assert "unhandled error" not in log, log
    assert "Traceback" not in log, log
    assert "not recorded: the database is unavailable" in log, log
    codes = dict(Counter(r.code.name for r in ledger.results))
    print(
        f"outage ({mode}): {len(ledger.results)} calls {codes}, recovered in {recovery:.2f} s, "
        f"health NOT_SERVING after {went_down[0] - down_at:.2f} s"
    )
