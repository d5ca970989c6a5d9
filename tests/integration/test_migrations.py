"""The Alembic migrations on real PostgreSQL: the migrated schema is schema.py's, every key of a
tenant table starts with `bucket`, 0003 carries a 0002 database's rows over (and back), and the
bucket of a tenant never changes."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from scheduler_host.adapters import migrations
from scheduler_host.adapters.db.buckets import BUCKETS, bucket_of
from scheduler_host.adapters.db.pool import DatabasePool
from scheduler_host.adapters.db.unit_of_work import PgUnitOfWorkFactory
from scheduler_host.adapters.migrations import (
    HEAD_REVISION,
    MigrationError,
    current_revision,
    database_is_current,
    downgrade_database,
    schema,
    upgrade_database,
)
from tests.support.postgres import PostgresServer, scratch_database
from tests.support.storage import T0, Db, connect

_T = TypeVar("_T")

APPLICATION_TABLES = {t.name for t in schema.metadata.sorted_tables}
PARTIAL_INDEXES = {"uq_schedules_install_name", "ix_schedules_due", "ix_schedule_runs_open_lease"}
HOUR = timedelta(hours=1)


# --------------------------------------------------------------------------------------------
# Schema parity with schema.py
# --------------------------------------------------------------------------------------------


def _schema_diff(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, schema.metadata))


def _index_predicates(connection: sa.Connection, schema: str | None = None) -> dict[str, str]:
    """Index name -> WHERE clause as the database reports it, for every partial index."""
    inspector = sa.inspect(connection)
    found: dict[str, str] = {}
    for table in APPLICATION_TABLES:
        for index in inspector.get_indexes(table, schema=schema):
            predicate = index.get("dialect_options", {}).get("postgresql_where")
            if predicate is not None:
                found[str(index["name"])] = str(predicate)
    return found


def _check_constraints(connection: sa.Connection, schema: str | None = None) -> dict[str, str]:
    """Check constraint name -> its text as the database reports it."""
    inspector = sa.inspect(connection)
    return {
        str(check["name"]): str(check["sqltext"])
        for table in APPLICATION_TABLES
        for check in inspector.get_check_constraints(table, schema=schema)
    }


def _declared(connection: sa.Connection) -> tuple[dict[str, str], dict[str, str]]:
    """The same two for schema.metadata. PostgreSQL reprints predicates (casts, IN as = ANY
    (ARRAY[...])), so let it reprint the declared ones too: build them in a scratch schema and
    roll it all back."""
    try:
        connection.execute(sa.text("CREATE SCHEMA parity_reference"))
        translated = connection.execution_options(schema_translate_map={None: "parity_reference"})
        schema.metadata.create_all(translated, checkfirst=False)
        return (
            _index_predicates(connection, schema="parity_reference"),
            _check_constraints(connection, schema="parity_reference"),
        )
    finally:
        connection.rollback()


async def _inspect(url: str, work: Callable[[sa.Connection], _T]) -> _T:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


async def _page_token_key(url: str) -> bytes:
    db = await connect(url)
    try:
        rows = await db.fetch("SELECT value FROM service_keys WHERE name = 'page_token'")
    finally:
        await db.close()
    assert len(rows) == 1
    value = rows[0]["value"]
    assert isinstance(value, bytes)
    return value


async def _assert_schema_matches_tables(url: str) -> None:
    assert await _inspect(url, _schema_diff) == []
    # Alembic compares neither partial-index predicates nor check constraints.
    live_predicates = await _inspect(url, _index_predicates)
    live_checks = await _inspect(url, _check_constraints)
    assert set(live_predicates) == PARTIAL_INDEXES
    assert set(live_checks) == {"ck_schedules_cron_or_run_at"}
    assert (live_predicates, live_checks) == await _inspect(url, _declared)


def test_head_revision_is_the_newest_script() -> None:
    config = Config()
    config.set_main_option("script_location", migrations.__path__[0])
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


async def test_upgrade_creates_exactly_the_declared_schema(empty_pg_url: str) -> None:
    url = empty_pg_url
    assert await current_revision(url) is None
    assert await database_is_current(url) is False

    await upgrade_database(url)

    assert await current_revision(url) == HEAD_REVISION
    assert await database_is_current(url) is True
    await _assert_schema_matches_tables(url)
    assert len(await _page_token_key(url)) == 32


async def test_the_schema_check_notices_a_missing_index_and_a_changed_predicate(
    pg_url: str,
) -> None:
    # Guards the parity check above against silently comparing nothing.
    def drop_and_diff(connection: sa.Connection) -> list[Any]:
        connection.execute(sa.text("DROP INDEX ix_schedules_bucket_install_id_create_time_id"))
        return _schema_diff(connection)

    diff = await _inspect(pg_url, drop_and_diff)
    assert [(d[0], d[1].name) for d in diff] == [
        ("add_index", "ix_schedules_bucket_install_id_create_time_id")
    ]

    db = await connect(pg_url)
    try:
        await db.execute("DROP INDEX ix_schedules_due")
        await db.execute("CREATE INDEX ix_schedules_due ON schedules (bucket, next_run_time)")
    finally:
        await db.close()
    assert "ix_schedules_due" not in await _inspect(pg_url, _index_predicates)


async def test_upgrading_twice_is_a_no_op(pg_url: str) -> None:
    key = await _page_token_key(pg_url)

    await upgrade_database(pg_url)

    assert await current_revision(pg_url) == HEAD_REVISION
    assert await _page_token_key(pg_url) == key
    await _assert_schema_matches_tables(pg_url)


async def _table_names(url: str) -> set[str]:
    return await _inspect(url, lambda c: set(sa.inspect(c).get_table_names()))


async def test_downgrade_to_base_drops_everything_and_upgrade_works_again(pg_url: str) -> None:
    first_key = await _page_token_key(pg_url)

    await downgrade_database(pg_url)

    assert await current_revision(pg_url) is None
    assert await database_is_current(pg_url) is False
    assert await _table_names(pg_url) <= {"alembic_version"}
    assert await _functions(pg_url) == {}

    await upgrade_database(pg_url)

    assert await current_revision(pg_url) == HEAD_REVISION
    await _assert_schema_matches_tables(pg_url)
    # A fresh deployment gets a fresh signing key.
    assert await _page_token_key(pg_url) != first_key


async def test_an_unreachable_database_raises_one_line_migration_error() -> None:
    # Port 1 on loopback refuses at once; the password must not leak into the message.
    url = "postgresql+asyncpg://someone:s3cret@127.0.0.1:1/nowhere"
    calls: list[Callable[[str], Awaitable[object]]] = [
        upgrade_database,
        current_revision,
        downgrade_database,
    ]
    for call in calls:
        with pytest.raises(MigrationError) as raised:
            await call(url)
        message = str(raised.value)
        assert "\n" not in message
        assert "s3cret" not in message
        assert "127.0.0.1:1" in message


async def test_an_unknown_revision_raises_migration_error(empty_pg_url: str) -> None:
    with pytest.raises(MigrationError, match="9999"):
        await upgrade_database(empty_pg_url, "9999")
    assert await current_revision(empty_pg_url) is None


# --------------------------------------------------------------------------------------------
# Buckets in the schema
# --------------------------------------------------------------------------------------------


def test_the_bucket_of_a_tenant_never_changes() -> None:
    # Stored in every row of a tenant: a different function would lose every tenant's rows.
    assert BUCKETS == 256
    pinned = {
        "tenant-a": 225,
        "tenant-b": 90,
        "acme": 160,
        "Tenant-A": 58,
        "": 20,
        "0": 56,
        "тенант": 31,
        "x" * 128: 246,
    }
    assert {tenant: bucket_of(tenant) for tenant in pinned} == pinned


_KEY_COLUMNS = """
SELECT c.relname AS table_name, i.relname AS name, 'index' AS kind,
       (SELECT a.attname FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum = x.indkey[0]) AS first_column,
       NULL::name AS referred_table, NULL::name AS referred_first_column
FROM pg_index x
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])
UNION ALL
SELECT c.relname, k.conname,
       CASE k.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique'
                      ELSE 'foreign key' END,
       (SELECT a.attname FROM pg_attribute a
        WHERE a.attrelid = k.conrelid AND a.attnum = k.conkey[1]),
       r.relname,
       (SELECT a.attname FROM pg_attribute a
        WHERE a.attrelid = k.confrelid AND a.attnum = k.confkey[1])
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class r ON r.oid = k.confrelid
WHERE n.nspname = 'public' AND c.relname = ANY($1::text[]) AND k.contype IN ('p', 'u', 'f')
"""


async def test_every_key_and_index_of_a_tenant_table_starts_with_the_bucket(db: Db) -> None:
    rows = await db.fetch(_KEY_COLUMNS, list(schema.TENANT_TABLES))
    kinds = {(r["table_name"], r["kind"]) for r in rows}
    for table in schema.TENANT_TABLES:
        assert (table, "primary key") in kinds, table
    # The catalogs were read: every index and constraint the schema declares is here.
    assert (
        sum(1 for r in rows if r["kind"] == "index")
        == sum(len(schema.metadata.tables[t].indexes) for t in schema.TENANT_TABLES)
        + len(schema.TENANT_TABLES)  # each primary key's index
        + 1  # the unique constraint of schedule_runs
    )
    assert sum(1 for r in rows if r["kind"] == "foreign key") == 4
    not_by_bucket = [
        (r["table_name"], r["kind"], r["name"], r["first_column"])
        for r in rows
        if r["first_column"] != "bucket"
    ]
    assert not_by_bucket == []
    # A foreign key refers to a tenant table by its bucket too, so both rows live together.
    for r in rows:
        if r["kind"] == "foreign key":
            assert r["referred_table"] in schema.TENANT_TABLES, r["name"]
            assert r["referred_first_column"] == "bucket", r["name"]


async def test_tenant_tables_carry_the_bucket_and_the_others_are_the_reference_tables(
    db: Db,
) -> None:
    present = {
        r[0]
        for r in await db.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
    }
    assert present - set(schema.TENANT_TABLES) - {"alembic_version"} == {
        "install_directory",
        "service_keys",
        "dispatch_buckets",
    }
    # The poll probes from one row per bucket.
    assert [r[0] for r in await db.fetch("SELECT bucket FROM dispatch_buckets ORDER BY 1")] == list(
        range(BUCKETS)
    )
    columns = await db.fetch(
        "SELECT table_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' AND column_name = 'bucket'"
    )
    by_table = {r["table_name"]: (r["data_type"], r["is_nullable"]) for r in columns}
    for table in schema.TENANT_TABLES:
        assert by_table.get(table) == ("smallint", "NO"), table


# --------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------


async def _functions(url: str) -> dict[str, str]:
    """Function name -> its arguments, in the public schema."""
    db = await connect(url)
    try:
        rows = await db.fetch(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public'"
        )
    finally:
        await db.close()
    found: dict[str, str] = {}
    for r in rows:
        assert r["proname"] not in found, f"{r['proname']} is overloaded"
        found[r["proname"]] = r["args"]
    return found


async def test_0003_functions_come_with_the_upgrade_and_go_with_the_downgrade(
    empty_pg_url: str,
) -> None:
    url = empty_pg_url
    await upgrade_database(url, "0002")
    assert set(await _functions(url)) == {"rate_limit_hit"}

    await upgrade_database(url)

    functions = await _functions(url)
    bucket_functions = (
        "rate_limit_hit",
        "create_schedule",
        "finish_runs",
        "claim_runs",
        "cut_run_history",
    )
    assert set(functions) == {*bucket_functions, "dispatch_poll"}
    # Each takes the bucket first, so a sharded PostgreSQL can send the call to its shard.
    for name in bucket_functions:
        assert functions[name].startswith("p_bucket smallint"), (name, functions[name])
    assert functions["dispatch_poll"] == "p_buckets integer"

    await downgrade_database(url, "0002")

    # 0002's own rate_limit_hit, as that revision made it.
    assert await _functions(url) == {
        "rate_limit_hit": "p_scope text, p_tenant_id text, p_limit integer, "
        "p_window interval, p_now timestamp with time zone"
    }
    db = await connect(url)
    try:
        assert await db.fetchval("SELECT rate_limit_hit('s', 't', 1, '1 minute', $1)", T0) is None
        wait = await db.fetchval("SELECT rate_limit_hit('s', 't', 1, '1 minute', $1)", T0)
        assert wait == timedelta(minutes=1)
    finally:
        await db.close()

    await downgrade_database(url, "0001")
    assert await _functions(url) == {}


# --------------------------------------------------------------------------------------------
# 0002 -> 0003 -> 0002 with data
# --------------------------------------------------------------------------------------------

TENANTS = ("tenant-a", "tenant-b", "acme")


async def _fill_0002(db: Db) -> dict[str, list[uuid.UUID]]:
    """Rows of every kind, for several tenants in several buckets, as 0002 stored them."""
    assert len({bucket_of(t) for t in TENANTS}) == len(TENANTS)
    ids: dict[str, list[uuid.UUID]] = {"installs": [], "schedules": []}
    for n, tenant in enumerate(TENANTS):
        for k in range(2):
            iid = uuid.uuid4()
            ids["installs"].append(iid)
            at = T0 + n * HOUR + k * timedelta(minutes=1)
            await db.execute(
                "INSERT INTO installs (id, tenant_id, registry_id, version_id, content_hash, "
                "enabled, granted_capabilities, create_time, update_time) "
                "VALUES ($1, $2, 'ext', 'v1', 'sha256:v1', $3, $4, $5, $5)",
                iid,
                tenant,
                k == 0,
                ["cap:scheduler.manage"],
                at,
            )
            for method, path in (("POST", "/sync"), ("GET", "/status")):
                await db.execute(
                    "INSERT INTO endpoints (id, tenant_id, install_id, version_id, method, path, "
                    "handler) VALUES ($1, $2, $3, 'v1', $4, $5, 'h')",
                    uuid.uuid4(),
                    tenant,
                    iid,
                    method,
                    path,
                )
            for j in range(2):
                sid = uuid.uuid4()
                ids["schedules"].append(sid)
                await db.execute(
                    "INSERT INTO schedules (id, tenant_id, install_id, endpoint_id, "
                    "endpoint_method, endpoint_path, name, cron, timezone, enabled, payload, "
                    "next_run_time, last_run_time, last_run_status, last_error, revision, "
                    "create_time, update_time) "
                    "VALUES ($1, $2, $3, $4, 'POST', '/sync', $5, '*/5 * * * *', 'UTC', true, "
                    "$6, $7, $8, 'success', NULL, 3, $9, $9)",
                    sid,
                    tenant,
                    iid,
                    uuid.uuid4(),
                    f"schedule-{j}" if j == 0 else None,
                    {"tenant": tenant, "n": j},
                    at + HOUR,
                    at - HOUR,
                    at + j * timedelta(seconds=1),
                )
                for status, lease in (("success", None), ("running", at + 2 * HOUR)):
                    await db.execute(
                        "INSERT INTO schedule_runs (id, tenant_id, install_id, schedule_id, "
                        "trigger, scheduled_time, start_time, finish_time, status, attempt, "
                        "error, lease_until) "
                        "VALUES ($1, $2, $3, $4, 'schedule', $5, $5, $6, $7, 1, NULL, $8)",
                        uuid.uuid4(),
                        tenant,
                        iid,
                        sid,
                        at - (HOUR if lease is None else timedelta(0)),
                        at - HOUR + timedelta(seconds=2) if lease is None else None,
                        status,
                        lease,
                    )
            await db.execute(
                "INSERT INTO idempotency_keys (install_id, request_id, tenant_id, schedule_id, "
                "create_time) VALUES ($1, $2, $3, $4, $5)",
                iid,
                uuid.uuid4(),
                tenant,
                ids["schedules"][-1],
                at,
            )
            for h in range(2):
                await db.execute(
                    "INSERT INTO rate_limit_hits (tenant_id, scope, hit_time) VALUES ($1, $2, $3)",
                    tenant,
                    f"mutations:{iid}",
                    at + h * timedelta(seconds=1),
                )
    return ids


# Per table: the order rows are compared in, and the columns 0002 and 0003 share.
_SHARED: dict[str, tuple[str, tuple[str, ...]]] = {
    "installs": (
        "id",
        (
            "id",
            "tenant_id",
            "registry_id",
            "version_id",
            "content_hash",
            "enabled",
            "granted_capabilities",
            "create_time",
            "update_time",
        ),
    ),
    "endpoints": (
        "id",
        ("id", "tenant_id", "install_id", "version_id", "method", "path", "handler"),
    ),
    "schedules": (
        "id",
        (
            "id",
            "tenant_id",
            "install_id",
            "endpoint_id",
            "endpoint_method",
            "endpoint_path",
            "name",
            "cron",
            "timezone",
            "enabled",
            "payload",
            "next_run_time",
            "last_run_time",
            "last_run_status",
            "last_error",
            "running_run_id",
            "revision",
            "create_time",
            "update_time",
        ),
    ),
    "schedule_runs": (
        "id",
        (
            "id",
            "tenant_id",
            "install_id",
            "schedule_id",
            "trigger",
            "scheduled_time",
            "start_time",
            "finish_time",
            "status",
            "attempt",
            "error",
            "lease_until",
        ),
    ),
    "idempotency_keys": (
        "install_id, request_id",
        ("install_id", "request_id", "tenant_id", "schedule_id", "create_time"),
    ),
    # The serial id of 0002 is not a fact about a hit: 0003 drops it, a downgrade numbers anew.
    "rate_limit_hits": ("scope, hit_time", ("tenant_id", "scope", "hit_time")),
}


async def _shared_rows(db: Db) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {}
    for table, (order, cols) in _SHARED.items():
        rows = await db.fetch(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}")
        found[table] = [tuple(r) for r in rows]
    return found


async def _migrate(url: str, action: Callable[[str, str], Awaitable[None]], rev: str) -> None:
    await action(url, rev)
    assert await current_revision(url) == rev


async def test_a_0002_database_with_data_upgrades_keeping_every_row_and_downgrades_back(
    empty_pg_url: str,
) -> None:
    url = empty_pg_url
    await _migrate(url, upgrade_database, "0002")
    db = await connect(url)
    try:
        ids = await _fill_0002(db)
        before = await _shared_rows(db)
        assert {t: len(r) for t, r in before.items()} == {
            "installs": 6,
            "endpoints": 12,
            "schedules": 12,
            "schedule_runs": 24,
            "idempotency_keys": 6,
            "rate_limit_hits": 12,
        }
        key = await db.fetchval("SELECT value FROM service_keys WHERE name = 'page_token'")

        await _migrate(url, upgrade_database, "0003")

        assert await _shared_rows(db) == before
        for table in schema.TENANT_TABLES:
            wrong = await db.fetch(f"SELECT tenant_id, bucket FROM {table}")
            assert wrong, table
            assert [(r[0], r[1]) for r in wrong if r[1] != bucket_of(r[0])] == [], table
        directory = await db.fetch("SELECT install_id, bucket, tenant_id FROM install_directory")
        installs = await db.fetch("SELECT id, tenant_id FROM installs")
        assert sorted(tuple(r) for r in directory) == sorted(
            (r["id"], bucket_of(r["tenant_id"]), r["tenant_id"]) for r in installs
        )
        new_columns = await db.fetch(
            "SELECT DISTINCT run_at, start_time, end_time, jitter_ms, payload_wire FROM schedules"
        )
        assert [tuple(r) for r in new_columns] == [(None, None, None, 0, None)]
        assert await db.fetchval("SELECT array_agg(DISTINCT takeovers) FROM schedule_runs") == [0]
        assert await db.fetchval("SELECT value FROM service_keys") == key

        await _readable_by_the_new_storage(url, ids)

        await _migrate(url, downgrade_database, "0002")

        assert await _shared_rows(db) == before
        assert await db.fetchval("SELECT value FROM service_keys") == key
        assert await db.fetchval("SELECT tenant_id FROM service_keys") == "*"
    finally:
        await db.close()


async def _readable_by_the_new_storage(url: str, ids: dict[str, list[uuid.UUID]]) -> None:
    """What 0003 made of the rows is what the repositories read."""
    pool = await DatabasePool.open(url, size=2, max_waiters=10)
    try:
        factory = PgUnitOfWorkFactory(pool)
        async with factory(autocommit=True) as u:
            for iid in ids["installs"]:
                install = await u.installs.get(iid)
                assert install is not None
                assert [e.selector for e in install.endpoints] == ["GET /status", "POST /sync"]
                page, total = await u.schedules.page_with_total(install.tenant_id, iid, None, 10)
                assert total == 2
                assert [s.name for s in page] == ["schedule-0", None]
                runs = await u.runs.page(install.tenant_id, page[0].id, None, 10)
                assert [r.status for r in runs] == ["running", "success"]
                # The two migrated hits of the install count in its window.
                wait = await u.rate_limits.hit(
                    f"mutations:{iid}",
                    install.tenant_id,
                    2,
                    timedelta(hours=1),
                    install.create_time,
                )
                assert wait is not None
    finally:
        await pool.close()


async def test_0003_drops_what_its_keys_cannot_hold_and_its_downgrade_what_0002_cannot(
    empty_pg_url: str,
) -> None:
    # Documented losses: idempotency keys of installs that no longer exist (they match nothing),
    # hits of one scope at the same instant (one is enough), and on the way back one-time
    # schedules (0002 has no run_at).
    url = empty_pg_url
    await upgrade_database(url, "0002")
    db = await connect(url)
    try:
        iid = uuid.uuid4()
        await db.execute(
            "INSERT INTO installs (id, tenant_id, registry_id, version_id, content_hash, enabled, "
            "granted_capabilities, create_time, update_time) "
            "VALUES ($1, 'tenant-a', 'ext', 'v1', '', true, '[]', $2, $2)",
            iid,
            T0,
        )
        kept_key, orphan_key = uuid.uuid4(), uuid.uuid4()
        for install_id, request_id in ((iid, kept_key), (uuid.uuid4(), orphan_key)):
            await db.execute(
                "INSERT INTO idempotency_keys VALUES ($1, $2, 'tenant-a', $3, $4)",
                install_id,
                request_id,
                uuid.uuid4(),
                T0,
            )
        for at in (T0, T0, T0 + timedelta(seconds=1)):
            await db.execute(
                "INSERT INTO rate_limit_hits (tenant_id, scope, hit_time) "
                "VALUES ('tenant-a', 'mutations:x', $1)",
                at,
            )

        await upgrade_database(url)

        assert [r[0] for r in await db.fetch("SELECT request_id FROM idempotency_keys")] == [
            kept_key
        ]
        hits = await db.fetch("SELECT hit_time FROM rate_limit_hits ORDER BY hit_time")
        assert [r[0] for r in hits] == [T0, T0 + timedelta(seconds=1)]

        recurring, once = uuid.uuid4(), uuid.uuid4()
        for sid, cron, run_at in ((recurring, "0 * * * *", None), (once, "", T0 + HOUR)):
            await db.execute(
                "INSERT INTO schedules (bucket, id, tenant_id, install_id, endpoint_id, "
                "endpoint_method, endpoint_path, cron, run_at, timezone, enabled, revision, "
                "create_time, update_time) "
                "VALUES ($1, $2, 'tenant-a', $3, $4, 'POST', '/sync', $5, $6, 'UTC', true, 1, "
                "$7, $7)",
                bucket_of("tenant-a"),
                sid,
                iid,
                uuid.uuid4(),
                cron,
                run_at,
                T0,
            )

        await downgrade_database(url, "0002")

        assert [r[0] for r in await db.fetch("SELECT id FROM schedules")] == [recurring]
    finally:
        await db.close()


async def test_a_schedule_is_either_recurring_or_one_time(db: Db) -> None:
    iid = uuid.uuid4()
    bucket = bucket_of("tenant-a")
    await db.execute(
        "INSERT INTO installs (bucket, id, tenant_id, registry_id, version_id, content_hash, "
        "enabled, granted_capabilities, create_time, update_time) "
        "VALUES ($1, $2, 'tenant-a', 'ext', 'v1', '', true, '[]', $3, $3)",
        bucket,
        iid,
        T0,
    )
    insert = (
        "INSERT INTO schedules (bucket, id, tenant_id, install_id, endpoint_id, endpoint_method, "
        "endpoint_path, cron, run_at, timezone, enabled, revision, create_time, update_time) "
        "VALUES ($1, $2, 'tenant-a', $3, $4, 'POST', '/sync', $5, $6, 'UTC', true, 1, $7, $7)"
    )
    for cron, run_at in (("", None), ("0 * * * *", T0)):
        with pytest.raises(asyncpg.CheckViolationError):
            await db.execute(insert, bucket, uuid.uuid4(), iid, uuid.uuid4(), cron, run_at, T0)
    for cron, run_at in (("", T0), ("0 * * * *", None)):
        await db.execute(insert, bucket, uuid.uuid4(), iid, uuid.uuid4(), cron, run_at, T0)
    assert await db.fetchval("SELECT count(*) FROM schedules") == 2


# --------------------------------------------------------------------------------------------
# The downgrade gives back the 0002 schema
# --------------------------------------------------------------------------------------------

_DESCRIBE = """
SELECT 'column' AS kind, table_name || '.' || column_name AS name,
       concat_ws(' ', data_type, character_maximum_length, is_nullable, column_default) AS spec
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', tablename || '.' || indexname, indexdef
FROM pg_indexes WHERE schemaname = 'public'
"""


async def _describe(url: str) -> dict[tuple[str, str], str]:
    db = await connect(url)
    try:
        return {(r["kind"], r["name"]): r["spec"] for r in await db.fetch(_DESCRIBE)}
    finally:
        await db.close()


@pytest.fixture
def second_pg_url(postgres: PostgresServer) -> Iterator[str]:
    with scratch_database(postgres) as name:
        yield postgres.url(name)


async def test_downgrading_0003_gives_back_the_0002_schema(
    empty_pg_url: str, second_pg_url: str
) -> None:
    await upgrade_database(second_pg_url, "0002")
    await upgrade_database(empty_pg_url)
    await downgrade_database(empty_pg_url, "0002")
    assert await _describe(empty_pg_url) == await _describe(second_pg_url)
