"""RunScheduleNow: a schedule run at once (trigger manual), through the dispatcher's own path."""

from __future__ import annotations

from scheduler_host.domain.errors import (
    InstallDisabled,
    InstallNotFound,
    ScheduleNotFound,
    ValidationFailed,
)
from scheduler_host.domain.runs import ScheduleRun
from scheduler_host.service.access import count_call, manual_runs_scope
from scheduler_host.service.dispatch.claim_loop import Dispatcher
from scheduler_host.service.policies import AccessPolicy
from scheduler_host.service.ports import Clock, UnitOfWorkFactory
from scheduler_host.service.runs import parse_schedule_ids


async def run_schedule_now(
    install_id: str,
    schedule_id: str,
    *,
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    policy: AccessPolicy,
    dispatcher: Dispatcher,
) -> ScheduleRun:
    """Run a schedule at once, at most N per tenant per minute; returns the run in its final
    state."""
    iid, sid, bad = parse_schedule_ids(install_id, schedule_id)
    if bad:
        raise ValidationFailed(bad)
    assert iid is not None
    assert sid is not None
    async with uow_factory(autocommit=True) as uow:
        ctx = await uow.installs.context(iid)
    if ctx is None:
        raise InstallNotFound(str(iid))
    target = await dispatcher.load_target(ctx.tenant_id, iid, sid)
    if target is None:
        raise ScheduleNotFound(str(sid))
    if not ctx.enabled:
        raise InstallDisabled("the install is disabled; its schedules do not run")
    await count_call(
        manual_runs_scope(ctx.tenant_id),
        ctx.tenant_id,
        policy.manual_runs_per_minute,
        "manual runs per tenant",
        uow_factory=uow_factory,
        clock=clock,
    )
    return await dispatcher.run_now(target)
