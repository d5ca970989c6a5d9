"""Run history use cases."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from scheduler_host.domain.errors import (
    FieldViolation,
    InstallNotFound,
    ScheduleNotFound,
)
from scheduler_host.domain.runs import ScheduleRun
from scheduler_host.domain.schedule import validate_uuid
from scheduler_host.service.ports import PageTokens, UnitOfWorkFactory
from scheduler_host.service.schedules import read_page_request


@dataclass(frozen=True)
class RunPage:
    runs: list[ScheduleRun]
    next_page_token: str


def parse_schedule_ids(
    install_id: str, schedule_id: str
) -> tuple[uuid.UUID | None, uuid.UUID | None, list[FieldViolation]]:
    """The admin calls' install and schedule ids, with a violation for each that is no UUID."""
    iid = validate_uuid(install_id, "install_id")
    sid = validate_uuid(schedule_id, "schedule_id")
    bad = [v for v in (iid, sid) if isinstance(v, FieldViolation)]
    return (
        iid if isinstance(iid, uuid.UUID) else None,
        sid if isinstance(sid, uuid.UUID) else None,
        bad,
    )


async def list_runs(
    install_id: str,
    schedule_id: str,
    page_size: int,
    page_token: str,
    *,
    uow_factory: UnitOfWorkFactory,
    tokens: PageTokens,
) -> RunPage:
    iid, sid, bad = parse_schedule_ids(install_id, schedule_id)
    scope = f"runs:{sid}"
    size, before = read_page_request(page_size, page_token, tokens, scope, bad)
    assert iid is not None and sid is not None
    # Independent reads: no transaction needed.
    async with uow_factory(autocommit=True) as uow:
        ctx = await uow.installs.context(iid)
        if ctx is None:
            raise InstallNotFound(str(iid))
        if await uow.schedules.get(ctx.tenant_id, iid, sid, for_update=False) is None:
            raise ScheduleNotFound(str(sid))
        rows = await uow.runs.page(ctx.tenant_id, sid, before, size + 1)
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = tokens.encode(scope, [rows[-1].scheduled_time.isoformat(), str(rows[-1].id)])
    return RunPage(rows, token)
