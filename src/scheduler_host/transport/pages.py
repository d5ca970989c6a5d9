"""The page requests both services answer alike: SchedulerHost for the caller's install,
SchedulerAdmin for the install an operator names."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from scheduler_host.domain.install import InstallContext
from scheduler_host.service import runs, schedules
from scheduler_host.service.deps import UseCaseDeps


class PageRequest(Protocol):
    @property
    def page_size(self) -> int: ...

    @property
    def page_token(self) -> str: ...


class RunPageRequest(PageRequest, Protocol):
    @property
    def schedule_id(self) -> str: ...


async def schedule_page(
    ctx: InstallContext, request: PageRequest, deps: UseCaseDeps
) -> schedules.SchedulePage:
    return await schedules.list_schedules(
        ctx,
        request.page_size,
        request.page_token,
        uow_factory=deps.uow_factory,
        tokens=deps.page_tokens,
    )


async def run_page(
    list_runs: Callable[..., Awaitable[runs.RunPage]],
    install: Any,
    request: RunPageRequest,
    deps: UseCaseDeps,
) -> runs.RunPage:
    """`list_runs` is runs.list_runs (install: the caller's context) or runs.list_install_runs
    (install: the id an operator sent)."""
    return await list_runs(
        install,
        request.schedule_id,
        request.page_size,
        request.page_token,
        uow_factory=deps.uow_factory,
        tokens=deps.page_tokens,
    )
