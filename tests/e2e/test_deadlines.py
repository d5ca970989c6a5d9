"""Deadlines while the database is slow: the call is cancelled server-side and its transaction
rolled back; the connection goes back (or is replaced) and nothing it wrote is committed.

"Slow" is made with a second session that holds a lock the call needs: the call's statement
waits in PostgreSQL until the client's deadline passes. Then, while that lock is still held, the
server's session must no longer wait (its statement was cancelled and its transaction ended), the
locks it took must be free, and after the lock is released nothing of the call may appear.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_host_pb2 as pb

from scheduler_host.adapters.db.buckets import bucket_of
from tests.support.grpc_status_details import failure_of
from tests.support.server import InstallHandle, Stubs

DEADLINE = 1.0
SETTLE = 3.0  # seconds the server gets to cancel its statement after the deadline


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture
async def blocker(e2e_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A session that holds locks in an open transaction."""
    conn = await asyncpg.connect(asyncpg_dsn(e2e_database_url))
    await conn.execute("BEGIN")
    yield conn
    await conn.close()


@pytest.fixture
async def monitor(e2e_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Watches the server's sessions from outside any transaction (pg_stat_activity is a
    snapshot per transaction, so it must not be read inside the blocker's)."""
    conn = await asyncpg.connect(asyncpg_dsn(e2e_database_url))
    yield conn
    await conn.close()


async def server_sessions(
    monitor: asyncpg.Connection, blocker: asyncpg.Connection
) -> list[asyncpg.Record]:
    """The other sessions of this database that wait for a lock or sit in a transaction."""
    rows: list[asyncpg.Record] = await monitor.fetch(
        "SELECT a.pid, a.state, a.wait_event_type, left(a.query, 80) AS query "
        "FROM pg_stat_activity a WHERE a.datname = current_database() "
        "AND a.pid NOT IN (pg_backend_pid(), $1) "
        "AND (a.wait_event_type = 'Lock' OR a.state LIKE 'idle in transaction%' "
        "     OR EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted))",
        blocker.get_server_pid(),
    )
    return rows


async def wait_for_waiters(
    monitor: asyncpg.Connection, blocker: asyncpg.Connection, count: int
) -> None:
    deadline = time.monotonic() + 10
    while len(await server_sessions(monitor, blocker)) < count:
        assert time.monotonic() < deadline, "the calls never blocked on the held lock"
        await asyncio.sleep(0.02)


async def wait_until_released(monitor: asyncpg.Connection, blocker: asyncpg.Connection) -> float:
    """Seconds until no server session waits or holds a transaction (the lock still held)."""
    started = time.monotonic()
    while sessions := await server_sessions(monitor, blocker):
        if time.monotonic() - started > SETTLE:
            raise AssertionError(
                f"{SETTLE} s after the deadline the server still waits in PostgreSQL "
                f"(statement not cancelled, transaction not rolled back): {sessions}"
            )
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def expect_deadline(call: Awaitable[object]) -> float:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, raised.value
    return time.monotonic() - started


def cancelled_calls(caplog: pytest.LogCaptureFixture, operation: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == "scheduler_host.rpc"
        and getattr(r, "operation", "") == operation
        and getattr(r, "grpc_code", "") == "CANCELLED"
    )


def new_schedule(name: str) -> schedule_pb2.Schedule:
    return schedule_pb2.Schedule(endpoint="POST /sync", cron="0 0 1 1 *", name=name)


async def names(stubs: Stubs, install: InstallHandle) -> list[str]:
    listed = await stubs.host.ListSchedules(
        pb.ListSchedulesRequest(page_size=100), metadata=install.metadata, timeout=5
    )
    return [s.name for s in listed.schedules]


@pytest.mark.usefixtures("app")
async def test_create_cancelled_after_its_insert_commits_nothing(
    stubs: Stubs,
    install: InstallHandle,
    blocker: asyncpg.Connection,
    monitor: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler_host.rpc")
    first = (
        await stubs.host.CreateSchedule(
            pb.CreateScheduleRequest(schedule=new_schedule("first")), metadata=install.metadata
        )
    ).schedule
    # The create inserts its schedule under the install's row lock, then records its request id:
    # an uncommitted row with the same key makes that second insert wait.
    request_id = uuid.uuid4()
    await blocker.execute(
        "INSERT INTO idempotency_keys (bucket, install_id, request_id, tenant_id, schedule_id, "
        "create_time) VALUES ($1, $2, $3, $4, $5, now())",
        bucket_of(install.tenant_id),
        uuid.UUID(install.install_id),
        request_id,
        install.tenant_id,
        uuid.UUID(first.id),
    )
    call = stubs.host.CreateSchedule(
        pb.CreateScheduleRequest(schedule=new_schedule("late"), request_id=str(request_id)),
        metadata=install.metadata,
        timeout=DEADLINE,
    )
    waited = await expect_deadline(asyncio.ensure_future(call))
    assert waited < DEADLINE + 0.5

    # Server-side: the statement was cancelled and the transaction ended, lock still held.
    await wait_until_released(monitor, blocker)
    # The install's row lock that the create held is free: another create goes through now.
    other = await stubs.host.CreateSchedule(
        pb.CreateScheduleRequest(schedule=new_schedule("other")),
        metadata=install.metadata,
        timeout=3,
    )
    assert other.schedule.name == "other"
    await blocker.execute("ROLLBACK")
    await asyncio.sleep(0.2)
    # Nothing of the cancelled call was committed: no "late" schedule, no request id.
    assert sorted(await names(stubs, install)) == ["first", "other"]
    # The caller's retry with the same request id makes the schedule, once.
    retried = [
        (
            await stubs.host.CreateSchedule(
                pb.CreateScheduleRequest(schedule=new_schedule("late"), request_id=str(request_id)),
                metadata=install.metadata,
                timeout=5,
            )
        ).schedule
        for _ in range(2)
    ]
    assert retried[0].id == retried[1].id
    assert sorted(await names(stubs, install)) == ["first", "late", "other"]
    assert cancelled_calls(caplog, "CreateSchedule") == 1


@pytest.mark.usefixtures("app")
async def test_update_cancelled_while_waiting_for_the_row_changes_nothing(
    stubs: Stubs,
    install: InstallHandle,
    blocker: asyncpg.Connection,
    monitor: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler_host.rpc")
    before = (
        await stubs.host.CreateSchedule(
            pb.CreateScheduleRequest(schedule=new_schedule("before")), metadata=install.metadata
        )
    ).schedule
    await blocker.execute("SELECT 1 FROM schedules WHERE id = $1 FOR UPDATE", uuid.UUID(before.id))
    call = stubs.host.UpdateSchedule(
        pb.UpdateScheduleRequest(schedule=schedule_pb2.Schedule(id=before.id, name="after")),
        metadata=install.metadata,
        timeout=DEADLINE,
    )
    await expect_deadline(asyncio.ensure_future(call))
    await wait_until_released(monitor, blocker)
    await blocker.execute("COMMIT")
    await asyncio.sleep(0.2)
    now = (
        await stubs.host.GetSchedule(
            pb.GetScheduleRequest(id=before.id), metadata=install.metadata, timeout=5
        )
    ).schedule
    assert (now.name, now.etag, now.update_time) == (before.name, before.etag, before.update_time)
    assert cancelled_calls(caplog, "UpdateSchedule") == 1


@pytest.mark.usefixtures("app")
async def test_many_cancelled_reads_give_back_their_connections(
    stubs: Stubs,
    install: InstallHandle,
    blocker: asyncpg.Connection,
    monitor: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More cancelled calls than the pool has connections (10 + 10 overflow): afterwards the
    server still has connections for other calls, at once."""
    caplog.set_level(logging.INFO, logger="scheduler_host.rpc")
    await blocker.execute("LOCK TABLE schedules IN ACCESS EXCLUSIVE MODE")
    calls = [
        asyncio.ensure_future(
            stubs.host.ListSchedules(
                pb.ListSchedulesRequest(), metadata=install.metadata, timeout=DEADLINE
            )
        )
        for _ in range(25)
    ]
    await wait_for_waiters(monitor, blocker, 15)
    for call in calls:
        await expect_deadline(call)
    released_after = await wait_until_released(monitor, blocker)
    # The table is still locked; calls that do not need it are served without waiting.
    started = time.monotonic()
    endpoints = await stubs.host.GetEndpoints(
        pb.GetEndpointsRequest(), metadata=install.metadata, timeout=3
    )
    assert endpoints.endpoints
    assert time.monotonic() - started < 1.0
    await blocker.execute("ROLLBACK")
    listed = await stubs.host.ListSchedules(
        pb.ListSchedulesRequest(), metadata=install.metadata, timeout=3
    )
    assert list(listed.schedules) == []
    assert cancelled_calls(caplog, "ListSchedules") == 25
    assert released_after < SETTLE


@pytest.mark.usefixtures("app")
async def test_calls_that_find_no_free_connection_are_unavailable(
    stubs: Stubs, install: InstallHandle, blocker: asyncpg.Connection
) -> None:
    """With every pooled connection (10 + 10 overflow) waiting in a slow database, further calls
    wait for the pool's timeout (10 s) and then answer UNAVAILABLE, which clients retry, not
    INTERNAL."""
    await blocker.execute("LOCK TABLE schedules IN ACCESS EXCLUSIVE MODE")
    calls = [
        asyncio.ensure_future(
            stubs.host.ListSchedules(
                pb.ListSchedulesRequest(), metadata=install.metadata, timeout=20
            )
        )
        for _ in range(24)
    ]
    answers: Counter[tuple[str, str]] = Counter()
    try:
        done, _ = await asyncio.wait(calls, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        for call in done:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                call.result()
            failure = failure_of(raised.value)
            answers[(failure.code.name, failure.reason)] += 1
    finally:
        await blocker.execute("ROLLBACK")
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            failure = failure_of(result)
            answers[(failure.code.name, failure.reason)] += 1
        else:
            answers[("OK", "")] += 1
    assert answers[("UNAVAILABLE", "DATABASE_UNAVAILABLE")] >= 1, answers
    assert set(answers) <= {("OK", ""), ("UNAVAILABLE", "DATABASE_UNAVAILABLE")}, answers
