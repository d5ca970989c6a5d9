"""The relational schema (SQLAlchemy Core), shared by the repositories and the migrations.

Every table carries `tenant_id` so the schema can be distributed by tenant (Citus); every
install-scoped query names it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timestamps stored with their zone where the database can, always read back as UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the database layer")
        value = value.astimezone(UTC)
        # SQLite keeps text; a fixed naive UTC form keeps comparisons and ordering right.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JsonValue = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

installs = sa.Table(
    "installs",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("registry_id", sa.String(128), nullable=False),
    sa.Column("version_id", sa.String(128), nullable=False),
    sa.Column("content_hash", sa.String(256), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("granted_capabilities", JsonValue, nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("update_time", UtcDateTime(), nullable=False),
    sa.Index(None, "tenant_id"),
)

endpoints = sa.Table(
    "endpoints",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column(
        "install_id", sa.Uuid(), sa.ForeignKey("installs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("version_id", sa.String(128), nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
    sa.Column("handler", sa.String(256), nullable=False),
    sa.UniqueConstraint("install_id", "version_id", "method", "path"),
)

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column(
        "install_id", sa.Uuid(), sa.ForeignKey("installs.id", ondelete="CASCADE"), nullable=False
    ),
    # No foreign key: a schedule keeps naming its endpoint after an upgrade removed it, until
    # the remap or the dispatcher disables it.
    sa.Column("endpoint_id", sa.Uuid(), nullable=False),
    sa.Column("endpoint_method", sa.String(16), nullable=False),
    sa.Column("endpoint_path", sa.String(1024), nullable=False),
    sa.Column("name", sa.String(128), nullable=True),
    sa.Column("cron", sa.String(128), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("payload", JsonValue, nullable=True),
    sa.Column("next_run_time", UtcDateTime(), nullable=True),
    sa.Column("last_run_time", UtcDateTime(), nullable=True),
    sa.Column("last_run_status", sa.String(16), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("running_run_id", sa.Uuid(), nullable=True),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("update_time", UtcDateTime(), nullable=False),
    # ListSchedules: one install's rows in (create_time, id) order.
    sa.Index(None, "tenant_id", "install_id", "create_time", "id"),
    # Names are unique per install when set.
    sa.Index(
        "uq_schedules_install_name",
        "install_id",
        "name",
        unique=True,
        postgresql_where=sa.text("name IS NOT NULL"),
        sqlite_where=sa.text("name IS NOT NULL"),
    ),
    # The dispatcher's due query touches only enabled rows with a next run time.
    sa.Index(
        "ix_schedules_due",
        "next_run_time",
        postgresql_where=sa.text("enabled AND next_run_time IS NOT NULL"),
        sqlite_where=sa.text("enabled AND next_run_time IS NOT NULL"),
    ),
)

schedule_runs = sa.Table(
    "schedule_runs",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("install_id", sa.Uuid(), nullable=False),
    sa.Column(
        "schedule_id",
        sa.Uuid(),
        sa.ForeignKey("schedules.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("scheduled_time", UtcDateTime(), nullable=False),
    sa.Column("start_time", UtcDateTime(), nullable=True),
    sa.Column("finish_time", UtcDateTime(), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    # A claim expires so that a run whose process died is taken over, not lost.
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    # The last guard against firing one occurrence twice.
    sa.UniqueConstraint("schedule_id", "trigger", "scheduled_time"),
    sa.Index(None, "tenant_id", "schedule_id", "scheduled_time"),
    sa.Index(
        "ix_schedule_runs_open_lease",
        "lease_until",
        postgresql_where=sa.text("status IN ('pending', 'running')"),
        sqlite_where=sa.text("status IN ('pending', 'running')"),
    ),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("install_id", sa.Uuid(), primary_key=True),
    sa.Column("request_id", sa.Uuid(), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("schedule_id", sa.Uuid(), nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Index(None, "create_time"),
)

rate_limit_hits = sa.Table(
    "rate_limit_hits",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    # e.g. "mutations:<install id>" or "manual-runs:<tenant id>"
    sa.Column("scope", sa.String(200), nullable=False),
    sa.Column("hit_time", UtcDateTime(), nullable=False),
    sa.Index(None, "scope", "hit_time"),
)

# Per-deployment secrets shared by every process (e.g. the page-token signing key).
service_keys = sa.Table(
    "service_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("value", sa.LargeBinary(), nullable=False),
)
