"""Rows of the schema's tables as domain values, by column name, whichever driver read them:
a SQLAlchemy row's `_mapping` or an asyncpg Record (both look columns up by name)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.domain.schedule import Schedule


class Row(Protocol):
    """Columns looked up by name."""

    def __getitem__(self, key: str, /) -> Any: ...


def install_context_from_row(
    m: Row, *, install_id_key: str = "install_id", enabled_key: str = "enabled"
) -> InstallContext:
    """An InstallContext from a row holding the installs columns (alone or in a join)."""
    return InstallContext(
        install_id=m[install_id_key],
        tenant_id=m["tenant_id"],
        registry_id=m["registry_id"],
        version_id=m["version_id"],
        content_hash=m["content_hash"],
        enabled=m[enabled_key],
        capabilities=frozenset(m["granted_capabilities"]),
    )


def install_from_row(m: Row, endpoints: Sequence[Endpoint]) -> Install:
    """An Install from a row of the installs table and the endpoints of its version."""
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


def schedule_from_row(m: Row) -> Schedule:
    """A Schedule from a row holding the schedules columns (alone or in a join)."""
    return Schedule(
        id=m["id"],
        install_id=m["install_id"],
        tenant_id=m["tenant_id"],
        endpoint_id=m["endpoint_id"],
        endpoint_method=m["endpoint_method"],
        endpoint_path=m["endpoint_path"],
        name=m["name"],
        cron=m["cron"],
        timezone=m["timezone"],
        enabled=m["enabled"],
        payload=m["payload"],
        next_run_time=m["next_run_time"],
        last_run_time=m["last_run_time"],
        last_run_status=m["last_run_status"],
        last_error=m["last_error"],
        create_time=m["create_time"],
        update_time=m["update_time"],
        revision=m["revision"],
    )


def run_from_row(m: Row) -> ScheduleRun:
    """A ScheduleRun from a row of the schedule_runs table."""
    return ScheduleRun(
        id=m["id"],
        tenant_id=m["tenant_id"],
        install_id=m["install_id"],
        schedule_id=m["schedule_id"],
        trigger=RunTrigger(m["trigger"]),
        scheduled_time=m["scheduled_time"],
        start_time=m["start_time"],
        finish_time=m["finish_time"],
        status=RunState(m["status"]),
        attempt=m["attempt"],
        error=m["error"],
    )
