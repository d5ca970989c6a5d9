"""What every use case is given: the unit of work, settings, the clock and shared caches."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler_host.config import Settings
from scheduler_host.service.access import InstallContextCache
from scheduler_host.service.ports import Clock, PageTokens, UnitOfWorkFactory


@dataclass(frozen=True)
class UseCaseDeps:
    uow_factory: UnitOfWorkFactory
    settings: Settings
    clock: Clock
    page_tokens: PageTokens
    install_cache: InstallContextCache
