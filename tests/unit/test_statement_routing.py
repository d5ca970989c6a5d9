"""Every SQL statement of the storage adapters names its bucket (issue: ready for a sharded
PostgreSQL); the check itself refuses statements that do not."""

from __future__ import annotations

import re
from types import ModuleType

import pytest

from scheduler_host.adapters.db import dispatch_store, installs, runs, schedules, service_keys
from tests.support.routing import unrouted

MODULES: tuple[ModuleType, ...] = (schedules, installs, runs, dispatch_store, service_keys)
_SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


def statements() -> list[tuple[str, str]]:
    found = []
    for module in MODULES:
        for name, value in vars(module).items():
            # Names ending in _PART are pieces of statements, checked in the statements.
            if not name.startswith("_") or name.endswith("_PART") or not isinstance(value, str):
                continue
            if _SQL.match(value):
                found.append((f"{module.__name__.rsplit('.', 1)[-1]}.{name}", value))
    return found


def test_the_adapters_hold_the_statements_this_test_reads() -> None:
    names = {name for name, _ in statements()}
    assert {"schedules._GET", "dispatch_store._CLAIM_DUE", "runs._RATE_LIMIT_HIT"} <= names
    assert len(names) >= 30


@pytest.mark.parametrize(("name", "sql"), statements(), ids=[n for n, _ in statements()])
def test_every_statement_routes_to_one_bucket(name: str, sql: str) -> None:
    assert unrouted(sql) is None, f"{name}: {unrouted(sql)}\n{sql}"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM installs WHERE id = $1",
        "SELECT * FROM schedules WHERE tenant_id = $1 AND install_id = $2",
        "UPDATE schedule_runs SET status = 'x' WHERE id = $1",
        "DELETE FROM idempotency_keys WHERE create_time < $1",
        "SELECT s.id FROM schedules s JOIN installs i ON i.id = s.install_id WHERE s.bucket = $1",
        "INSERT INTO schedules (id, bucket) VALUES ($1, $2)",
        "SELECT rate_limit_hit($2, $1, $3)",
        "SELECT id FROM schedules WHERE next_run_time <= $1 FOR UPDATE SKIP LOCKED",
        # Held only through a join or a correlation: a sharded PostgreSQL does not narrow these.
        "SELECT s.id FROM schedules s JOIN installs i ON i.bucket = s.bucket"
        " AND i.id = s.install_id WHERE s.bucket = $1",
        "SELECT s.id, EXISTS (SELECT 1 FROM endpoints e WHERE e.bucket = s.bucket) FROM schedules s"
        " WHERE s.bucket = $1",
    ],
)
def test_a_statement_without_a_bucket_equality_is_reported(sql: str) -> None:
    assert unrouted(sql) is not None


def test_the_poll_is_the_one_statement_allowed_across_buckets() -> None:
    assert unrouted(dispatch_store._POLL) is None
    assert unrouted("SELECT bucket FROM schedules WHERE enabled") is not None
