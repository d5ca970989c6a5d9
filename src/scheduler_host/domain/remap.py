"""The remap of an install's schedules onto the endpoints of a new version (or a re-enabled
install): which schedules move, which are disabled, and why."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from scheduler_host.domain.endpoints import Endpoint, unschedulable_reason
from scheduler_host.domain.schedule import Schedule, truncate_error

MISSING_ENDPOINT_ON_UPDATE = "Disabled due to missing endpoint on extension update"


@dataclass(frozen=True)
class Remap:
    """`changes`: the schedules whose stored state changes, as they become; `disabled`: the
    enabled schedules that lost their endpoint (and `missing`, those endpoints)."""

    changes: list[Schedule]
    disabled: list[uuid.UUID]
    missing: list[str]


def remap_schedules(
    schedules: Iterable[Schedule],
    endpoints: Sequence[Endpoint],
    *,
    reenabled: bool,
    now: datetime,
    next_run: Callable[[Schedule, datetime], datetime | None],
) -> Remap:
    """Match each schedule's method and path among `endpoints`.

    A schedule whose endpoint is gone (or no longer schedulable) is disabled if it was enabled;
    a disabled one stays as it is. A schedule that moves to a new endpoint id gets a new revision
    (its definition changed). When the install was just re-enabled, enabled schedules continue
    from `now` (`next_run`), without catching up what they missed meanwhile.
    """
    by_route = {(e.method, e.path): e for e in endpoints}
    changes: list[Schedule] = []
    disabled: list[uuid.UUID] = []
    missing: list[str] = []
    for s in schedules:
        target = by_route.get((s.endpoint_method, s.endpoint_path))
        if target is None or unschedulable_reason(target.method, target.path):
            if s.enabled:
                missing.append(s.endpoint)
                disabled.append(s.id)
                changes.append(
                    replace(
                        s,
                        enabled=False,
                        next_run_time=None,
                        last_error=truncate_error(MISSING_ENDPOINT_ON_UPDATE),
                        revision=s.revision + 1,
                        update_time=now,
                    )
                )
            continue
        moved = s
        if target.id != s.endpoint_id:
            moved = replace(s, endpoint_id=target.id, revision=s.revision + 1, update_time=now)
        if reenabled and s.enabled:
            moved = replace(moved, next_run_time=next_run(s, now))
        if moved != s:
            changes.append(moved)
    return Remap(changes, disabled, missing)
