"""Run history, the rate limiter and the prune of expired rows on PostgreSQL: the statements."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from scheduler_host.adapters.db.buckets import BUCKETS, bucket_of
from scheduler_host.adapters.db.pool import Repository
from scheduler_host.adapters.db.rows import RUN_COLUMNS, columns, run_from_row
from scheduler_host.domain.runs import ScheduleRun
from scheduler_host.service.ports import Position

_RUNS = f"""SELECT {columns(RUN_COLUMNS)} FROM schedule_runs
WHERE bucket = $1 AND tenant_id = $2 AND schedule_id = $3{{before}}
ORDER BY scheduled_time DESC, id DESC LIMIT $4"""
_RUNS_FIRST = _RUNS.format(before="")
_RUNS_BEFORE = _RUNS.format(before=" AND (scheduled_time, id) < ($5, $6)")

_RATE_LIMIT_HIT = "SELECT rate_limit_hit($1::smallint, $2, $3, $4, $5, $6)"
_FORGET_HITS = "DELETE FROM rate_limit_hits WHERE bucket = $1 AND scope = $2"

_PRUNE_KEYS = "DELETE FROM idempotency_keys WHERE bucket = $1 AND create_time <= $2"
_PRUNE_HITS = "DELETE FROM rate_limit_hits WHERE bucket = $1 AND hit_time <= $2"


class PgRunRepository(Repository):
    __slots__ = ()

    async def page(
        self, tenant_id: str, schedule_id: uuid.UUID, before: Position | None, limit: int
    ) -> list[ScheduleRun]:
        conn = await self._connect()
        scope = (bucket_of(tenant_id), tenant_id, schedule_id, limit)
        statement = _RUNS_FIRST if before is None else _RUNS_BEFORE
        rows = await conn.fetch(statement, *scope, *(before or ()))
        return [run_from_row(r) for r in rows]


class PgRateLimiter(Repository):
    """The rolling windows of migration 0003's rate_limit_hit: one statement."""

    __slots__ = ()

    async def hit(
        self, scope: str, tenant_id: str, limit: int, window: timedelta, now: datetime
    ) -> timedelta | None:
        conn = await self._connect()
        wait = await conn.fetchval(
            _RATE_LIMIT_HIT, bucket_of(tenant_id), tenant_id, scope, limit, window, now
        )
        assert wait is None or isinstance(wait, timedelta)
        return wait

    async def forget(self, scope: str, tenant_id: str) -> None:
        conn = await self._connect()
        await conn.execute(_FORGET_HITS, bucket_of(tenant_id), scope)


class PgHousekeeping(Repository):
    """Deletes rows nothing needs any more, one bucket per statement."""

    __slots__ = ()

    async def prune(self, keys_before: datetime, hits_before: datetime) -> int:
        conn = await self._connect()
        removed = 0
        for bucket in range(BUCKETS):
            for statement, before in ((_PRUNE_KEYS, keys_before), (_PRUNE_HITS, hits_before)):
                status = await conn.execute(statement, bucket, before)
                removed += int(status.rsplit(" ", 1)[-1])
        return removed
