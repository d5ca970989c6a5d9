"""The dispatcher across real `scheduler-host serve` processes sharing one PostgreSQL: each
occurrence fires once with two dispatchers, and a SIGKILLed process's run is taken over."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_host_pb2 as pb
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from scheduler_host.app import start_application
from scheduler_host.domain.runs import RunTrigger
from scheduler_host.runner_standin import Execution, Reply
from scheduler_host.service.dispatch import idempotency_key
from tests.e2e.conftest import e2e_settings
from tests.support.postgres import PostgresServer, scratch_database
from tests.support.runner_standin import RecordingRunner
from tests.support.server import (
    InstallHandle,
    ServerProcess,
    Stubs,
    register_install,
    spawn_server,
    wait_until_serving,
)

# Yearly, so that the one occurrence a test makes due is the only one it can see.
YEARLY = "0 0 1 1 *"


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    with scratch_database(postgres) as name:
        yield postgres.url(name)


@pytest.fixture
async def runner() -> AsyncIterator[RecordingRunner]:
    stand_in = RecordingRunner()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    sql = create_async_engine(database_url)
    yield sql
    await sql.dispose()


async def create_schedules(database_url: str, installs: int, per_install: int) -> list[str]:
    """Through the API of an in-process server that does not dispatch (it also migrates)."""
    app = await start_application(e2e_settings(database_url), migrate=True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stubs = Stubs(channel)
            handles = [await register_install(stubs.admin) for _ in range(installs)]
            # Fewer at once than the pool's waiter queue holds: beyond it, a create is refused
            # (UNAVAILABLE) by design.
            under_way = asyncio.Semaphore(64)

            async def create(handle: InstallHandle) -> pb.CreateScheduleResponse:
                async with under_way:
                    return await stubs.host.CreateSchedule(
                        pb.CreateScheduleRequest(
                            schedule=schedule_pb2.Schedule(endpoint="POST /sync", cron=YEARLY)
                        ),
                        metadata=handle.metadata,
                    )

            replies = await asyncio.gather(
                *(create(handle) for handle in handles for _ in range(per_install))
            )
            return [reply.schedule.id for reply in replies]
    finally:
        await app.stop()


def dispatcher_env(runner: RecordingRunner, **overrides: str) -> dict[str, str]:
    return {
        "SCHEDULER_HOST_DISPATCHER": "true",
        "SCHEDULER_HOST_DISPATCH_POLL_SECONDS": "0.05",
        "SCHEDULER_HOST_DISPATCH_BATCH_SIZE": "50",
        "SCHEDULER_HOST_RUNNER_BASE_URL": runner.url,
        "SCHEDULER_HOST_RUNNER_RETRY_BASE_SECONDS": "0.05",
        "SCHEDULER_HOST_SHUTDOWN_GRACE_SECONDS": "1",
        **overrides,
    }


@asynccontextmanager
async def servers(
    database_url: str, logs: list[Path], env: dict[str, str]
) -> AsyncIterator[list[ServerProcess]]:
    started = [spawn_server(database_url, log, args=("serve",), **env) for log in logs]
    try:
        await asyncio.gather(*(asyncio.to_thread(wait_until_serving, s) for s in started))
        yield started
    finally:
        for server in started:
            await asyncio.to_thread(server.stop)


async def make_due(engine: AsyncEngine, schedule_ids: list[str] | None = None) -> datetime:
    """Every (or the given) schedule due one second ago, in one statement."""
    due = datetime.now(UTC).replace(microsecond=0)
    statement = sa.text("UPDATE schedules SET next_run_time = :due")
    params: dict[str, Any] = {"due": due}
    if schedule_ids is not None:
        statement = sa.text("UPDATE schedules SET next_run_time = :due WHERE id = ANY(:ids)")
        params["ids"] = [uuid.UUID(s) for s in schedule_ids]
    async with engine.begin() as conn:
        await conn.execute(statement, params)
    return due


async def runs_of(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.text(
                "SELECT schedule_id, trigger, scheduled_time, status, attempt FROM schedule_runs"
            )
        )
        return list(result.all())


async def wait_for_finished_runs(engine: AsyncEngine, count: int, within: float) -> list[Any]:
    deadline = time.monotonic() + within
    while True:
        runs = await runs_of(engine)
        if sum(run.status not in ("pending", "running") for run in runs) >= count:
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(runs)} runs, not {count} finished: {runs[:5]}")
        await asyncio.sleep(0.1)


async def test_two_processes_fire_each_of_500_due_occurrences_exactly_once(
    database_url: str, runner: RecordingRunner, engine: AsyncEngine, tmp_path: Path
) -> None:
    schedule_ids = await create_schedules(database_url, installs=10, per_install=50)
    logs = [tmp_path / "server-a.log", tmp_path / "server-b.log"]
    async with servers(database_url, logs, dispatcher_env(runner)):
        due = await make_due(engine)
        runs = await wait_for_finished_runs(engine, 500, within=30)
        await asyncio.sleep(0.5)  # time for a duplicate, if there were one, to show up
        runs = await runs_of(engine)

    # The Runner saw each occurrence once: one call per schedule, with that occurrence's key.
    assert len(runner.executions) == 500
    assert sorted(e.schedule_id for e in runner.executions) == sorted(schedule_ids)
    for execution in runner.executions:
        expected = idempotency_key(uuid.UUID(execution.schedule_id), RunTrigger.SCHEDULE, due)
        assert execution.idempotency_key == expected
    # The run records agree: one successful run per schedule, for that occurrence.
    assert len(runs) == 500
    assert {str(run.schedule_id) for run in runs} == set(schedule_ids)
    assert all(
        (run.trigger, run.scheduled_time, run.status, run.attempt)
        == ("schedule", due, "success", 1)
        for run in runs
    )
    async with engine.connect() as conn:
        states = (
            await conn.execute(
                sa.text(
                    "SELECT last_run_status, count(*) FROM schedules "
                    "WHERE next_run_time > now() AND running_run_id IS NULL "
                    "GROUP BY last_run_status"
                )
            )
        ).all()
    assert [tuple(s) for s in states] == [("success", 500)]
    # One log line per run, shared between the two processes.
    per_process = [log.read_text().count(" status=success ") for log in logs]
    assert sum(per_process) == 500, per_process


async def test_sigkill_mid_run_loses_nothing_and_fires_the_occurrence_once(
    database_url: str, runner: RecordingRunner, engine: AsyncEngine, tmp_path: Path
) -> None:
    (schedule_id,) = await create_schedules(database_url, installs=1, per_install=1)
    first_delivery = asyncio.Event()

    async def hang_on_first_delivery(_execution: Execution) -> Reply:
        if not first_delivery.is_set():
            first_delivery.set()
            await asyncio.Event().wait()  # the process dies while the Runner is working
        return Reply()

    runner.default = hang_on_first_delivery
    # Short calls make the lease short: 3 x 1.5 s + backoff + 0.5 s.
    env = dispatcher_env(
        runner,
        SCHEDULER_HOST_RUNNER_TIMEOUT_SECONDS="1.5",
        SCHEDULER_HOST_DISPATCH_LEASE_MARGIN_SECONDS="0.5",
    )
    async with servers(database_url, [tmp_path / "victim.log"], env) as (victim,):
        due = await make_due(engine)
        async with asyncio.timeout(10):
            await first_delivery.wait()
        victim.process.kill()
        await asyncio.to_thread(victim.process.wait)
    ((_, _, _, status, attempt),) = await runs_of(engine)
    assert (status, attempt) == ("running", 1)

    async with servers(database_url, [tmp_path / "successor.log"], env):
        (run,) = await wait_for_finished_runs(engine, 1, within=20)

    assert (run.trigger, run.scheduled_time, run.status) == ("schedule", due, "success")
    assert run.attempt == 2
    sent = runner.of(schedule_id)
    assert len(sent) == 2  # the cut-off call, and the takeover's call with the same key
    assert {e.idempotency_key for e in sent} == {
        idempotency_key(uuid.UUID(schedule_id), RunTrigger.SCHEDULE, due)
    }
    async with engine.connect() as conn:
        schedule = (
            await conn.execute(
                sa.text(
                    "SELECT enabled, next_run_time, last_run_status, running_run_id "
                    "FROM schedules WHERE id = :id"
                ),
                {"id": uuid.UUID(schedule_id)},
            )
        ).one()
    assert schedule.enabled
    assert schedule.next_run_time > due
    assert schedule.last_run_status == "success"
    assert schedule.running_run_id is None
