"""The schedules of installs on PostgreSQL: every statement of the aggregate, as constants,
each naming its bucket with an equality (see buckets.py) and each one round trip; a create is
one call of `create_schedule` (migration 0003).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime

import asyncpg

from scheduler_host.adapters.db.buckets import bucket_of
from scheduler_host.adapters.db.pool import Repository
from scheduler_host.adapters.db.rows import (
    SCHEDULE_COLUMNS,
    SCHEDULE_DEFINITION,
    columns,
    schedule_from_row,
    schedule_values,
    unnest_arrays,
)
from scheduler_host.domain.errors import InstallNotFound, NameInUse
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service.ports import CreateOutcome, Position

_NAME_INDEX = "uq_schedules_install_name"
_NAME_KEY = "(bucket, install_id, name)"
_UNIQUE_VIOLATION = "23505"

_COLS = columns(SCHEDULE_COLUMNS)
_SCOPE = "bucket = $1 AND tenant_id = $2 AND install_id = $3"

_GET = f"SELECT {_COLS} FROM schedules WHERE {_SCOPE} AND id = $4"
_GET_FOR_UPDATE = _GET + " FOR UPDATE"

# The total comes from the same snapshot; the LEFT JOIN keeps it when the page is empty.
_PAGE = f"""SELECT c.total, {columns(SCHEDULE_COLUMNS, "s")}
FROM (SELECT count(*) AS total FROM schedules WHERE {_SCOPE}) AS c
LEFT JOIN LATERAL (
    SELECT {_COLS} FROM schedules
    WHERE {_SCOPE}{{after}}
    ORDER BY create_time, id LIMIT $4
) AS s ON true
ORDER BY s.create_time, s.id"""
_PAGE_FIRST = _PAGE.format(after="")
_PAGE_AFTER = _PAGE.format(after=" AND (create_time, id) > ($5, $6)")

_USAGE = """SELECT
    (SELECT count(*) FROM schedules WHERE bucket = $1 AND tenant_id = $5 AND install_id = $2),
    (SELECT schedule_id FROM idempotency_keys
     WHERE bucket = $1 AND tenant_id = $5 AND install_id = $2 AND request_id = $3
       AND create_time > $4)"""

# The columns create_schedule takes after its seven leading parameters, in its order.
_CREATED_COLUMNS = ("id", "tenant_id", *SCHEDULE_DEFINITION, "next_run_time")
_CREATE = (
    "SELECT outcome, earlier, created FROM create_schedule($1, $2, $3, $4, $5, $6, $7, "
    + ", ".join(f"${i}" for i in range(8, 8 + len(_CREATED_COLUMNS)))
    + ")"
)

# What UpdateSchedule changes; next_run_time only when the timing changed, since the dispatcher
# keeps it (and the last-run fields) without a revision of its own. Written only while the
# install is still at the version the caller resolved the endpoint against.
_UPDATED_COLUMNS = (*SCHEDULE_DEFINITION, "revision", "update_time")
_N_DEF = len(_UPDATED_COLUMNS)
_UPDATE_DEFINITION = (
    "UPDATE schedules SET "
    + ", ".join(f"{name} = ${i}" for i, name in enumerate(_UPDATED_COLUMNS, 5))
    + f", next_run_time = CASE WHEN ${_N_DEF + 5}::boolean THEN ${_N_DEF + 6}::timestamptz "
    "ELSE next_run_time END "
    f"WHERE {_SCOPE} AND id = $4 AND revision = ${_N_DEF + 7} AND EXISTS ("
    "SELECT 1 FROM installs i WHERE i.bucket = $1 AND i.id = $3 "
    f"AND i.version_id = ${_N_DEF + 8}) RETURNING {_COLS}"
)

_DELETE = f"""DELETE FROM schedules
WHERE {_SCOPE} AND id = $4 AND ($5::integer IS NULL OR revision = $5) RETURNING true"""

# An upgrade's remap holds the install's schedules until it commits, so neither an update nor a
# dispatcher's finish in between is overwritten.
_FOR_INSTALL_LOCKED = f"SELECT {_COLS} FROM schedules WHERE {_SCOPE} ORDER BY id FOR UPDATE"
_REMAP_COLUMNS = (
    "id",
    "endpoint_id",
    "enabled",
    "next_run_time",
    "last_error",
    "revision",
    "update_time",
)
_REMAP = """UPDATE schedules AS s SET endpoint_id = v.endpoint_id, enabled = v.enabled,
    next_run_time = v.next_run_time, last_error = v.last_error, revision = v.revision,
    update_time = v.update_time
FROM unnest($4::uuid[], $5::uuid[], $6::boolean[], $7::timestamptz[], $8::text[],
            $9::integer[], $10::timestamptz[])
    AS v(id, endpoint_id, enabled, next_run_time, last_error, revision, update_time)
WHERE s.bucket = $1 AND s.tenant_id = $2 AND s.install_id = $3 AND s.id = v.id"""


def is_name_in_use(exc: BaseException) -> bool:
    """Whether a write was refused for a taken schedule name. Read from what survives a sharded
    PostgreSQL relaying a worker's error (SQLSTATE, message, detail), since the constraint name
    may not: the shard's index name carries a suffix, and the key names its columns."""
    if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
        return False
    said = " ".join(
        str(part or "")
        for part in (
            getattr(exc, "constraint_name", None),
            getattr(exc, "message", None) or (exc.args[0] if exc.args else ""),
            getattr(exc, "detail", None),
        )
    )
    return _NAME_INDEX in said or _NAME_KEY in said


@contextmanager
def _taken_name_is_name_in_use() -> Iterator[None]:
    try:
        yield
    except asyncpg.PostgresError as exc:
        if is_name_in_use(exc):
            raise NameInUse("a schedule with this name already exists in the install") from None
        raise


def _scope(tenant_id: str, install_id: uuid.UUID) -> tuple[int, str, uuid.UUID]:
    return bucket_of(tenant_id), tenant_id, install_id


class PgScheduleRepository(Repository):
    __slots__ = ()

    async def get(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID, *, for_update: bool
    ) -> Schedule | None:
        conn = await self._connect()
        row = await conn.fetchrow(
            _GET_FOR_UPDATE if for_update else _GET, *_scope(tenant_id, install_id), schedule_id
        )
        return schedule_from_row(row) if row is not None else None

    async def page_with_total(
        self, tenant_id: str, install_id: uuid.UUID, after: Position | None, limit: int
    ) -> tuple[list[Schedule], int]:
        conn = await self._connect()
        scope = _scope(tenant_id, install_id)
        statement = _PAGE_FIRST if after is None else _PAGE_AFTER
        rows = await conn.fetch(statement, *scope, limit, *(after or ()))
        total = int(rows[0]["total"])
        if rows[0]["id"] is None:  # no schedule on this page: only the total's row
            return [], total
        return [schedule_from_row(row) for row in rows], total

    async def usage(
        self, tenant_id: str, install_id: uuid.UUID, request_id: uuid.UUID | None, since: datetime
    ) -> tuple[int, uuid.UUID | None]:
        conn = await self._connect()
        row = await conn.fetchrow(
            _USAGE, bucket_of(tenant_id), install_id, request_id, since, tenant_id
        )
        assert row is not None
        return int(row[0]), row[1]

    async def create(
        self,
        schedule: Schedule,
        limit: int,
        request_id: uuid.UUID | None,
        since: datetime,
        version_id: str,
    ) -> CreateOutcome:
        conn = await self._connect()
        s = schedule
        with _taken_name_is_name_in_use():
            row = await conn.fetchrow(
                _CREATE,
                bucket_of(s.tenant_id),
                s.install_id,
                request_id,
                since,
                limit,
                s.create_time,
                version_id,
                *schedule_values(s, _CREATED_COLUMNS),
            )
        assert row is not None
        outcome = row["outcome"]
        if outcome == "no-install":
            raise InstallNotFound(str(s.install_id))
        if outcome == "earlier":
            return CreateOutcome(earlier=row["earlier"])
        if outcome == "full":
            return CreateOutcome(full=True)
        if outcome == "stale-version":
            return CreateOutcome(stale_version=True)
        created: datetime = row["created"]
        return CreateOutcome(created=replace(s, create_time=created, update_time=created))

    async def update_definition(
        self, schedule: Schedule, expected_revision: int, *, timing: bool, version_id: str
    ) -> Schedule | None:
        conn = await self._connect()
        s = schedule
        with _taken_name_is_name_in_use():
            row = await conn.fetchrow(
                _UPDATE_DEFINITION,
                *_scope(s.tenant_id, s.install_id),
                s.id,
                *schedule_values(s, _UPDATED_COLUMNS),
                timing,
                s.next_run_time,
                expected_revision,
                version_id,
            )
        return schedule_from_row(row) if row is not None else None

    async def delete(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        schedule_id: uuid.UUID,
        *,
        revision: int | None = None,
    ) -> bool:
        conn = await self._connect()
        return bool(
            await conn.fetchval(_DELETE, *_scope(tenant_id, install_id), schedule_id, revision)
        )

    async def lock_install_schedules(self, tenant_id: str, install_id: uuid.UUID) -> list[Schedule]:
        conn = await self._connect()
        rows = await conn.fetch(_FOR_INSTALL_LOCKED, *_scope(tenant_id, install_id))
        return [schedule_from_row(row) for row in rows]

    async def apply_remap(
        self, tenant_id: str, install_id: uuid.UUID, changes: Sequence[Schedule]
    ) -> None:
        if not changes:
            return
        conn = await self._connect()
        await conn.execute(
            _REMAP,
            *_scope(tenant_id, install_id),
            *unnest_arrays(
                (schedule_values(s, _REMAP_COLUMNS) for s in changes), len(_REMAP_COLUMNS)
            ),
        )
