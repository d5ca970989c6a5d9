"""The relational schema at the head revision as SQLAlchemy Core tables: what the migrations
build, and what a test compares the migrated database against. The adapters write their
statements in SQL beside their repositories and do not use these tables.

Tenant tables carry `bucket` (see buckets.py) first in every key and index, so that the schema can
be distributed by bucket on a sharded PostgreSQL; `install_directory` and `service_keys` are
small reference tables (the same on every node).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import SchemaItem

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


# The tables whose rows belong to a tenant; the others are reference tables.
TENANT_TABLES: list[str] = []


def _tenant_table(name: str, *parts: SchemaItem) -> sa.Table:
    """A tenant table: its rows carry their tenant's bucket, first in every key and index."""
    TENANT_TABLES.append(name)
    return sa.Table(name, metadata, sa.Column("bucket", sa.SmallInteger(), nullable=False), *parts)


# Which bucket holds an install: the one lookup by install id alone (the caller's metadata names
# only the install). Written when an install is registered or deleted.
install_directory = sa.Table(
    "install_directory",
    metadata,
    sa.Column("install_id", sa.Uuid(), primary_key=True),
    sa.Column("bucket", sa.SmallInteger(), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
)

# One row per bucket (0..BUCKETS-1): what the dispatcher's poll probes from.
dispatch_buckets = sa.Table(
    "dispatch_buckets", metadata, sa.Column("bucket", sa.SmallInteger(), primary_key=True)
)

installs = _tenant_table(
    "installs",
    sa.Column("id", sa.Uuid(), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("registry_id", sa.String(128), nullable=False),
    sa.Column("version_id", sa.String(128), nullable=False),
    sa.Column("content_hash", sa.String(256), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("granted_capabilities", postgresql.JSONB(), nullable=False),
    sa.Column("create_time", _time(), nullable=False),
    sa.Column("update_time", _time(), nullable=False),
    sa.PrimaryKeyConstraint("bucket", "id"),
)

# Only the current version's endpoints are kept; schedules store method and path.
endpoints = _tenant_table(
    "endpoints",
    sa.Column("install_id", sa.Uuid(), nullable=False),
    sa.Column("version_id", sa.String(128), nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
    sa.Column("id", sa.Uuid(), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("handler", sa.String(256), nullable=False),
    sa.PrimaryKeyConstraint("bucket", "install_id", "version_id", "method", "path"),
    sa.ForeignKeyConstraint(
        ["bucket", "install_id"], ["installs.bucket", "installs.id"], ondelete="CASCADE"
    ),
)

schedules = _tenant_table(
    "schedules",
    sa.Column("id", sa.Uuid(), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("install_id", sa.Uuid(), nullable=False),
    # No foreign key to endpoints: a schedule keeps naming its endpoint after an upgrade removed
    # it, until the remap or the dispatcher disables it.
    sa.Column("endpoint_id", sa.Uuid(), nullable=False),
    sa.Column("endpoint_method", sa.String(16), nullable=False),
    sa.Column("endpoint_path", sa.String(1024), nullable=False),
    sa.Column("name", sa.String(128), nullable=True),
    # Empty for a one-time schedule, which has `run_at` instead.
    sa.Column("cron", sa.String(128), nullable=False),
    sa.Column("run_at", _time(), nullable=True),
    sa.Column("start_time", _time(), nullable=True),
    sa.Column("end_time", _time(), nullable=True),
    sa.Column("jitter_ms", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("payload", postgresql.JSONB(), nullable=True),
    # The payload in the API's encoding (google.protobuf.Value), so a read need not rebuild it.
    sa.Column("payload_wire", sa.LargeBinary(), nullable=True),
    sa.Column("next_run_time", _time(), nullable=True),
    sa.Column("last_run_time", _time(), nullable=True),
    sa.Column("last_run_status", sa.String(16), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("running_run_id", sa.Uuid(), nullable=True),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("create_time", _time(), nullable=False),
    sa.Column("update_time", _time(), nullable=False),
    sa.PrimaryKeyConstraint("bucket", "id"),
    sa.ForeignKeyConstraint(
        ["bucket", "install_id"], ["installs.bucket", "installs.id"], ondelete="CASCADE"
    ),
    sa.CheckConstraint("(cron <> '') <> (run_at IS NOT NULL)", name="cron_or_run_at"),
    # ListSchedules: one install's rows in (create_time, id) order.
    sa.Index(None, "bucket", "install_id", "create_time", "id"),
    # Names are unique per install when set.
    sa.Index(
        "uq_schedules_install_name",
        "bucket",
        "install_id",
        "name",
        unique=True,
        postgresql_where=sa.text("name IS NOT NULL"),
    ),
    # The dispatcher's due query touches only enabled rows with a next run time, per bucket.
    sa.Index(
        "ix_schedules_due",
        "bucket",
        "next_run_time",
        postgresql_where=sa.text("enabled AND next_run_time IS NOT NULL"),
    ),
)

schedule_runs = _tenant_table(
    "schedule_runs",
    sa.Column("id", sa.Uuid(), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("install_id", sa.Uuid(), nullable=False),
    sa.Column("schedule_id", sa.Uuid(), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("scheduled_time", _time(), nullable=False),
    sa.Column("start_time", _time(), nullable=True),
    sa.Column("finish_time", _time(), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    # How many times a process took the run over after another's lease expired.
    sa.Column("takeovers", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("error", sa.Text(), nullable=True),
    # A claim expires so that a run whose process died is taken over, not lost.
    sa.Column("lease_until", _time(), nullable=True),
    sa.PrimaryKeyConstraint("bucket", "id"),
    sa.ForeignKeyConstraint(
        ["bucket", "schedule_id"], ["schedules.bucket", "schedules.id"], ondelete="CASCADE"
    ),
    # The last guard against firing one occurrence twice.
    sa.UniqueConstraint("bucket", "schedule_id", "trigger", "scheduled_time"),
    # Run history, newest first.
    sa.Index(None, "bucket", "schedule_id", "scheduled_time", "id"),
    sa.Index(
        "ix_schedule_runs_open_lease",
        "bucket",
        "lease_until",
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    ),
)

idempotency_keys = _tenant_table(
    "idempotency_keys",
    sa.Column("install_id", sa.Uuid(), nullable=False),
    sa.Column("request_id", sa.Uuid(), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("schedule_id", sa.Uuid(), nullable=False),
    sa.Column("create_time", _time(), nullable=False),
    sa.PrimaryKeyConstraint("bucket", "install_id", "request_id"),
    # Keys go with their install.
    sa.ForeignKeyConstraint(
        ["bucket", "install_id"], ["installs.bucket", "installs.id"], ondelete="CASCADE"
    ),
    # The prune of keys past the idempotency window.
    sa.Index(None, "bucket", "create_time"),
)

# Hits of the rate limiter's rolling windows; hit times strictly increase within a scope.
rate_limit_hits = _tenant_table(
    "rate_limit_hits",
    # e.g. "mutations:<install id>" or "manual-runs:<tenant id>"
    sa.Column("scope", sa.String(200), nullable=False),
    sa.Column("hit_time", _time(), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.PrimaryKeyConstraint("bucket", "scope", "hit_time"),
)

# Per-deployment secrets shared by every process (e.g. the page-token signing key).
service_keys = sa.Table(
    "service_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.LargeBinary(), nullable=False),
)
