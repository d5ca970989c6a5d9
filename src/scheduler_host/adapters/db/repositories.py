"""SQL implementations of the repository ports, on one AsyncConnection inside a transaction."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from scheduler_host.adapters.db.rows import (
    install_context_from_row,
    install_from_row,
    run_from_row,
    schedule_from_row,
)
from scheduler_host.adapters.db.tables import (
    endpoints,
    idempotency_keys,
    installs,
    rate_limit_hits,
    schedule_runs,
    schedules,
)
from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.errors import NameInUse
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.domain.runs import ScheduleRun
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.ports import AddOutcome

_NAME_IN_USE = "a schedule with this name already exists in the install"


def _schedule_values(s: Schedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "tenant_id": s.tenant_id,
        "install_id": s.install_id,
        "endpoint_id": s.endpoint_id,
        "endpoint_method": s.endpoint_method,
        "endpoint_path": s.endpoint_path,
        "name": s.name,
        "cron": s.cron,
        "timezone": s.timezone,
        "enabled": s.enabled,
        # SQL NULL, not JSON null, for an unset payload.
        "payload": s.payload if s.payload is not None else sa.null(),
        "next_run_time": s.next_run_time,
        "last_run_time": s.last_run_time,
        "last_run_status": s.last_run_status,
        "last_error": s.last_error,
        "revision": s.revision,
        "create_time": s.create_time,
        "update_time": s.update_time,
    }


@contextlib.contextmanager
def _taken_name_is_name_in_use() -> Iterator[None]:
    """A write the schedule name index refuses raises NameInUse; other violations pass."""
    try:
        yield
    except sa.exc.IntegrityError as exc:
        text = str(exc.orig)
        if "uq_schedules_install_name" in text or "schedules.install_id, schedules.name" in text:
            raise NameInUse(_NAME_IN_USE) from None
        raise


def _bound(
    position: tuple[datetime, uuid.UUID], columns: Any, time_column: str = "create_time"
) -> Any:
    """A keyset position bound with the columns' types, so times are converted like stored ones."""
    return sa.tuple_(
        sa.literal(position[0], columns[time_column].type), sa.literal(position[1], columns.id.type)
    )


_SCHEDULE_COLUMNS = [c for c in schedules.c if c.name != "running_run_id"]
# What UpdateSchedule writes besides next_run_time: the caller's fields, revision, update time.
_DEFINITION_COLUMNS = frozenset(
    {
        "endpoint_id",
        "endpoint_method",
        "endpoint_path",
        "name",
        "cron",
        "timezone",
        "enabled",
        "payload",
        "revision",
        "update_time",
    }
)


class SqlScheduleRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID, *, for_update: bool
    ) -> Schedule | None:
        query = sa.select(*_SCHEDULE_COLUMNS).where(
            schedules.c.tenant_id == tenant_id,
            schedules.c.install_id == install_id,
            schedules.c.id == schedule_id,
        )
        if for_update:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return schedule_from_row(row._mapping) if row else None

    async def list_page(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[Schedule]:
        query = sa.select(*_SCHEDULE_COLUMNS).where(
            schedules.c.tenant_id == tenant_id, schedules.c.install_id == install_id
        )
        if after is not None:
            query = query.where(
                sa.tuple_(schedules.c.create_time, schedules.c.id) > _bound(after, schedules.c)
            )
        query = query.order_by(schedules.c.create_time, schedules.c.id).limit(limit)
        return [schedule_from_row(r._mapping) for r in await self._conn.execute(query)]

    async def page_with_total(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> tuple[list[Schedule], int]:
        # Two statements: in a transaction (SQLite always runs one) they share a snapshot.
        rows = await self.list_page(tenant_id, install_id, after, limit)
        return rows, await self.count(tenant_id, install_id)

    async def count(self, tenant_id: str, install_id: uuid.UUID) -> int:
        query = sa.select(sa.func.count()).where(
            schedules.c.tenant_id == tenant_id, schedules.c.install_id == install_id
        )
        return int((await self._conn.execute(query)).scalar_one())

    async def usage(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        request_id: uuid.UUID | None,
        since: datetime,
    ) -> tuple[int, uuid.UUID | None]:
        count = await self.count(tenant_id, install_id)
        if request_id is None:
            return count, None
        return count, await self.find_request(tenant_id, install_id, request_id, since)

    async def for_install(self, tenant_id: str, install_id: uuid.UUID) -> list[Schedule]:
        return await self.list_page(tenant_id, install_id, None, 1_000_000)

    async def name_taken(
        self, tenant_id: str, install_id: uuid.UUID, name: str, exclude: uuid.UUID | None
    ) -> bool:
        query = sa.select(schedules.c.id).where(
            schedules.c.tenant_id == tenant_id,
            schedules.c.install_id == install_id,
            schedules.c.name == name,
        )
        if exclude is not None:
            query = query.where(schedules.c.id != exclude)
        return (await self._conn.execute(query.limit(1))).first() is not None

    async def add(self, schedule: Schedule) -> None:
        # No savepoint: a refusal ends the use case (the port says so), saving two statements.
        with _taken_name_is_name_in_use():
            await self._conn.execute(schedules.insert().values(**_schedule_values(schedule)))

    async def add_within_quota(
        self, schedule: Schedule, limit: int, request_id: uuid.UUID | None, since: datetime
    ) -> AddOutcome:
        tenant_id, install_id = schedule.tenant_id, schedule.install_id
        count, earlier = await self.usage(tenant_id, install_id, request_id, since)
        if earlier is not None:
            return AddOutcome(added=False, earlier=earlier)
        if count >= limit:
            return AddOutcome(added=False)
        await self.add(schedule)
        if request_id is not None:
            await self.remember_request(
                tenant_id, install_id, request_id, schedule.id, schedule.create_time
            )
        return AddOutcome(added=True)

    async def update_definition(
        self, schedule: Schedule, expected_revision: int, *, timing: bool
    ) -> Schedule | None:
        values = {
            key: value
            for key, value in _schedule_values(schedule).items()
            if key in _DEFINITION_COLUMNS or (timing and key == "next_run_time")
        }
        s = schedules.c
        with _taken_name_is_name_in_use():
            row = (
                await self._conn.execute(
                    schedules.update()
                    .where(
                        s.tenant_id == schedule.tenant_id,
                        s.install_id == schedule.install_id,
                        s.id == schedule.id,
                        s.revision == expected_revision,
                    )
                    .values(**values)
                    .returning(*_SCHEDULE_COLUMNS)
                )
            ).first()
        return schedule_from_row(row._mapping) if row else None

    async def replace(self, schedule: Schedule) -> None:
        values = _schedule_values(schedule)
        for key in ("id", "tenant_id", "install_id", "create_time"):
            values.pop(key)
        with _taken_name_is_name_in_use():
            await self._conn.execute(
                schedules.update()
                .where(
                    schedules.c.tenant_id == schedule.tenant_id,
                    schedules.c.install_id == schedule.install_id,
                    schedules.c.id == schedule.id,
                )
                .values(**values)
            )

    async def delete(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        schedule_id: uuid.UUID,
        *,
        revision: int | None = None,
    ) -> bool:
        query = schedules.delete().where(
            schedules.c.tenant_id == tenant_id,
            schedules.c.install_id == install_id,
            schedules.c.id == schedule_id,
        )
        if revision is not None:
            query = query.where(schedules.c.revision == revision)
        result = await self._conn.execute(query)
        return bool(result.rowcount)

    async def find_request(
        self, tenant_id: str, install_id: uuid.UUID, request_id: uuid.UUID, since: datetime
    ) -> uuid.UUID | None:
        query = sa.select(idempotency_keys.c.schedule_id).where(
            idempotency_keys.c.tenant_id == tenant_id,
            idempotency_keys.c.install_id == install_id,
            idempotency_keys.c.request_id == request_id,
            idempotency_keys.c.create_time > since,
        )
        found = (await self._conn.execute(query)).scalar_one_or_none()
        return found if isinstance(found, uuid.UUID) else None

    async def remember_request(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        request_id: uuid.UUID,
        schedule_id: uuid.UUID,
        now: datetime,
    ) -> None:
        # An expired key for the same request id is replaced, so ids can be reused after 24 h.
        await self._conn.execute(
            idempotency_keys.delete().where(
                idempotency_keys.c.install_id == install_id,
                idempotency_keys.c.request_id == request_id,
            )
        )
        await self._conn.execute(
            idempotency_keys.insert().values(
                install_id=install_id,
                request_id=request_id,
                tenant_id=tenant_id,
                schedule_id=schedule_id,
                create_time=now,
            )
        )


class SqlInstallRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def context(self, install_id: uuid.UUID) -> InstallContext | None:
        row = (
            await self._conn.execute(sa.select(installs).where(installs.c.id == install_id))
        ).first()
        if row is None:
            return None
        return install_context_from_row(row._mapping, install_id_key="id")

    async def get(self, install_id: uuid.UUID) -> Install | None:
        row = (
            await self._conn.execute(sa.select(installs).where(installs.c.id == install_id))
        ).first()
        if row is None:
            return None
        m = row._mapping
        eps = await self.endpoints(m["tenant_id"], install_id, m["version_id"])
        return install_from_row(m, eps)

    async def lock(self, tenant_id: str, install_id: uuid.UUID) -> bool:
        query = (
            sa.select(installs.c.id)
            .where(installs.c.tenant_id == tenant_id, installs.c.id == install_id)
            .with_for_update()
        )
        return (await self._conn.execute(query)).first() is not None

    async def endpoints(
        self, tenant_id: str, install_id: uuid.UUID, version_id: str
    ) -> list[Endpoint]:
        query = (
            sa.select(endpoints.c.id, endpoints.c.method, endpoints.c.path, endpoints.c.handler)
            .where(
                endpoints.c.tenant_id == tenant_id,
                endpoints.c.install_id == install_id,
                endpoints.c.version_id == version_id,
            )
            .order_by(endpoints.c.path, endpoints.c.method)
        )
        return [
            Endpoint(id=r.id, method=r.method, path=r.path, handler=r.handler)
            for r in await self._conn.execute(query)
        ]

    async def save(self, install: Install) -> None:
        values = {
            "tenant_id": install.tenant_id,
            "registry_id": install.registry_id,
            "version_id": install.version_id,
            "content_hash": install.content_hash,
            "enabled": install.enabled,
            "granted_capabilities": list(install.granted_capabilities),
            "update_time": install.update_time,
        }
        updated = await self._conn.execute(
            installs.update().where(installs.c.id == install.install_id).values(**values)
        )
        if not updated.rowcount:
            await self._conn.execute(
                installs.insert().values(
                    id=install.install_id, create_time=install.create_time, **values
                )
            )
        # Only the current version's endpoints are kept; schedules store method and path.
        await self._conn.execute(
            endpoints.delete().where(
                endpoints.c.tenant_id == install.tenant_id,
                endpoints.c.install_id == install.install_id,
            )
        )
        if install.endpoints:
            await self._conn.execute(
                endpoints.insert(),
                [
                    {
                        "id": e.id,
                        "tenant_id": install.tenant_id,
                        "install_id": install.install_id,
                        "version_id": install.version_id,
                        "method": e.method,
                        "path": e.path,
                        "handler": e.handler,
                    }
                    for e in install.endpoints
                ],
            )

    async def delete(self, install_id: uuid.UUID) -> bool:
        result = await self._conn.execute(installs.delete().where(installs.c.id == install_id))
        return bool(result.rowcount)


class SqlRunRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def page(
        self,
        tenant_id: str,
        schedule_id: uuid.UUID,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[ScheduleRun]:
        r = schedule_runs.c
        query = sa.select(schedule_runs).where(
            r.tenant_id == tenant_id, r.schedule_id == schedule_id
        )
        if before is not None:
            query = query.where(
                sa.tuple_(r.scheduled_time, r.id)
                < _bound(before, schedule_runs.c, "scheduled_time")
            )
        query = query.order_by(r.scheduled_time.desc(), r.id.desc()).limit(limit)
        return [run_from_row(row._mapping) for row in await self._conn.execute(query)]


class SqlRateLimiter:
    """Rolling-window counter in the database, so every server process shares it."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def hit(
        self, scope: str, tenant_id: str, limit: int, window: timedelta, now: datetime
    ) -> timedelta | None:
        if self._conn.dialect.name == "postgresql":
            # One statement (migration 0002): exact on its own, also without a transaction.
            wait = (
                await self._conn.execute(
                    sa.text("SELECT rate_limit_hit(:scope, :tenant_id, :limit, :window, :now)"),
                    {
                        "scope": scope,
                        "tenant_id": tenant_id,
                        "limit": limit,
                        "window": window,
                        "now": now,
                    },
                )
            ).scalar_one()
            assert wait is None or isinstance(wait, timedelta)
            return wait
        h = rate_limit_hits.c
        # As the function does: a hit stored with a later clock reading than `now` (its caller
        # came second to the clock but first to the database) moves `now` up to it.
        newest = (
            await self._conn.execute(sa.select(sa.func.max(h.hit_time)).where(h.scope == scope))
        ).scalar_one_or_none()
        if newest is not None and newest > now:
            now = newest
        start = now - window
        await self._conn.execute(
            rate_limit_hits.delete().where(h.scope == scope, h.hit_time <= start)
        )
        times = (
            (
                await self._conn.execute(
                    sa.select(h.hit_time)
                    .where(h.scope == scope, h.hit_time > start)
                    .order_by(h.hit_time.desc())
                    .limit(limit)
                )
            )
            .scalars()
            .all()
        )
        if len(times) >= limit:
            # The limit-th newest hit is the one whose departure frees a slot.
            frees_at: datetime = times[limit - 1] + window
            return max(frees_at - now, timedelta(milliseconds=1))
        await self._conn.execute(
            rate_limit_hits.insert().values(scope=scope, tenant_id=tenant_id, hit_time=now)
        )
        return None
