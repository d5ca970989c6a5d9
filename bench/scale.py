"""Scale: bulk-loaded schedules (COPY, then INSERT ... SELECT generate_series), and the plans of
the dispatcher's poll and claim.

Bulk rows are what the API would have written: installs with the scheduler capability (each its
own tenant, registered in install_directory, with its tenant's bucket), their endpoints (ids as
the service derives them), 50 schedules per install with daily crons, unique names, payloads in
both encodings (JSONB and the google.protobuf.Value bytes a read sends back) and the next run time
of their cron in UTC. Buckets are computed in Python (`bucket_of`, per install's tenant) and
passed in the staged table; everything else is computed by PostgreSQL.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import struct_pb2

from scheduler_host.adapters.db.buckets import BUCKETS, bucket_of
from scheduler_host.adapters.db.pool import connect_dsn
from scheduler_host.domain.endpoints import endpoint_id

PER_INSTALL = 50
# Bulk crons are daily at hours 3 to 23 hours ahead: none of them falls due during the run.
BULK_ENDPOINTS = (("POST", "/sync", "sync"), ("GET", "/status", "status"))
# The dispatcher's batch (Settings.dispatch_batch_size): the claim explained takes this many.
CLAIM_LIMIT = 100

_STAGE = """CREATE TEMP TABLE bench_bulk_installs (
    n bigint PRIMARY KEY, id uuid, tenant_id text, bucket smallint, sync_id uuid, status_id uuid
) ON COMMIT DROP"""
_INSTALLS = """INSERT INTO installs (bucket, id, tenant_id, registry_id, version_id, content_hash,
    enabled, granted_capabilities, create_time, update_time)
SELECT bucket, id, tenant_id, 'bulk-ext', 'v1', 'sha256:bulk', true,
       '["cap:scheduler.manage"]'::jsonb, $1, $1
FROM bench_bulk_installs"""
_DIRECTORY = """INSERT INTO install_directory (install_id, bucket, tenant_id)
SELECT id, bucket, tenant_id FROM bench_bulk_installs"""
_ENDPOINTS = """INSERT INTO endpoints (bucket, install_id, version_id, method, path, id, tenant_id,
    handler)
SELECT bucket, id, 'v1', 'POST', '/sync', sync_id, tenant_id, 'sync' FROM bench_bulk_installs
UNION ALL
SELECT bucket, id, 'v1', 'GET', '/status', status_id, tenant_id, 'status' FROM bench_bulk_installs
"""
# $3: the Value encodings of the PER_INSTALL payloads {"full": true, "n": k}, k = g % PER_INSTALL.
_SCHEDULES = """
INSERT INTO schedules (
    bucket, id, tenant_id, install_id, endpoint_id, endpoint_method, endpoint_path, name, cron,
    run_at, start_time, end_time, jitter_ms, timezone, enabled, payload, payload_wire,
    next_run_time, last_run_time, last_run_status, last_error, running_run_id, revision,
    create_time, update_time)
SELECT b.bucket, gen_random_uuid(), b.tenant_id, b.id, b.sync_id, 'POST', '/sync',
       'bulk-' || g, (g % 60) || ' ' || t.hour || ' * * *', NULL, NULL, NULL, 0, 'UTC', true,
       jsonb_build_object('full', true, 'n', g % 50), ($3::bytea[])[g % 50 + 1],
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


def payload_wires() -> list[bytes]:
    """The google.protobuf.Value bytes of each bulk payload, as the API stores a caller's."""
    wires = []
    for k in range(PER_INSTALL):
        value = struct_pb2.Value()
        value.struct_value.update({"full": True, "n": k})
        wires.append(value.SerializeToString(deterministic=True))
    return wires


@dataclass
class BulkLoad:
    rows: int
    installs: int
    seconds: float
    analyze_seconds: float
    table_rows: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def connect(dsn: str, **kwargs: Any) -> Any:
    """A connection with the service's JSON codecs (JSONB in and out as Python values)."""
    conn = await asyncpg.connect(connect_dsn(dsn), **kwargs)
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
    return conn


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
        for n in range(installs):
            iid = uuid.uuid4()
            tenant = f"bulk-tenant-{start + n}"
            sync, status = (endpoint_id(iid, "v1", m, p) for m, p, _ in BULK_ENDPOINTS)
            staged.append((n, iid, tenant, bucket_of(tenant), sync, status))
        async with conn.transaction():
            await conn.execute(_STAGE)
            await conn.copy_records_to_table("bench_bulk_installs", records=staged)
            await conn.execute(_INSTALLS, now)
            await conn.execute(_DIRECTORY)
            await conn.execute(_ENDPOINTS)
            # In chunks, so one statement's memory stays small.
            chunk = 200_000
            wires = payload_wires()
            for first in range(0, rows, chunk):
                await conn.execute(_SCHEDULES, first, min(rows, first + chunk), wires)
        loaded = time.monotonic() - started
        started = time.monotonic()
        await conn.execute("VACUUM ANALYZE schedules")
        for table in ("installs", "install_directory", "endpoints"):
            await conn.execute(f"ANALYZE {table}")
        # Flush what the load dirtied, so no checkpoint runs during the measurements after it.
        await conn.execute("CHECKPOINT")
        analyzed = time.monotonic() - started
        table_rows = int(await conn.fetchval("SELECT count(*) FROM schedules"))
    finally:
        await conn.close()
    return BulkLoad(rows, installs, round(loaded, 2), round(analyzed, 2), table_rows)


@dataclass
class DuePlan:
    query: str  # what was explained
    statement: str
    plan: str
    uses_index: bool
    execution_ms: float | None
    parameters: str = ""
    rows: int | None = None  # rows the statement returned
    # The poll (`dispatch_poll` over every bucket, lock-free), explained beside the claim.
    poll_statement: str = ""
    poll_plan: str = ""
    poll_execution_ms: float | None = None
    poll_buckets: int | None = None  # buckets the poll reported work in
    # The same claim at the current time in the same bucket (nothing due: an empty claim).
    empty_plan: str = ""
    empty_execution_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _uses_index(plan: str) -> bool:
    return "Seq Scan on schedules" not in plan and "ix_schedules_due" in plan


async def explain(dsn: str, statement: str, parameters: Any = ()) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of `statement` in a transaction that is rolled back."""
    conn = await connect(dsn)
    try:
        return await _explain(conn, statement, parameters)
    finally:
        await conn.close()


async def _explain(conn: Any, statement: str, parameters: Any = ()) -> str:
    transaction = conn.transaction()
    await transaction.start()
    try:
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + statement, *(parameters or ()))
    finally:
        await transaction.rollback()
    return "\n".join(str(r[0]) for r in rows)


def execution_ms(plan: str) -> float | None:
    for line in plan.splitlines():
        if line.strip().startswith("Execution Time:"):
            return float(line.split(":")[1].split()[0])
    return None


def _returned_rows(plan: str) -> int | None:
    """The rows the top node returned (`actual time=... rows=N`)."""
    for line in plan.splitlines():
        if "actual time=" in line:
            return int(line.split(" rows=")[-1].split()[0])
    return None


async def explain_due_query(dsn: str) -> DuePlan:
    """The dispatcher's statements as they run (`PgDispatchStore`): the claim `_CLAIM_DUE` of
    the bucket holding the most due-able schedules with `now` set to the CLAIM_LIMIT-th earliest
    next run time there (so a full batch is due; nothing is written, the transaction is rolled
    back), the same claim at the current time, and the lock-free poll `_POLL`."""
    from scheduler_host.adapters.db import dispatch_store

    claim, poll = dispatch_store._CLAIM_DUE, dispatch_store._POLL
    conn = await connect(dsn)
    try:
        bucket = await conn.fetchval(
            "SELECT bucket FROM schedules WHERE enabled AND next_run_time IS NOT NULL "
            "GROUP BY bucket ORDER BY count(*) DESC, bucket LIMIT 1"
        )
        if bucket is None:
            raise RuntimeError("no schedule has a next run time")
        in_bucket = await conn.fetchval(
            "SELECT count(*) FROM schedules WHERE bucket = $1 AND enabled "
            "AND next_run_time IS NOT NULL",
            bucket,
        )
        due_at = await conn.fetchval(
            "SELECT next_run_time FROM schedules WHERE bucket = $1 AND enabled "
            "AND next_run_time IS NOT NULL ORDER BY next_run_time OFFSET $2 - 1 LIMIT 1",
            bucket,
            CLAIM_LIMIT,
        )
        if due_at is None:  # fewer than a batch in the bucket: all of them
            due_at = await conn.fetchval(
                "SELECT max(next_run_time) FROM schedules WHERE bucket = $1 AND enabled "
                "AND next_run_time IS NOT NULL",
                bucket,
            )
        plan = await _explain(conn, claim, (bucket, due_at, CLAIM_LIMIT))
        now = datetime.now(UTC)
        empty = await _explain(conn, claim, (bucket, now, CLAIM_LIMIT))
        poll_plan = await _explain(conn, poll, (BUCKETS,))
        poll_buckets = len(await conn.fetch(poll, BUCKETS))
    finally:
        await conn.close()
    return DuePlan(
        query="dispatcher claim (PgDispatchStore.claim_due, _CLAIM_DUE)",
        statement=claim,
        plan=plan,
        uses_index=_uses_index(plan),
        execution_ms=execution_ms(plan),
        parameters=f"bucket {bucket} ({in_bucket:,} schedules with a next run time), now "
        f"{due_at.isoformat()} (the {CLAIM_LIMIT}th earliest next run time there), limit "
        f"{CLAIM_LIMIT}",
        rows=_returned_rows(plan),
        poll_statement=poll,
        poll_plan=poll_plan,
        poll_execution_ms=execution_ms(poll_plan),
        poll_buckets=poll_buckets,
        empty_plan=empty,
        empty_execution_ms=execution_ms(empty),
    )
