"""Builders and direct SQL for the storage's integration tests: installs and schedules as domain
values, rows written and read past the repositories (to set up what only the dispatcher or an
older revision writes, and to check what was stored), and waits for the database's own state.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from scheduler_host.adapters.db.buckets import bucket_of
from scheduler_host.adapters.db.pool import connect_dsn
from scheduler_host.domain.endpoints import Endpoint, endpoint_id
from scheduler_host.domain.install import Install
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.ports import UnitOfWorkFactory

__all__ = [
    "T0",
    "Db",
    "as_read",
    "connect",
    "insert_run",
    "insert_schedule",
    "lock_waiters",
    "make_install",
    "make_schedule",
    "one_time",
    "run_row",
    "save_installs",
    "schedule_row",
    "wait_for",
    "wait_for_lock_waiters",
]

Db = asyncpg.Connection

# A fixed instant with microseconds, so a value that lost precision shows.
T0 = datetime(2026, 3, 8, 6, 30, 0, 123456, tzinfo=UTC)

# How long a wait for the database's own state may take before the test fails (a guard against
# hanging, not a measure of speed).
_PATIENCE = 30.0


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def connect(url: str) -> Db:
    """A connection of its own (not pooled), decoding JSON as the pool does."""
    conn = await asyncpg.connect(connect_dsn(url))
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=_dumps, decoder=json.loads, schema="pg_catalog"
        )
    return conn


def make_install(
    *,
    install_id: uuid.UUID | None = None,
    tenant_id: str = "tenant-a",
    version_id: str = "v1",
    endpoints: Sequence[tuple[str, str]] = (("POST", "/sync"), ("GET", "/status")),
    enabled: bool = True,
    capabilities: tuple[str, ...] = ("cap:scheduler.manage", "cap:http.fetch"),
    at: datetime = T0,
) -> Install:
    iid = install_id or uuid.uuid4()
    return Install(
        install_id=iid,
        tenant_id=tenant_id,
        registry_id="registry-ext",
        version_id=version_id,
        content_hash=f"sha256:{version_id}",
        enabled=enabled,
        granted_capabilities=capabilities,
        endpoints=tuple(
            Endpoint(endpoint_id(iid, version_id, m, p), m, p, f"handler{p}") for m, p in endpoints
        ),
        create_time=at,
        update_time=at,
    )


def make_schedule(
    install: Install,
    *,
    name: str | None = None,
    created: datetime = T0,
    payload: Any = None,
    cron: str = "*/5 * * * *",
    enabled: bool = True,
    next_run_time: datetime | None = None,
    endpoint: int = 0,
    schedule_id: uuid.UUID | None = None,
) -> Schedule:
    e = install.endpoints[endpoint]
    return Schedule(
        id=schedule_id or uuid.uuid4(),
        install_id=install.install_id,
        tenant_id=install.tenant_id,
        endpoint_id=e.id,
        endpoint_method=e.method,
        endpoint_path=e.path,
        name=name,
        cron=cron,
        timezone="Europe/Berlin",
        enabled=enabled,
        payload=payload,
        next_run_time=next_run_time
        if next_run_time is not None
        else created + timedelta(minutes=5),
        last_run_time=None,
        last_run_status=None,
        last_error=None,
        create_time=created,
        update_time=created,
        revision=1,
    )


def as_read(install: Install) -> Install:
    """`install` as a read returns it: endpoints ordered by path, then method."""
    return replace(
        install, endpoints=tuple(sorted(install.endpoints, key=lambda e: (e.path, e.method)))
    )


def one_time(schedule: Schedule, run_at: datetime) -> Schedule:
    """`schedule` as a one-time schedule at `run_at` (no cron)."""
    return replace(schedule, cron="", run_at=run_at, next_run_time=run_at)


async def save_installs(factory: UnitOfWorkFactory, *installs: Install) -> None:
    async with factory() as u:
        for install in installs:
            await u.installs.save(install)
        await u.commit()


_SCHEDULE_INSERT = """INSERT INTO schedules (bucket, id, tenant_id, install_id, endpoint_id,
    endpoint_method, endpoint_path, name, cron, run_at, start_time, end_time, jitter_ms, timezone,
    enabled, payload, payload_wire, next_run_time, last_run_time, last_run_status, last_error,
    running_run_id, revision, create_time, update_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
    $20, $21, $22, $23, $24, $25)"""


async def insert_schedule(
    db: Db, s: Schedule, *, running_run_id: uuid.UUID | None = None
) -> Schedule:
    """Write `s` as it is (create times unchanged, unlike a create), with its bucket."""
    await db.execute(
        _SCHEDULE_INSERT,
        bucket_of(s.tenant_id),
        s.id,
        s.tenant_id,
        s.install_id,
        s.endpoint_id,
        s.endpoint_method,
        s.endpoint_path,
        s.name,
        s.cron,
        s.run_at,
        s.start_time,
        s.end_time,
        s.jitter // timedelta(milliseconds=1),
        s.timezone,
        s.enabled,
        s.payload,
        s.payload_wire,
        s.next_run_time,
        s.last_run_time,
        s.last_run_status,
        s.last_error,
        running_run_id,
        s.revision,
        s.create_time,
        s.update_time,
    )
    return s


async def insert_run(
    db: Db,
    s: Schedule,
    scheduled_time: datetime,
    *,
    status: str = "success",
    trigger: str = "schedule",
    lease_until: datetime | None = None,
    attempt: int = 1,
    run_id: uuid.UUID | None = None,
) -> uuid.UUID:
    rid = run_id or uuid.uuid4()
    finished = status not in ("pending", "running")
    await db.execute(
        """INSERT INTO schedule_runs (bucket, id, tenant_id, install_id, schedule_id, trigger,
            scheduled_time, start_time, finish_time, status, attempt, error, lease_until)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
        bucket_of(s.tenant_id),
        rid,
        s.tenant_id,
        s.install_id,
        s.id,
        trigger,
        scheduled_time,
        scheduled_time,
        scheduled_time + timedelta(seconds=1) if finished else None,
        status,
        attempt,
        "Runner returned status 500" if status == "error" else None,
        lease_until,
    )
    return rid


async def schedule_row(db: Db, schedule_id: uuid.UUID) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM schedules WHERE id = $1", schedule_id)
    assert row is not None, f"no schedule {schedule_id}"
    return row


async def run_row(db: Db, run_id: uuid.UUID) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM schedule_runs WHERE id = $1", run_id)
    assert row is not None, f"no run {run_id}"
    return row


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Until `condition()` holds (the database's own state, reached soon); fails after a
    generous patience instead of hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PATIENCE
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"still not {what} after {_PATIENCE} s")
        await asyncio.sleep(0.02)


async def lock_waiters(db: Db) -> int:
    """Sessions of this database waiting for a lock."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


async def wait_for_lock_waiters(db: Db, count: int = 1) -> None:
    async def enough() -> bool:
        return await lock_waiters(db) >= count

    await wait_for(enough, f"{count} session(s) waiting for a lock")
