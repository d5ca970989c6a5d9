"""SIGTERM under load, against `scheduler-host serve` with the dispatcher on.

50 calls are in flight when the signal arrives (held inside PostgreSQL by a table lock that is
released a moment later), and runs are in flight at the Runner: some finish within the grace
period, some never would. Each call completes or is refused with UNAVAILABLE (none INTERNAL), a
call made after the signal is refused with UNAVAILABLE, the runs that finish are recorded and the
others are released, and the process exits 0 within the grace period plus 1 s. Another process
then takes the released runs over with the same idempotency keys.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_host_pb2 as pb

from scheduler_host.domain.runs import RunTrigger
from scheduler_host.service.dispatch import idempotency_key
from tests.support.grpc_status_details import failure_of
from tests.support.postgres import PostgresServer, scratch_database
from tests.support.runner_standin import RecordingRunner, hold_until, slow
from tests.support.server import (
    InstallHandle,
    Stubs,
    register_install,
    spawn_server,
    wait_until_serving,
)

GRACE_SECONDS = 3.0
IN_FLIGHT = 50
STUCK = 5  # of the calls in flight, these wait for a lock held past the grace period
YEARLY = "0 0 1 1 *"


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    with scratch_database(postgres, prefix="scheduler_host_shutdown") as name:
        yield postgres.url(name)


@pytest.fixture
async def runner() -> AsyncIterator[RecordingRunner]:
    stand_in = RecordingRunner()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


def env(runner: RecordingRunner, **overrides: str) -> dict[str, str]:
    return {
        "SCHEDULER_HOST_DISPATCHER": "true",
        "SCHEDULER_HOST_DISPATCH_POLL_SECONDS": "0.05",
        "SCHEDULER_HOST_RUNNER_BASE_URL": runner.url,
        "SCHEDULER_HOST_RUNNER_TIMEOUT_SECONDS": "30",
        "SCHEDULER_HOST_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
        "SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE": "1000000",
        **overrides,
    }


async def lock_waiters(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    )
    return count


async def outcome(call: Any) -> tuple[str, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        failure = failure_of(error)
        return failure.code.name, failure.reason
    return "OK", ""


@dataclass
class Seeded:
    installs: list[InstallHandle]
    stuck_install: InstallHandle  # its row is locked past the grace period
    schedules: list[tuple[InstallHandle, str]]  # four of each install, kept for the checks
    spares: list[tuple[InstallHandle, str]]  # deleted by calls in flight


async def new_schedule(stubs: Stubs, install: InstallHandle) -> tuple[InstallHandle, str]:
    reply = await stubs.host.CreateSchedule(
        pb.CreateScheduleRequest(schedule=schedule_pb2.Schedule(endpoint="/sync", cron=YEARLY)),
        metadata=install.metadata,
    )
    return install, reply.schedule.id


async def seed(stubs: Stubs) -> Seeded:
    installs = [await register_install(stubs.admin) for _ in range(5)]
    stuck_install = await register_install(stubs.admin)
    schedules = [await new_schedule(stubs, install) for install in installs for _ in range(4)]
    spares = [await new_schedule(stubs, installs[n % len(installs)]) for n in range(IN_FLIGHT // 5)]
    return Seeded(installs, stuck_install, schedules, spares)


def call_in_flight(
    n: int, stubs: Stubs, seeded: Seeded, renames: dict[str, set[str]]
) -> tuple[str, Any]:
    """The `n`th call made while the schedules are locked: its kind and the call. The last
    STUCK are creates of the stuck install; an update notes the name it would give."""
    install, sid = seeded.schedules[n % len(seeded.schedules)]
    md = install.metadata
    kind = ("create", "update", "get", "list", "delete")[n % 5]
    host = stubs.host
    if n >= IN_FLIGHT - STUCK:
        schedule = schedule_pb2.Schedule(endpoint="/sync", cron=YEARLY, name=f"stuck-{n}")
        request = pb.CreateScheduleRequest(schedule=schedule)
        return "stuck", host.CreateSchedule(
            request, metadata=seeded.stuck_install.metadata, timeout=30
        )
    if kind == "create":
        schedule = schedule_pb2.Schedule(endpoint="/sync", cron=YEARLY, name=f"during-{n}")
        request = pb.CreateScheduleRequest(schedule=schedule, request_id=str(uuid.uuid4()))
        return kind, host.CreateSchedule(request, metadata=md, timeout=30)
    if kind == "update":
        renames.setdefault(sid, set()).add(f"renamed-{n}")
        changes = schedule_pb2.Schedule(id=sid, name=f"renamed-{n}")
        return kind, host.UpdateSchedule(
            pb.UpdateScheduleRequest(schedule=changes), metadata=md, timeout=30
        )
    if kind == "get":
        return kind, host.GetSchedule(pb.GetScheduleRequest(id=sid), metadata=md, timeout=30)
    if kind == "list":
        return kind, host.ListSchedules(pb.ListSchedulesRequest(), metadata=md, timeout=30)
    spare_install, spare_id = seeded.spares.pop()
    return kind, host.DeleteSchedule(
        pb.DeleteScheduleRequest(id=spare_id), metadata=spare_install.metadata, timeout=30
    )


async def runs_and_names(database_url: str) -> tuple[list[Any], dict[str, str | None]]:
    """Every run (schedule id, status, lease and attempt, and the database's now) and every
    schedule's name by id."""
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(
            "SELECT schedule_id::text AS sid, status, lease_until, now() AS now, attempt "
            "FROM schedule_runs"
        )
        named = {
            r["id"]: r["name"] for r in await conn.fetch("SELECT id::text, name FROM schedules")
        }
    finally:
        await conn.close()
    return list(rows), named


async def test_sigterm_with_50_calls_and_runs_in_flight(
    database_url: str, runner: RecordingRunner, tmp_path: Path
) -> None:
    server = spawn_server(
        database_url, tmp_path / "server.log", args=("serve", "--migrate"), **env(runner)
    )
    blocker: asyncpg.Connection | None = None
    monitor: asyncpg.Connection | None = None
    holder: asyncpg.Connection | None = None
    try:
        await asyncio.to_thread(wait_until_serving, server)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = Stubs(channel)
            seeded = await seed(stubs)
            installs, schedules = seeded.installs, seeded.schedules

            # Runs in flight: four finish half a second into the grace period, two never would.
            never = asyncio.Event()
            finishing = [sid for _, sid in schedules[:4]]
            hanging = [sid for _, sid in schedules[4:6]]
            for sid in finishing:
                runner.script[sid] = [slow(0.5)]
            for sid in hanging:
                runner.script[sid] = [hold_until(never)]
            blocker = await asyncpg.connect(database_url.replace("+asyncpg", ""))
            # pg_stat_activity is a snapshot per transaction: watched from outside the blocker's.
            monitor = await asyncpg.connect(database_url.replace("+asyncpg", ""))
            due = datetime.now(UTC).replace(microsecond=0)
            await blocker.execute(
                "UPDATE schedules SET next_run_time = $1 WHERE id = ANY($2::uuid[])",
                due,
                [uuid.UUID(s) for s in finishing + hanging],
            )
            await runner.wait_for(len(finishing) + len(hanging), within=10)

            # Calls in flight: everything that reads or writes schedules waits for this lock.
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await asyncio.wait_for(watch.read(), 5)).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            # A create takes its install's row lock: these wait beyond the grace period.
            holder = await asyncpg.connect(database_url.replace("+asyncpg", ""))
            await holder.execute("BEGIN")
            await holder.execute(
                "SELECT 1 FROM installs WHERE id = $1 FOR UPDATE",
                uuid.UUID(seeded.stuck_install.install_id),
            )
            await blocker.execute("BEGIN")
            await blocker.execute("LOCK TABLE schedules IN ACCESS EXCLUSIVE MODE")
            calls: list[tuple[str, asyncio.Future[Any]]] = []
            renames: dict[str, set[str]] = {}
            for n in range(IN_FLIGHT):
                kind, call = call_in_flight(n, stubs, seeded, renames)
                calls.append((kind, asyncio.ensure_future(outcome(call))))
            # Every call has reached the server: at least the pool's worth waits on the lock.
            deadline = time.monotonic() + 10
            while await lock_waiters(monitor) < 15:
                assert time.monotonic() < deadline, "the calls never reached the lock"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert not any(f.done() for _, f in calls)

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            update = await asyncio.wait_for(watch.read(), 5)
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            # A call that arrives now is refused.
            late = await outcome(
                stubs.host.GetEndpoints(
                    pb.GetEndpointsRequest(), metadata=installs[0].metadata, timeout=5
                )
            )
            assert late[0] == "UNAVAILABLE", late

            await asyncio.sleep(1.0)
            await blocker.execute("ROLLBACK")
            results = [(kind, await f) for kind, f in calls]

            code = await asyncio.to_thread(server.process.wait, GRACE_SECONDS + 5)
            stopped_after = time.monotonic() - signalled
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after SIGTERM:\n{server.log()}") from None
    finally:
        if holder is not None:
            await holder.execute("ROLLBACK")
        for conn in (blocker, monitor, holder):
            if conn is not None:
                await conn.close()
        server.stop()

    log = server.log()
    answers = Counter(answer for _, answer in results)
    assert set(answers) <= {("OK", ""), ("UNAVAILABLE", "SHUTTING_DOWN"), ("UNAVAILABLE", "")}, (
        answers,
        log[-3000:],
    )
    # The calls that could finish in the grace period did; the others were cut at its end.
    assert Counter(kind for kind, answer in results if answer == ("OK", "")) == Counter(
        ("create", "update", "get", "list", "delete") * ((IN_FLIGHT - STUCK) // 5)
    ), results
    assert all(answer[0] == "UNAVAILABLE" for kind, answer in results if kind == "stuck"), results
    assert code == 0, log
    assert stopped_after <= GRACE_SECONDS + 1, stopped_after
    assert "Traceback" not in log, log
    assert "unhandled error" not in log, log

    # The runs: those that finished in the grace period are recorded, the others released.
    rows, named = await runs_and_names(database_url)
    names = set(named.values())
    # What the finished calls wrote is there; nothing of the cut ones.
    assert {f"during-{n}" for n in range(0, IN_FLIGHT - STUCK, 5)} <= names
    for sid, candidates in renames.items():
        assert named[sid] in candidates, (sid, named[sid], candidates)  # whichever came last
    assert not {n for n in names if n and n.startswith("stuck-")}, names
    by_schedule = {r["sid"]: r for r in rows}
    assert set(by_schedule) == set(finishing + hanging), rows
    for sid in finishing:
        assert by_schedule[sid]["status"] == "success", by_schedule[sid]
    for sid in hanging:
        run = by_schedule[sid]
        assert run["status"] == "running", run
        assert run["lease_until"] <= run["now"], f"not released: {run}"

    # Another process takes the released runs over at once, with the same idempotency keys.
    await check_taken_over(database_url, runner, hanging, due, tmp_path)


async def check_taken_over(
    database_url: str, runner: RecordingRunner, hanging: list[str], due: datetime, tmp_path: Path
) -> None:
    calls_before = {sid: len(runner.of(sid)) for sid in hanging}
    successor = spawn_server(
        database_url, tmp_path / "successor.log", args=("serve",), **env(runner)
    )
    try:
        await asyncio.to_thread(wait_until_serving, successor)
        deadline = time.monotonic() + 10
        while any(len(runner.of(sid)) == calls_before[sid] for sid in hanging):
            assert time.monotonic() < deadline, successor.log()
            await asyncio.sleep(0.05)
    finally:
        assert successor.stop() == 0, successor.log()
    for sid in hanging:
        keys = {e.idempotency_key for e in runner.of(sid)}
        assert keys == {idempotency_key(uuid.UUID(sid), RunTrigger.SCHEDULE, due)}, keys
