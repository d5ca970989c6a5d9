"""Run history use cases."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from scheduler_host.domain.errors import (
    FieldViolation,
    InstallNotFound,
    ScheduleNotFound,
    ValidationFailed,
)
from scheduler_host.domain.runs import ScheduleRun
from scheduler_host.domain.schedule import validate_uuid
from scheduler_host.service.ports import PageTokens, UnitOfWorkFactory
from scheduler_host.service.schedules import decode_position, page_size_of


@dataclass(frozen=True)
class RunPage:
    runs: list[ScheduleRun]
    next_page_token: str


def _ids(install_id: str, schedule_id: str) -> tuple[uuid.UUID, uuid.UUID]:
    iid = validate_uuid(install_id, "install_id")
    sid = validate_uuid(schedule_id, "schedule_id")
    bad = [v for v in (iid, sid) if isinstance(v, FieldViolation)]
    if bad:
        raise ValidationFailed(bad)
    assert isinstance(iid, uuid.UUID) and isinstance(sid, uuid.UUID)
    return iid, sid


async def list_runs(
    install_id: str,
    schedule_id: str,
    page_size: int,
    page_token: str,
    *,
    uow_factory: UnitOfWorkFactory,
    tokens: PageTokens,
) -> RunPage:
    iid, sid = _ids(install_id, schedule_id)
    size = page_size_of(page_size)
    scope = f"runs:{sid}"
    before = decode_position(tokens, scope, page_token)
    async with uow_factory() as uow:
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
