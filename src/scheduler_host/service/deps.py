"""What the transport hands every use case: the unit of work, the clock, shared caches and the
policies (small values built from the settings by the composition root)."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler_host.service.access import InstallContextCache, ReadLimiter
from scheduler_host.service.policies import AccessPolicy, SchedulePolicy
from scheduler_host.service.ports import Clock, PageTokens, UnitOfWorkFactory


@dataclass(frozen=True)
class UseCaseDeps:
    uow_factory: UnitOfWorkFactory
    clock: Clock
    page_tokens: PageTokens
    install_cache: InstallContextCache
    read_limiter: ReadLimiter
    schedules: SchedulePolicy
    access: AccessPolicy
