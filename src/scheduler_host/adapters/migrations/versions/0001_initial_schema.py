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

from scheduler_host.adapters.migrations.columns import columns

# Revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns' types are those of migrations/columns.py (history, like this file), but for
# the two stated here (rate_limit_hits.id, service_keys.name).
RowId = sa.BigInteger()  # BIGSERIAL


def _cascade(child: str, key: str, parent: str) -> sa.ForeignKeyConstraint:
    """The child's rows go with their parent row."""
    return sa.ForeignKeyConstraint(
        [key], [f"{parent}.id"], name=op.f(f"fk_{child}_{key}_{parent}"), ondelete="CASCADE"
    )


def _unique(table: str, *keys: str) -> sa.UniqueConstraint:
    return sa.UniqueConstraint(*keys, name=op.f(f"uq_{table}_{'_'.join(keys)}"))


def _index(table: str, *keys: str) -> None:
    op.create_index(op.f(f"ix_{table}_{'_'.join(keys)}"), table, list(keys))


def _partial_index(
    name: str, table: str, keys: list[str], where: str, *, unique: bool = False
) -> None:
    op.create_index(op.f(name), table, keys, unique=unique, postgresql_where=sa.text(where))


def upgrade() -> None:
    op.create_table(
        "installs",
        *columns("id", "tenant_id", "registry_id", "version_id", "content_hash", "enabled"),
        *columns("granted_capabilities", "create_time", "update_time"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installs")),
    )
    _index("installs", "tenant_id")

    op.create_table(
        "endpoints",
        *columns("id", "tenant_id", "install_id", "version_id", "method", "path", "handler"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoints")),
        _cascade("endpoints", "install_id", "installs"),
        _unique("endpoints", "install_id", "version_id", "method", "path"),
    )

    op.create_table(
        "schedules",
        *columns("id", "tenant_id", "install_id"),
        *columns("endpoint_id", "endpoint_method", "endpoint_path"),
        *columns("name", nullable=True),
        *columns("cron", "timezone", "enabled"),
        *columns("payload", "next_run_time", "last_run_time", "last_run_status", nullable=True),
        *columns("last_error", "running_run_id", nullable=True),
        *columns("revision", "create_time", "update_time"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        _cascade("schedules", "install_id", "installs"),
    )
    _index("schedules", "tenant_id", "install_id", "create_time", "id")
    _partial_index(
        "uq_schedules_install_name",
        "schedules",
        ["install_id", "name"],
        "name IS NOT NULL",
        unique=True,
    )
    _partial_index(
        "ix_schedules_due", "schedules", ["next_run_time"], "enabled AND next_run_time IS NOT NULL"
    )

    op.create_table(
        "schedule_runs",
        *columns("id", "tenant_id", "install_id", "schedule_id", "trigger", "scheduled_time"),
        *columns("start_time", "finish_time", nullable=True),
        *columns("status", "attempt"),
        *columns("error", "lease_until", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_runs")),
        _cascade("schedule_runs", "schedule_id", "schedules"),
        _unique("schedule_runs", "schedule_id", "trigger", "scheduled_time"),
    )
    _index("schedule_runs", "tenant_id", "schedule_id", "scheduled_time")
    _partial_index(
        "ix_schedule_runs_open_lease",
        "schedule_runs",
        ["lease_until"],
        "status IN ('pending', 'running')",
    )

    op.create_table(
        "idempotency_keys",
        *columns("install_id", "request_id", "tenant_id", "schedule_id", "create_time"),
        sa.PrimaryKeyConstraint("install_id", "request_id", name=op.f("pk_idempotency_keys")),
    )
    _index("idempotency_keys", "create_time")

    op.create_table(
        "rate_limit_hits",
        sa.Column("id", RowId, nullable=False, autoincrement=True),
        *columns("tenant_id", "scope", "hit_time"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_limit_hits")),
    )
    _index("rate_limit_hits", "scope", "hit_time")

    service_keys = op.create_table(
        "service_keys",
        sa.Column("name", sa.String(64), nullable=False),
        *columns("tenant_id", "value"),
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
