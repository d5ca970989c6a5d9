"""Scale: bulk-loaded schedules (INSERT ... SELECT generate_series), and the due query's plan.

Bulk rows are what the API would have written: installs with the scheduler capability, their
endpoints (ids as the service derives them), 50 schedules per install with daily crons, unique
names, payloads and the next run time of their cron in UTC.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scheduler_host.domain.endpoints import endpoint_id

PER_INSTALL = 50
# Bulk crons are daily at hours 3 to 23 hours ahead: none of them falls due during the run.
BULK_ENDPOINTS = (("POST", "/sync", "sync"), ("GET", "/status", "status"))
FALLBACK_DUE_QUERY = (
    "SELECT id FROM schedules WHERE enabled AND next_run_time IS NOT NULL "
    "AND next_run_time <= now() ORDER BY next_run_time LIMIT 100 FOR UPDATE SKIP LOCKED"
)

_SCHEDULES = """
INSERT INTO schedules (
    id, tenant_id, install_id, endpoint_id, endpoint_method, endpoint_path, name, cron,
    timezone, enabled, payload, next_run_time, last_run_time, last_run_status, last_error,
    running_run_id, revision, create_time, update_time)
SELECT gen_random_uuid(), b.tenant_id, b.id, b.endpoint_id, 'POST', '/sync',
       'bulk-' || g, (g % 60) || ' ' || t.hour || ' * * *', 'UTC', true,
       jsonb_build_object('full', true, 'n', g),
       CASE WHEN t.at > now() THEN t.at ELSE t.at + interval '1 day' END,
       NULL, NULL, NULL, NULL, 1, now() - make_interval(secs => g), now()
FROM generate_series($1::bigint, $2::bigint - 1) AS g
JOIN bench_bulk_installs b ON b.n = g / 50
CROSS JOIN LATERAL (
    SELECT ((extract(hour FROM now() AT TIME ZONE 'UTC')::int + 3 + g / 60 % 21) % 24)::int
           AS hour
) h
CROSS JOIN LATERAL (
    SELECT h.hour, date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                   + make_interval(hours => h.hour, mins => (g % 60)::int) AS at
) t
"""


@dataclass
class BulkLoad:
    rows: int
    installs: int
    seconds: float
    analyze_seconds: float
    table_rows: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def schedule_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM schedules"))
    finally:
        await conn.close()


async def bulk_load(dsn: str, total: int) -> BulkLoad:
    """Add bulk schedules (50 per new install) until the table holds `total` rows."""
    conn = await asyncpg.connect(dsn, command_timeout=3600)
    try:
        have = int(await conn.fetchval("SELECT count(*) FROM schedules"))
        rows = max(0, total - have)
        installs = -(-rows // PER_INSTALL)
        start = int(await conn.fetchval("SELECT count(*) FROM installs"))
        started = time.monotonic()
        now = datetime.now(UTC)
        staged = []
        install_rows = []
        endpoint_rows = []
        for n in range(installs):
            iid = uuid.uuid4()
            tenant = f"bulk-tenant-{start + n}"
            install_rows.append(
                (iid, tenant, "bulk-ext", "v1", "sha256:bulk", True, '["cap:scheduler.manage"]')
            )
            for method, path, handler in BULK_ENDPOINTS:
                eid = endpoint_id(iid, "v1", method, path)
                endpoint_rows.append((eid, tenant, iid, "v1", method, path, handler))
            staged.append((n, iid, tenant, endpoint_id(iid, "v1", "POST", "/sync")))
        async with conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE bench_bulk_installs "
                "(n bigint PRIMARY KEY, id uuid, tenant_id text, endpoint_id uuid) ON COMMIT DROP"
            )
            await conn.copy_records_to_table("bench_bulk_installs", records=staged)
            await conn.executemany(
                "INSERT INTO installs (id, tenant_id, registry_id, version_id, content_hash, "
                "enabled, granted_capabilities, create_time, update_time) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $8)",
                [(*row, now) for row in install_rows],
            )
            await conn.copy_records_to_table(
                "endpoints",
                records=endpoint_rows,
                columns=[
                    "id",
                    "tenant_id",
                    "install_id",
                    "version_id",
                    "method",
                    "path",
                    "handler",
                ],
            )
            # In chunks, so one statement's memory stays small.
            chunk = 200_000
            for first in range(0, rows, chunk):
                await conn.execute(_SCHEDULES, first, min(rows, first + chunk))
        loaded = time.monotonic() - started
        started = time.monotonic()
        await conn.execute("VACUUM ANALYZE schedules")
        await conn.execute("ANALYZE installs")
        await conn.execute("ANALYZE endpoints")
        # Flush what the load dirtied, so no checkpoint runs during the measurements after it.
        await conn.execute("CHECKPOINT")
        analyzed = time.monotonic() - started
        table_rows = int(await conn.fetchval("SELECT count(*) FROM schedules"))
    finally:
        await conn.close()
    return BulkLoad(rows, installs, round(loaded, 2), round(analyzed, 2), table_rows)


class _Captured(Exception):
    def __init__(self, statement: str, parameters: Any) -> None:
        super().__init__(statement)
        self.statement = statement
        self.parameters = parameters


@dataclass
class DuePlan:
    query: str  # "dispatcher claim query" or "fallback"
    statement: str
    plan: str
    uses_index: bool
    execution_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def _claim_statement(url: str) -> tuple[str, Any]:
    """The SQL the dispatcher's claim runs, captured before it executes (nothing is claimed)."""
    from scheduler_host.adapters.db.dispatch_store import SqlDispatchStore

    engine = create_async_engine(url)

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "FOR UPDATE" in statement and "schedules" in statement:
            raise _Captured(statement, parameters)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", capture)
    now = datetime.now(UTC)
    store: Any = SqlDispatchStore(engine, 100)
    try:
        await store.claim_due(now, 100, now + timedelta(minutes=5), lambda target: None)
    except _Captured as captured:
        return captured.statement, captured.parameters
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, _Captured):
            return cause.statement, cause.parameters
        raise
    finally:
        await engine.dispose()
    raise RuntimeError("the claim ran no FOR UPDATE query on schedules")


def _uses_index(plan: str) -> bool:
    return "Seq Scan on schedules" not in plan and "ix_schedules_due" in plan


async def explain(url: str, statement: str, parameters: Any = ()) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of `statement` in a transaction that is rolled back."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            rows = await conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + statement, tuple(parameters or ())
            )
            plan = "\n".join(str(r[0]) for r in rows)
            await transaction.rollback()
    finally:
        await engine.dispose()
    return plan


def execution_ms(plan: str) -> float | None:
    for line in plan.splitlines():
        if line.strip().startswith("Execution Time:"):
            return float(line.split(":")[1].split()[0])
    return None


async def explain_due_query(url: str) -> DuePlan:
    """The dispatcher's claim query as it runs, explained; else the plain due query."""
    try:
        statement, parameters = await _claim_statement(url)
        which = "dispatcher claim query (SqlDispatchStore.claim_due)"
    except Exception as exc:
        statement, parameters = FALLBACK_DUE_QUERY, ()
        which = f"fallback query (capturing the claim failed: {type(exc).__name__})"
    plan = await explain(url, statement, parameters)
    return DuePlan(which, statement, plan, _uses_index(plan), execution_ms(plan))
