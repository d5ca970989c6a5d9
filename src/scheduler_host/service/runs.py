"""Run history use cases."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from scheduler_host.domain.errors import (
    FieldViolation,
    InstallNotFound,
    ScheduleNotFound,
)
from scheduler_host.domain.install import InstallContext
from scheduler_host.domain.runs import ScheduleRun
from scheduler_host.domain.schedule import validate_uuid
from scheduler_host.service.ports import PageTokens, Position, UnitOfWorkFactory
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


def _runs_request(
    schedule_id: str,
    page_size: int,
    page_token: str,
    tokens: PageTokens,
    violations: list[FieldViolation],
) -> tuple[uuid.UUID, int, Position | None, str]:
    """The schedule id, page size, position and token scope of a run listing; raises every
    violation (with `violations` found by the caller) at once."""
    sid = validate_uuid(schedule_id, "schedule_id")
    if isinstance(sid, FieldViolation):
        violations = [*violations, sid]
    scope = f"runs:{sid}"
    size, before = read_page_request(page_size, page_token, tokens, scope, violations)
    assert isinstance(sid, uuid.UUID)
    return sid, size, before, scope


async def _page(
    ctx: InstallContext,
    sid: uuid.UUID,
    size: int,
    before: Position | None,
    scope: str,
    *,
    uow_factory: UnitOfWorkFactory,
    tokens: PageTokens,
) -> RunPage:
    # Independent reads: no transaction needed.
    async with uow_factory(autocommit=True) as uow:
        if await uow.schedules.get(ctx.tenant_id, ctx.install_id, sid, for_update=False) is None:
            raise ScheduleNotFound(str(sid))
        rows = await uow.runs.page(ctx.tenant_id, sid, before, size + 1)
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = tokens.encode(scope, [rows[-1].scheduled_time.isoformat(), str(rows[-1].id)])
    return RunPage(rows, token)


async def list_runs(
    ctx: InstallContext,
    schedule_id: str,
    page_size: int,
    page_token: str,
    *,
    uow_factory: UnitOfWorkFactory,
    tokens: PageTokens,
) -> RunPage:
    """One page of a schedule's runs, newest first; another install's schedule is NOT_FOUND."""
    request = _runs_request(schedule_id, page_size, page_token, tokens, [])
    return await _page(ctx, *request, uow_factory=uow_factory, tokens=tokens)


async def list_install_runs(
    install_id: str,
    schedule_id: str,
    page_size: int,
    page_token: str,
    *,
    uow_factory: UnitOfWorkFactory,
    tokens: PageTokens,
) -> RunPage:
    """list_runs for an operator, who names the install too."""
    iid = validate_uuid(install_id, "install_id")
    bad = [iid] if isinstance(iid, FieldViolation) else []
    request = _runs_request(schedule_id, page_size, page_token, tokens, bad)
    assert isinstance(iid, uuid.UUID)
    async with uow_factory(autocommit=True) as uow:
        ctx = await uow.installs.context(iid)
    if ctx is None:
        raise InstallNotFound(str(iid))
    return await _page(ctx, *request, uow_factory=uow_factory, tokens=tokens)
