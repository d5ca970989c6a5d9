"""The type of every column, by name: a column name means one type in every table. The initial
migration and the schema at head (schema.py) build their columns from it.

History, like the migrations: a migration that changes a column's type states the new type
itself (and schema.py then too), leaving this as the migrations before it made the column.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeEngine

_UUID = sa.Uuid()
_TIME = sa.DateTime(timezone=True)
_SHORT = sa.String(16)  # methods and states
_LABEL = sa.String(128)  # ids given by callers, names, cron expressions
_JSON = postgresql.JSONB()

TYPES: dict[str, TypeEngine[Any]] = {
    "bucket": sa.SmallInteger(),
    "id": _UUID,
    "install_id": _UUID,
    "endpoint_id": _UUID,
    "schedule_id": _UUID,
    "request_id": _UUID,
    "running_run_id": _UUID,
    "tenant_id": _LABEL,
    "registry_id": _LABEL,
    "version_id": _LABEL,
    "name": _LABEL,
    "cron": _LABEL,
    "content_hash": sa.String(256),
    "handler": sa.String(256),
    "method": _SHORT,
    "endpoint_method": _SHORT,
    "trigger": _SHORT,
    "status": _SHORT,
    "last_run_status": _SHORT,
    "path": sa.String(1024),
    "endpoint_path": sa.String(1024),
    "timezone": sa.String(64),
    "scope": sa.String(200),
    "enabled": sa.Boolean(),
    "granted_capabilities": _JSON,
    "payload": _JSON,
    "payload_wire": sa.LargeBinary(),
    "value": sa.LargeBinary(),
    "last_error": sa.Text(),
    "error": sa.Text(),
    "jitter_ms": sa.Integer(),
    "revision": sa.Integer(),
    "attempt": sa.Integer(),
    "takeovers": sa.Integer(),
    "create_time": _TIME,
    "update_time": _TIME,
    "run_at": _TIME,
    "start_time": _TIME,
    "end_time": _TIME,
    "next_run_time": _TIME,
    "last_run_time": _TIME,
    "scheduled_time": _TIME,
    "finish_time": _TIME,
    "lease_until": _TIME,
    "hit_time": _TIME,
}


def columns(*names: str, nullable: bool = False) -> list[sa.Column[Any]]:
    """Columns of these names, in this order, each of its name's type."""
    return [sa.Column(name, TYPES[name], nullable=nullable) for name in names]


def counter(name: str) -> sa.Column[Any]:
    """An integer column that starts at 0."""
    return sa.Column(name, TYPES[name], nullable=False, server_default="0")
