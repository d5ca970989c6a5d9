"""The ports the use cases depend on; adapters implement them, tests may fake them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol, Self

from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.domain.runs import ScheduleRun
from scheduler_host.domain.schedule import Schedule

Clock = Callable[[], datetime]


class ScheduleRepository(Protocol):
    """Schedules of one install; every method is scoped by tenant and install."""

    async def get(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID, *, for_update: bool
    ) -> Schedule | None: ...

    async def list_page(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[Schedule]: ...

    async def count(self, tenant_id: str, install_id: uuid.UUID) -> int: ...

    async def for_install(self, tenant_id: str, install_id: uuid.UUID) -> list[Schedule]: ...

    async def name_taken(
        self, tenant_id: str, install_id: uuid.UUID, name: str, exclude: uuid.UUID | None
    ) -> bool: ...

    async def add(self, schedule: Schedule) -> None:
        """Insert; raises NameInUse when the database's unique name index refuses it."""

    async def replace(self, schedule: Schedule) -> None:
        """Write every field of an existing schedule; raises NameInUse like add."""

    async def delete(self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID) -> bool:
        """Remove the schedule with its runs; False when there was none."""

    async def find_request(
        self, tenant_id: str, install_id: uuid.UUID, request_id: uuid.UUID, since: datetime
    ) -> uuid.UUID | None:
        """The schedule a CreateSchedule with this request id made after `since`."""

    async def remember_request(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        request_id: uuid.UUID,
        schedule_id: uuid.UUID,
        now: datetime,
    ) -> None: ...


class InstallRepository(Protocol):
    async def get(self, install_id: uuid.UUID) -> Install | None: ...

    async def context(self, install_id: uuid.UUID) -> InstallContext | None: ...

    async def lock(self, tenant_id: str, install_id: uuid.UUID) -> bool:
        """Take the install's row lock for this transaction (serialises quota checks)."""

    async def endpoints(
        self, tenant_id: str, install_id: uuid.UUID, version_id: str
    ) -> list[Endpoint]: ...

    async def save(self, install: Install) -> None:
        """Insert or overwrite the install and the endpoints of its current version."""

    async def delete(self, install_id: uuid.UUID) -> bool: ...


class RunRepository(Protocol):
    async def page(
        self,
        tenant_id: str,
        schedule_id: uuid.UUID,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[ScheduleRun]: ...


class RateLimiter(Protocol):
    async def hit(
        self, scope: str, tenant_id: str, limit: int, window: timedelta, now: datetime
    ) -> timedelta | None:
        """Count one call in `scope`; or, when `limit` calls already fell in the rolling window,
        count nothing and return how long until the oldest of them leaves it."""


class UnitOfWork(Protocol):
    """One transaction: commit() makes the changes visible; leaving without it rolls back."""

    @property
    def schedules(self) -> ScheduleRepository: ...

    @property
    def installs(self) -> InstallRepository: ...

    @property
    def runs(self) -> RunRepository: ...

    @property
    def rate_limits(self) -> RateLimiter: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]


class PageTokens(Protocol):
    """Opaque, signed page tokens bound to one scope (an install, a schedule)."""

    def encode(self, scope: str, position: Sequence[str]) -> str: ...

    def decode(self, scope: str, token: str) -> list[str] | None: ...
