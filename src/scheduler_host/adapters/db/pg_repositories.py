"""Raw-asyncpg implementations of the repository ports, for the API's PostgreSQL path.

The SQL strings are constants, so asyncpg prepares each once per connection and reuses it. Each
use case step is one statement where one statement can do it: the page with its total, a
create's checks with its writes, a conditional update or delete. The rate limiter is the
function of migration 0002. The schema is the one of tables.py (the migrations create it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from scheduler_host.adapters.db.rows import install_context_from_row, install_from_row, run_from_row
from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.errors import NameInUse
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.domain.runs import ScheduleRun
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.ports import AddOutcome, EndpointCache

# The connection a repository uses: the unit of work's, opened (and its transaction begun) on
# the first statement.
Connect = Callable[[], Awaitable[Any]]

_NAME_IN_USE = "a schedule with this name already exists in the install"
_NAME_INDEX = "uq_schedules_install_name"

# The schedules columns in the order of Schedule's fields, so a row is Schedule(*row).
_FIELDS = [f.name for f in dataclasses.fields(Schedule)]
_COLS = ", ".join(_FIELDS)
_S_COLS = ", ".join(f"s.{name}" for name in _FIELDS)
# Casts of the parameters $1.. in that order, where their type cannot be inferred.
_TYPES = {
    "id": "uuid",
    "install_id": "uuid",
    "tenant_id": "varchar",
    "endpoint_id": "uuid",
    "endpoint_method": "varchar",
    "endpoint_path": "varchar",
    "name": "varchar",
    "cron": "varchar",
    "timezone": "varchar",
    "enabled": "boolean",
    "payload": "jsonb",
    "next_run_time": "timestamptz",
    "last_run_time": "timestamptz",
    "last_run_status": "varchar",
    "last_error": "text",
    "create_time": "timestamptz",
    "update_time": "timestamptz",
    "revision": "integer",
}
assert set(_TYPES) == set(_FIELDS), "Schedule's fields and the schedules columns diverged"
_N = len(_FIELDS)
_VALUES = ", ".join(f"${i}::{_TYPES[name]}" for i, name in enumerate(_FIELDS, 1))
_P = {name: f"${i}" for i, name in enumerate(_FIELDS, 1)}

_GET = f"SELECT {_COLS} FROM schedules WHERE tenant_id = $1 AND install_id = $2 AND id = $3"
_GET_FOR_UPDATE = _GET + " FOR UPDATE"

# The total comes from the same snapshot; the LEFT JOIN keeps it when the page is empty.
_PAGE = f"""SELECT c.total, {_S_COLS}
FROM (SELECT count(*) AS total FROM schedules WHERE tenant_id = $1 AND install_id = $2) AS c
LEFT JOIN LATERAL (
    SELECT {_COLS} FROM schedules
    WHERE tenant_id = $1 AND install_id = $2{{after}}
    ORDER BY create_time, id LIMIT $3
) AS s ON true
ORDER BY s.create_time, s.id"""
_PAGE_FIRST = _PAGE.format(after="")
_PAGE_AFTER = _PAGE.format(after=" AND (create_time, id) > ($4, $5)")

_COUNT = "SELECT count(*) FROM schedules WHERE tenant_id = $1 AND install_id = $2"

_USAGE = """SELECT
    (SELECT count(*) FROM schedules WHERE tenant_id = $1 AND install_id = $2),
    (SELECT schedule_id FROM idempotency_keys
     WHERE tenant_id = $1 AND install_id = $2 AND request_id = $3 AND create_time > $4)"""

_NAME_TAKEN = """SELECT EXISTS (
    SELECT 1 FROM schedules
    WHERE tenant_id = $1 AND install_id = $2 AND name = $3 AND id IS DISTINCT FROM $4)"""

_ADD = f"INSERT INTO schedules ({_COLS}) VALUES ({_VALUES})"

_REMEMBER = """INSERT INTO idempotency_keys
    (install_id, request_id, tenant_id, schedule_id, create_time)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (install_id, request_id) DO UPDATE
SET tenant_id = excluded.tenant_id, schedule_id = excluded.schedule_id,
    create_time = excluded.create_time"""

# After the install row lock (a statement of its own, so this one's snapshot sees every create
# committed before the lock was granted): the idempotency key, the quota, then the insert with
# its key (an expired key of the same request id is replaced). The name index refuses a taken
# name. ${_N + 1}: request id or NULL; ${_N + 2}: keys made after it count; ${_N + 3}: limit.
_ADD_WITHIN_QUOTA = f"""WITH state AS (
    SELECT
        (SELECT count(*) FROM schedules WHERE tenant_id = {_P["tenant_id"]}
         AND install_id = {_P["install_id"]}) AS n,
        (SELECT schedule_id FROM idempotency_keys
         WHERE tenant_id = {_P["tenant_id"]} AND install_id = {_P["install_id"]}
         AND request_id = ${_N + 1}::uuid AND create_time > ${_N + 2}::timestamptz) AS earlier
), added AS (
    INSERT INTO schedules ({_COLS})
    SELECT {_VALUES} FROM state WHERE state.n < ${_N + 3}::bigint AND state.earlier IS NULL
    RETURNING id, create_time
), remembered AS (
    INSERT INTO idempotency_keys (install_id, request_id, tenant_id, schedule_id, create_time)
    SELECT {_P["install_id"]}, ${_N + 1}::uuid, {_P["tenant_id"]}, added.id, added.create_time
    FROM added WHERE ${_N + 1}::uuid IS NOT NULL
    ON CONFLICT (install_id, request_id) DO UPDATE
    SET tenant_id = excluded.tenant_id, schedule_id = excluded.schedule_id,
        create_time = excluded.create_time
)
SELECT added.id IS NOT NULL, state.earlier FROM state LEFT JOIN added ON true"""

_WRITABLE = [n for n in _FIELDS if n not in {"id", "tenant_id", "install_id", "create_time"}]
# Parameters: tenant, install, id, then the written columns in _WRITABLE's order.
_REPLACE = (
    "UPDATE schedules SET "
    + ", ".join(f"{name} = ${i}" for i, name in enumerate(_WRITABLE, 4))
    + " WHERE tenant_id = $1 AND install_id = $2 AND id = $3"
)

# What UpdateSchedule changes; next_run_time only when the timing changed ($14), since the
# dispatcher keeps it (and the last run fields) without a revision of its own.
_UPDATE_DEFINITION = f"""UPDATE schedules SET
    endpoint_id = $4, endpoint_method = $5, endpoint_path = $6, name = $7, cron = $8,
    timezone = $9, enabled = $10, payload = $11::jsonb, revision = $12, update_time = $13,
    next_run_time = CASE WHEN $14::boolean THEN $15::timestamptz ELSE next_run_time END
WHERE tenant_id = $1 AND install_id = $2 AND id = $3 AND revision = $16
RETURNING {_COLS}"""

_DELETE = """DELETE FROM schedules
WHERE tenant_id = $1 AND install_id = $2 AND id = $3 AND ($4::integer IS NULL OR revision = $4)
RETURNING true"""

_FIND_REQUEST = """SELECT schedule_id FROM idempotency_keys
WHERE tenant_id = $1 AND install_id = $2 AND request_id = $3 AND create_time > $4"""

_INSTALL_COLS = (
    "id, tenant_id, registry_id, version_id, content_hash, enabled, granted_capabilities"
)
_CONTEXT = f"SELECT {_INSTALL_COLS} FROM installs WHERE id = $1"
_INSTALL = f"SELECT {_INSTALL_COLS}, create_time, update_time FROM installs WHERE id = $1"
_LOCK = "SELECT true FROM installs WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
_ENDPOINTS = """SELECT id, method, path, handler FROM endpoints
WHERE tenant_id = $1 AND install_id = $2 AND version_id = $3 ORDER BY path, method"""
_SAVE_INSTALL = """INSERT INTO installs
    (id, tenant_id, registry_id, version_id, content_hash, enabled, granted_capabilities,
     create_time, update_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET
    tenant_id = excluded.tenant_id, registry_id = excluded.registry_id,
    version_id = excluded.version_id, content_hash = excluded.content_hash,
    enabled = excluded.enabled, granted_capabilities = excluded.granted_capabilities,
    update_time = excluded.update_time"""
_DELETE_ENDPOINTS = "DELETE FROM endpoints WHERE tenant_id = $1 AND install_id = $2"
_INSERT_ENDPOINTS = """INSERT INTO endpoints
    (id, tenant_id, install_id, version_id, method, path, handler)
SELECT e.id, $1, $2, $3, e.method, e.path, e.handler
FROM unnest($4::uuid[], $5::varchar[], $6::varchar[], $7::varchar[])
    AS e(id, method, path, handler)"""
_DELETE_INSTALL = "DELETE FROM installs WHERE id = $1 RETURNING true"

_RUN_COLS = (
    "id, tenant_id, install_id, schedule_id, trigger, scheduled_time, start_time, "
    "finish_time, status, attempt, error"
)
_RUNS = f"""SELECT {_RUN_COLS} FROM schedule_runs
WHERE tenant_id = $1 AND schedule_id = $2{{before}}
ORDER BY scheduled_time DESC, id DESC LIMIT $3"""
_RUNS_FIRST = _RUNS.format(before="")
_RUNS_BEFORE = _RUNS.format(before=" AND (scheduled_time, id) < ($4, $5)")

_RATE_LIMIT_HIT = "SELECT rate_limit_hit($1, $2, $3, $4, $5)"


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("naive datetime reached the database layer")
    return value


def _schedule_args(s: Schedule) -> tuple[Any, ...]:
    """Schedule's fields in order ($1..$N), timestamps checked to carry a zone."""
    return (
        s.id,
        s.install_id,
        s.tenant_id,
        s.endpoint_id,
        s.endpoint_method,
        s.endpoint_path,
        s.name,
        s.cron,
        s.timezone,
        s.enabled,
        s.payload,
        _aware(s.next_run_time),
        _aware(s.last_run_time),
        s.last_run_status,
        s.last_error,
        _aware(s.create_time),
        _aware(s.update_time),
        s.revision,
    )


@contextlib.contextmanager
def _taken_name_is_name_in_use() -> Iterator[None]:
    """A write the schedule name index refuses raises NameInUse; other violations pass."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if getattr(exc, "constraint_name", None) == _NAME_INDEX:
            raise NameInUse(_NAME_IN_USE) from None
        raise


class PgScheduleRepository:
    __slots__ = ("_connect",)

    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    async def get(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID, *, for_update: bool
    ) -> Schedule | None:
        conn = await self._connect()
        row = await conn.fetchrow(
            _GET_FOR_UPDATE if for_update else _GET, tenant_id, install_id, schedule_id
        )
        return Schedule(*row) if row is not None else None

    async def page_with_total(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> tuple[list[Schedule], int]:
        conn = await self._connect()
        if after is None:
            rows = await conn.fetch(_PAGE_FIRST, tenant_id, install_id, limit)
        else:
            rows = await conn.fetch(
                _PAGE_AFTER, tenant_id, install_id, limit, _aware(after[0]), after[1]
            )
        total = int(rows[0][0])
        if rows[0][1] is None:  # no schedule on this page: only the total's row
            return [], total
        return [Schedule(*row[1:]) for row in rows], total

    async def list_page(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[Schedule]:
        return (await self.page_with_total(tenant_id, install_id, after, limit))[0]

    async def count(self, tenant_id: str, install_id: uuid.UUID) -> int:
        conn = await self._connect()
        return int(await conn.fetchval(_COUNT, tenant_id, install_id))

    async def usage(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        request_id: uuid.UUID | None,
        since: datetime,
    ) -> tuple[int, uuid.UUID | None]:
        conn = await self._connect()
        row = await conn.fetchrow(_USAGE, tenant_id, install_id, request_id, _aware(since))
        return int(row[0]), row[1]

    async def for_install(self, tenant_id: str, install_id: uuid.UUID) -> list[Schedule]:
        return await self.list_page(tenant_id, install_id, None, 1_000_000)

    async def name_taken(
        self, tenant_id: str, install_id: uuid.UUID, name: str, exclude: uuid.UUID | None
    ) -> bool:
        conn = await self._connect()
        return bool(await conn.fetchval(_NAME_TAKEN, tenant_id, install_id, name, exclude))

    async def add(self, schedule: Schedule) -> None:
        conn = await self._connect()
        with _taken_name_is_name_in_use():
            await conn.execute(_ADD, *_schedule_args(schedule))

    async def add_within_quota(
        self, schedule: Schedule, limit: int, request_id: uuid.UUID | None, since: datetime
    ) -> AddOutcome:
        conn = await self._connect()
        with _taken_name_is_name_in_use():
            row = await conn.fetchrow(
                _ADD_WITHIN_QUOTA, *_schedule_args(schedule), request_id, _aware(since), limit
            )
        return AddOutcome(added=row[0], earlier=row[1])

    async def replace(self, schedule: Schedule) -> None:
        conn = await self._connect()
        s = schedule
        values = [getattr(s, name) for name in _WRITABLE]
        with _taken_name_is_name_in_use():
            await conn.execute(_REPLACE, s.tenant_id, s.install_id, s.id, *values)

    async def update_definition(
        self, schedule: Schedule, expected_revision: int, *, timing: bool
    ) -> Schedule | None:
        conn = await self._connect()
        s = schedule
        with _taken_name_is_name_in_use():
            row = await conn.fetchrow(
                _UPDATE_DEFINITION,
                s.tenant_id,
                s.install_id,
                s.id,
                s.endpoint_id,
                s.endpoint_method,
                s.endpoint_path,
                s.name,
                s.cron,
                s.timezone,
                s.enabled,
                s.payload,
                s.revision,
                _aware(s.update_time),
                timing,
                _aware(s.next_run_time),
                expected_revision,
            )
        return Schedule(*row) if row is not None else None

    async def delete(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        schedule_id: uuid.UUID,
        *,
        revision: int | None = None,
    ) -> bool:
        conn = await self._connect()
        return bool(await conn.fetchval(_DELETE, tenant_id, install_id, schedule_id, revision))

    async def find_request(
        self, tenant_id: str, install_id: uuid.UUID, request_id: uuid.UUID, since: datetime
    ) -> uuid.UUID | None:
        conn = await self._connect()
        found = await conn.fetchval(_FIND_REQUEST, tenant_id, install_id, request_id, since)
        return found if isinstance(found, uuid.UUID) else None

    async def remember_request(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        request_id: uuid.UUID,
        schedule_id: uuid.UUID,
        now: datetime,
    ) -> None:
        conn = await self._connect()
        await conn.execute(_REMEMBER, install_id, request_id, tenant_id, schedule_id, _aware(now))


class PgInstallRepository:
    __slots__ = ("_cache", "_connect")

    def __init__(self, connect: Connect, cache: EndpointCache | None) -> None:
        self._connect = connect
        self._cache = cache

    async def context(self, install_id: uuid.UUID) -> InstallContext | None:
        conn = await self._connect()
        row = await conn.fetchrow(_CONTEXT, install_id)
        if row is None:
            return None
        return install_context_from_row(row, install_id_key="id")

    async def get(self, install_id: uuid.UUID) -> Install | None:
        conn = await self._connect()
        row = await conn.fetchrow(_INSTALL, install_id)
        if row is None:
            return None
        eps = await self._read_endpoints(conn, row["tenant_id"], install_id, row["version_id"])
        return install_from_row(row, eps)

    async def lock(self, tenant_id: str, install_id: uuid.UUID) -> bool:
        conn = await self._connect()
        return bool(await conn.fetchval(_LOCK, tenant_id, install_id))

    async def endpoints(
        self, tenant_id: str, install_id: uuid.UUID, version_id: str
    ) -> list[Endpoint]:
        cache = self._cache
        if cache is not None:
            cached = cache.endpoints(install_id, version_id)
            if cached is not None:
                return cached
        eps = await self._read_endpoints(await self._connect(), tenant_id, install_id, version_id)
        if cache is not None:
            cache.keep_endpoints(install_id, version_id, eps)
        return eps

    @staticmethod
    async def _read_endpoints(
        conn: Any, tenant_id: str, install_id: uuid.UUID, version_id: str
    ) -> list[Endpoint]:
        rows = await conn.fetch(_ENDPOINTS, tenant_id, install_id, version_id)
        return [Endpoint(r[0], r[1], r[2], r[3]) for r in rows]

    async def save(self, install: Install) -> None:
        conn = await self._connect()
        await conn.execute(
            _SAVE_INSTALL,
            install.install_id,
            install.tenant_id,
            install.registry_id,
            install.version_id,
            install.content_hash,
            install.enabled,
            list(install.granted_capabilities),
            _aware(install.create_time),
            _aware(install.update_time),
        )
        # Only the current version's endpoints are kept; schedules store method and path.
        await conn.execute(_DELETE_ENDPOINTS, install.tenant_id, install.install_id)
        if install.endpoints:
            eps = install.endpoints
            await conn.execute(
                _INSERT_ENDPOINTS,
                install.tenant_id,
                install.install_id,
                install.version_id,
                [e.id for e in eps],
                [e.method for e in eps],
                [e.path for e in eps],
                [e.handler for e in eps],
            )

    async def delete(self, install_id: uuid.UUID) -> bool:
        conn = await self._connect()
        return bool(await conn.fetchval(_DELETE_INSTALL, install_id))


class PgRunRepository:
    __slots__ = ("_connect",)

    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    async def page(
        self,
        tenant_id: str,
        schedule_id: uuid.UUID,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[ScheduleRun]:
        conn = await self._connect()
        if before is None:
            rows = await conn.fetch(_RUNS_FIRST, tenant_id, schedule_id, limit)
        else:
            rows = await conn.fetch(
                _RUNS_BEFORE, tenant_id, schedule_id, limit, _aware(before[0]), before[1]
            )
        return [run_from_row(r) for r in rows]


class PgRateLimiter:
    """The rolling window of migration 0002's rate_limit_hit: one statement, exact across
    processes, committed on its own in an autocommit unit of work."""

    __slots__ = ("_connect",)

    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    async def hit(
        self, scope: str, tenant_id: str, limit: int, window: timedelta, now: datetime
    ) -> timedelta | None:
        conn = await self._connect()
        wait = await conn.fetchval(_RATE_LIMIT_HIT, scope, tenant_id, limit, window, _aware(now))
        assert wait is None or isinstance(wait, timedelta)
        return wait
