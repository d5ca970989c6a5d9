"""Rows ↔ domain values: the one place that knows which column holds which field.

Statements select the column lists defined here and map rows by name; writes take their values
from `schedule_values`, in the order of the columns they list."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, timedelta
from typing import Any, Protocol

from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.domain.schedule import Schedule

_MILLISECOND = timedelta(milliseconds=1)
_NO_JITTER = timedelta(0)


class Row(Protocol):
    """Columns looked up by name (an asyncpg Record)."""

    def __getitem__(self, key: str, /) -> Any: ...


# A schedule's definition: what a caller sets, in create_schedule's order.
SCHEDULE_DEFINITION = (
    "endpoint_id",
    "endpoint_method",
    "endpoint_path",
    "name",
    "cron",
    "run_at",
    "start_time",
    "end_time",
    "jitter_ms",
    "timezone",
    "enabled",
    "payload",
    "payload_wire",
)
# What the dispatcher keeps.
_LAST_RUN = ("next_run_time", "last_run_time", "last_run_status", "last_error")
# The schedules columns a read returns, in no particular order (rows are read by name).
SCHEDULE_COLUMNS = (
    "id",
    "tenant_id",
    "install_id",
    *SCHEDULE_DEFINITION,
    *_LAST_RUN,
    "revision",
    "create_time",
    "update_time",
)
INSTALL_CONTEXT_COLUMNS = (
    "id",
    "tenant_id",
    "registry_id",
    "version_id",
    "content_hash",
    "enabled",
    "granted_capabilities",
)
INSTALL_COLUMNS = (*INSTALL_CONTEXT_COLUMNS, "create_time", "update_time")
ENDPOINT_COLUMNS = ("id", "method", "path", "handler")
RUN_COLUMNS = (
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
)


def columns(names: Sequence[str], alias: str = "") -> str:
    """A select list of `names`, each prefixed with `alias.` when given."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + name for name in names)


# Schedule's fields before `jitter`, each stored in the column of its name: read by name, passed
# in order (keyword arguments cost 1.4 of 4.9 us a row, and a page maps 50 rows).
_FIELD_ORDER = tuple(f.name for f in dataclasses.fields(Schedule))
_SCHEDULE_HEAD = _FIELD_ORDER[: _FIELD_ORDER.index("jitter")]
_BOUNDS = (_SCHEDULE_HEAD.index("start_time"), _SCHEDULE_HEAD.index("end_time"))


def schedule_from_row(m: Row) -> Schedule:
    """A Schedule from a row holding SCHEDULE_COLUMNS (alone or in a join)."""
    values = [m[name] for name in _SCHEDULE_HEAD]
    # The extreme bounds a caller may give are stored as -infinity and infinity, which asyncpg
    # reads as naive datetime.min and max: given back their UTC, they are what was sent.
    for i in _BOUNDS:
        if values[i] is not None and values[i].tzinfo is None:
            values[i] = values[i].replace(tzinfo=UTC)
    ms = m["jitter_ms"]
    values += (timedelta(milliseconds=ms) if ms else _NO_JITTER, m["payload_wire"])
    return Schedule(*values)


def schedule_values(s: Schedule, names: Sequence[str]) -> list[Any]:
    """`s`'s values for the columns `names`: each the field of its name, jitter_ms in ms."""
    return [s.jitter // _MILLISECOND if name == "jitter_ms" else getattr(s, name) for name in names]


def unnest_arrays(rows: Iterable[Sequence[Any]], width: int) -> list[list[Any]]:
    """One array per column of `rows` (`width` values each): the parameters of an UNNEST write."""
    arrays = [list(column) for column in zip(*rows, strict=True)]
    return arrays or [[] for _ in range(width)]


def install_context_from_row(
    m: Row, *, id_key: str = "id", enabled_key: str = "enabled"
) -> InstallContext:
    """An InstallContext from a row (in a join, id and enabled under the names given)."""
    return InstallContext(
        install_id=m[id_key],
        tenant_id=m["tenant_id"],
        registry_id=m["registry_id"],
        version_id=m["version_id"],
        content_hash=m["content_hash"],
        enabled=m[enabled_key],
        capabilities=frozenset(m["granted_capabilities"]),
    )


def install_from_row(m: Row, endpoints: Sequence[Endpoint]) -> Install:
    """An Install from a row holding INSTALL_COLUMNS and the endpoints of its version."""
    return Install(
        install_id=m["id"],
        tenant_id=m["tenant_id"],
        registry_id=m["registry_id"],
        version_id=m["version_id"],
        content_hash=m["content_hash"],
        enabled=m["enabled"],
        granted_capabilities=tuple(m["granted_capabilities"]),
        endpoints=tuple(endpoints),
        create_time=m["create_time"],
        update_time=m["update_time"],
    )


def endpoint_from_row(m: Row) -> Endpoint:
    return Endpoint(m["id"], m["method"], m["path"], m["handler"])


_RUN_FIELDS = tuple(name for name in RUN_COLUMNS if name not in ("trigger", "status"))


def run_from_row(m: Row) -> ScheduleRun:
    """A ScheduleRun from a row holding RUN_COLUMNS."""
    return ScheduleRun(
        **{name: m[name] for name in _RUN_FIELDS},
        trigger=RunTrigger(m["trigger"]),
        status=RunState(m["status"]),
    )
