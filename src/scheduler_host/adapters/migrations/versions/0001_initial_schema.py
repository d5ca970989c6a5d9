"""Initial schema: installs, endpoints, schedules, runs, idempotency keys, rate limits, keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 05:18:33
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types in schema.py at this revision; never import the live schema here.
JsonValue = postgresql.JSONB()
RowId = sa.BigInteger()  # BIGSERIAL


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "installs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("registry_id", sa.String(128), nullable=False),
        sa.Column("version_id", sa.String(128), nullable=False),
        sa.Column("content_hash", sa.String(256), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("granted_capabilities", JsonValue, nullable=False),
        sa.Column("create_time", _timestamp(), nullable=False),
        sa.Column("update_time", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installs")),
    )
    op.create_index(op.f("ix_installs_tenant_id"), "installs", ["tenant_id"])

    op.create_table(
        "endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("install_id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.String(128), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("handler", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoints")),
        sa.ForeignKeyConstraint(
            ["install_id"],
            ["installs.id"],
            name=op.f("fk_endpoints_install_id_installs"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "install_id",
            "version_id",
            "method",
            "path",
            name=op.f("uq_endpoints_install_id_version_id_method_path"),
        ),
    )

    op.create_table(
        "schedules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("install_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_method", sa.String(16), nullable=False),
        sa.Column("endpoint_path", sa.String(1024), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("cron", sa.String(128), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("payload", JsonValue, nullable=True),
        sa.Column("next_run_time", _timestamp(), nullable=True),
        sa.Column("last_run_time", _timestamp(), nullable=True),
        sa.Column("last_run_status", sa.String(16), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("running_run_id", sa.Uuid(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("create_time", _timestamp(), nullable=False),
        sa.Column("update_time", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.ForeignKeyConstraint(
            ["install_id"],
            ["installs.id"],
            name=op.f("fk_schedules_install_id_installs"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        op.f("ix_schedules_tenant_id_install_id_create_time_id"),
        "schedules",
        ["tenant_id", "install_id", "create_time", "id"],
    )
    op.create_index(
        op.f("uq_schedules_install_name"),
        "schedules",
        ["install_id", "name"],
        unique=True,
        postgresql_where=sa.text("name IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_schedules_due"),
        "schedules",
        ["next_run_time"],
        postgresql_where=sa.text("enabled AND next_run_time IS NOT NULL"),
    )

    op.create_table(
        "schedule_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("install_id", sa.Uuid(), nullable=False),
        sa.Column("schedule_id", sa.Uuid(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("scheduled_time", _timestamp(), nullable=False),
        sa.Column("start_time", _timestamp(), nullable=True),
        sa.Column("finish_time", _timestamp(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_until", _timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_runs")),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name=op.f("fk_schedule_runs_schedule_id_schedules"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "schedule_id",
            "trigger",
            "scheduled_time",
            name=op.f("uq_schedule_runs_schedule_id_trigger_scheduled_time"),
        ),
    )
    op.create_index(
        op.f("ix_schedule_runs_tenant_id_schedule_id_scheduled_time"),
        "schedule_runs",
        ["tenant_id", "schedule_id", "scheduled_time"],
    )
    op.create_index(
        op.f("ix_schedule_runs_open_lease"),
        "schedule_runs",
        ["lease_until"],
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("install_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("schedule_id", sa.Uuid(), nullable=False),
        sa.Column("create_time", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("install_id", "request_id", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(op.f("ix_idempotency_keys_create_time"), "idempotency_keys", ["create_time"])

    op.create_table(
        "rate_limit_hits",
        sa.Column("id", RowId, nullable=False, autoincrement=True),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("hit_time", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_limit_hits")),
    )
    op.create_index(
        op.f("ix_rate_limit_hits_scope_hit_time"), "rate_limit_hits", ["scope", "hit_time"]
    )

    service_keys = op.create_table(
        "service_keys",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_keys")),
    )
    # Generated here, once per deployment, so every process signs page tokens with the same key.
    op.bulk_insert(
        service_keys,
        [{"name": "page_token", "tenant_id": "*", "value": secrets.token_bytes(32)}],
    )


def downgrade() -> None:
    # Children before parents, so foreign keys never block a drop; indexes go with their tables.
    op.drop_table("service_keys")
    op.drop_table("rate_limit_hits")
    op.drop_table("idempotency_keys")
    op.drop_table("schedule_runs")
    op.drop_table("schedules")
    op.drop_table("endpoints")
    op.drop_table("installs")
