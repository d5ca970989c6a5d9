"""The relational schema at the head revision as SQLAlchemy Core tables: what the migrations
build, and what a test compares the migrated database against. The adapters write their
statements in SQL beside their repositories and do not use these tables.

Tenant tables carry `bucket` (see buckets.py) first in every key and index, so that the schema can
be distributed by bucket on a sharded PostgreSQL; `install_directory` and `service_keys` are
small reference tables (the same on every node).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.schema import SchemaItem

from scheduler_host.adapters.migrations.columns import TYPES, columns, counter

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)


# The tables whose rows belong to a tenant; the others are reference tables.
TENANT_TABLES: list[str] = []


def _tenant_table(name: str, *parts: SchemaItem) -> sa.Table:
    """A tenant table: its rows carry their tenant's bucket, first in every key and index."""
    TENANT_TABLES.append(name)
    return sa.Table(name, metadata, *columns("bucket"), *parts)


def _cascade_from(parent: str, key: str) -> sa.ForeignKeyConstraint:
    """A child's rows go with their parent row (the parent's key is (bucket, id))."""
    return sa.ForeignKeyConstraint(
        ["bucket", key], [f"{parent}.bucket", f"{parent}.id"], ondelete="CASCADE"
    )


# Which bucket holds an install: the one lookup by install id alone (the caller's metadata names
# only the install). Written when an install is registered or deleted.
install_directory = sa.Table(
    "install_directory",
    metadata,
    sa.Column("install_id", TYPES["install_id"], primary_key=True),
    *columns("bucket", "tenant_id"),
)

# One row per bucket (0..BUCKETS-1): what the dispatcher's poll probes from.
dispatch_buckets = sa.Table(
    "dispatch_buckets", metadata, sa.Column("bucket", TYPES["bucket"], primary_key=True)
)

installs = _tenant_table(
    "installs",
    *columns("id", "tenant_id", "registry_id", "version_id", "content_hash", "enabled"),
    *columns("granted_capabilities", "create_time", "update_time"),
    sa.PrimaryKeyConstraint("bucket", "id"),
)

# Only the current version's endpoints are kept; schedules store method and path.
endpoints = _tenant_table(
    "endpoints",
    *columns("install_id", "version_id", "method", "path", "id", "tenant_id", "handler"),
    sa.PrimaryKeyConstraint("bucket", "install_id", "version_id", "method", "path"),
    _cascade_from("installs", "install_id"),
)

schedules = _tenant_table(
    "schedules",
    *columns("id", "tenant_id", "install_id"),
    # No foreign key to endpoints: a schedule keeps naming its endpoint after an upgrade removed
    # it, until the remap or the dispatcher disables it.
    *columns("endpoint_id", "endpoint_method", "endpoint_path"),
    *columns("name", nullable=True),
    # Empty for a one-time schedule, which has `run_at` instead.
    *columns("cron"),
    *columns("run_at", "start_time", "end_time", nullable=True),
    counter("jitter_ms"),
    *columns("timezone", "enabled"),
    # payload_wire: the payload in the API's encoding (google.protobuf.Value), so a read need not
    # rebuild it.
    *columns("payload", "payload_wire", "next_run_time", "last_run_time", nullable=True),
    *columns("last_run_status", "last_error", "running_run_id", nullable=True),
    *columns("revision", "create_time", "update_time"),
    sa.PrimaryKeyConstraint("bucket", "id"),
    _cascade_from("installs", "install_id"),
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
    *columns("id", "tenant_id", "install_id", "schedule_id", "trigger", "scheduled_time"),
    *columns("start_time", "finish_time", nullable=True),
    *columns("status", "attempt"),
    # How many times a process took the run over after another's lease expired.
    counter("takeovers"),
    *columns("error", nullable=True),
    # A claim expires so that a run whose process died is taken over, not lost.
    *columns("lease_until", nullable=True),
    sa.PrimaryKeyConstraint("bucket", "id"),
    _cascade_from("schedules", "schedule_id"),
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
    *columns("install_id", "request_id", "tenant_id", "schedule_id", "create_time"),
    sa.PrimaryKeyConstraint("bucket", "install_id", "request_id"),
    # Keys go with their install.
    _cascade_from("installs", "install_id"),
    # The prune of keys past the idempotency window.
    sa.Index(None, "bucket", "create_time"),
)

# Hits of the rate limiter's rolling windows; hit times strictly increase within a scope.
rate_limit_hits = _tenant_table(
    "rate_limit_hits",
    # scope: e.g. "mutations:<install id>" or "manual-runs:<tenant id>"
    *columns("scope", "hit_time", "tenant_id"),
    sa.PrimaryKeyConstraint("bucket", "scope", "hit_time"),
)

# Per-deployment secrets shared by every process (e.g. the page-token signing key).
service_keys = sa.Table(
    "service_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    *columns("value"),
)
