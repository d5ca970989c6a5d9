"""The dispatcher's statements on PostgreSQL: the poll, claims, takeovers, run records, leases.

A claim reads a bucket's due schedules without locks, plans them (the domain's cron and time
zones) and hands the plan to `claim_runs` (migration 0003), which locks the schedules still as
read (SKIP LOCKED: processes share a burst), records their runs (the unique guard refuses an
occurrence twice) and writes their new state: two round trips. A run's `lease_until` is also its
fencing token: a process whose claim was taken over writes nothing. Only the poll reads across
buckets.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from asyncpg import Record

from scheduler_host.adapters.db.buckets import BUCKETS, bucket_of
from scheduler_host.adapters.db.pool import Connection, DatabasePool
from scheduler_host.adapters.db.rows import (
    SCHEDULE_COLUMNS,
    columns,
    install_context_from_row,
    schedule_from_row,
    unnest_arrays,
)
from scheduler_host.adapters.db.unit_of_work import PooledSession
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.service.ports import (
    BucketWork,
    ClaimBatch,
    ClaimedRun,
    ClaimPlan,
    Planner,
    RunOutcome,
    RunTarget,
)

_OPEN_STATES = (RunState.PENDING.value, RunState.RUNNING.value)

_POLL = "SELECT bucket, next_run_time, lease_until FROM dispatch_poll($1)"

# A schedule with its install, whether its endpoint is still there and whether its last run is
# still open: what planning a claim and calling the Runner need. Every table is filtered by the
# bucket parameter itself ($1), not through a join, so that a sharded PostgreSQL sees one shard.
_TARGET_PART = f"""SELECT {columns(SCHEDULE_COLUMNS, "s")}, s.running_run_id, s.xmin AS row_version,
    i.enabled AS install_enabled, i.registry_id, i.version_id, i.content_hash,
    i.granted_capabilities,
    EXISTS (SELECT 1 FROM endpoints e
            WHERE e.bucket = $1 AND e.install_id = s.install_id
              AND e.version_id = i.version_id AND e.method = s.endpoint_method
              AND e.path = s.endpoint_path) AS endpoint_found,
    running.status AS running_status
FROM schedules s
JOIN installs i ON i.bucket = $1 AND i.id = s.install_id
LEFT JOIN schedule_runs running ON running.bucket = $1 AND running.id = s.running_run_id"""

# Literal predicates, so that the partial index ix_schedules_due applies. The row version
# (`xmin`) read is what claim_runs checks before it writes.
_CLAIM_DUE = f"""{_TARGET_PART}
WHERE s.bucket = $1 AND s.enabled AND s.next_run_time IS NOT NULL AND s.next_run_time <= $2
ORDER BY s.next_run_time LIMIT $3"""
_CLAIM_RUNS = """SELECT claimed, next_due FROM claim_runs($1::smallint, $2, $3, $4, $5, $6, $7,
    $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"""

_LOAD_TARGET = (
    f"{_TARGET_PART}\nWHERE s.bucket = $1 AND s.tenant_id = $2 AND s.install_id = $3 AND s.id = $4"
)

_INSERT_MANUAL_RUN = """INSERT INTO schedule_runs (bucket, id, tenant_id, install_id,
    schedule_id, trigger, scheduled_time, start_time, status, attempt, lease_until)
VALUES ($1, $2, $3, $4, $5, 'manual', $6, $7, 'running', 1, $8)
ON CONFLICT (bucket, schedule_id, trigger, scheduled_time) DO NOTHING RETURNING id"""

_CUT_HISTORY = "SELECT cut_run_history($1::smallint, $2, $3)"

_EXPIRED = f"""SELECT r.id AS run_id, r.trigger, r.scheduled_time, r.start_time AS run_start_time,
    r.attempt, r.takeovers, r.lease_until AS run_lease,
    {_TARGET_PART.removeprefix("SELECT ")}
JOIN schedule_runs r ON r.bucket = $1 AND r.schedule_id = s.id
WHERE s.bucket = $1 AND r.bucket = $1 AND r.status IN ('pending', 'running') AND r.lease_until < $2
ORDER BY r.lease_until LIMIT $3"""

# Taken only if the lease is still the one read: another process may have taken it meanwhile.
_TAKE_OVER = """UPDATE schedule_runs AS r SET lease_until = $2, status = 'running',
    attempt = v.attempt, takeovers = v.takeovers, start_time = v.start_time
FROM unnest($3::uuid[], $4::timestamptz[], $5::integer[], $6::integer[], $7::timestamptz[])
    AS v(id, lease, attempt, takeovers, start_time)
WHERE r.bucket = $1 AND r.id = v.id AND r.lease_until = v.lease RETURNING r.id"""

# A manual run counts as in flight for the no-overlap rule, unless another already is.
_MARK_RUNNING = """UPDATE schedules AS s SET running_run_id = $3
WHERE s.bucket = $1 AND s.id = $2 AND NOT EXISTS (
    SELECT 1 FROM schedule_runs running
    WHERE running.bucket = $1 AND running.id = s.running_run_id
      AND running.status IN ('pending', 'running'))"""

_RECORD_ATTEMPT = """UPDATE schedule_runs SET attempt = $3
WHERE bucket = $1 AND id = $2 AND lease_until = $4"""
_RELEASE = """UPDATE schedule_runs SET lease_until = $3
WHERE bucket = $1 AND id = $2 AND lease_until = $4"""
_FINISH = "SELECT * FROM finish_runs($1::smallint, $2, $3, $4, $5, $6, $7, $8, $9, $10)"


def _target(row: Record) -> RunTarget:
    return RunTarget(
        schedule=schedule_from_row(row),
        install=install_context_from_row(row, id_key="install_id", enabled_key="install_enabled"),
        endpoint_found=bool(row["endpoint_found"]),
        run_in_flight=row["running_status"] in _OPEN_STATES,
    )


def _running(
    target: RunTarget,
    trigger: RunTrigger,
    scheduled_time: datetime,
    start_time: datetime,
    run_id: uuid.UUID | None = None,
    attempt: int = 1,
) -> ScheduleRun:
    """A running run of the target's schedule; a new one unless `run_id` is given."""
    s = target.schedule
    return ScheduleRun(
        id=run_id or uuid.uuid4(),
        tenant_id=s.tenant_id,
        install_id=s.install_id,
        schedule_id=s.id,
        trigger=trigger,
        scheduled_time=scheduled_time,
        start_time=start_time,
        finish_time=None,
        status=RunState.RUNNING,
        attempt=attempt,
        error=None,
    )


class PgDispatchStore:
    def __init__(self, pool: DatabasePool, history_limit: int, connections: int = 6) -> None:
        self._pool = pool
        self._history_limit = history_limit
        # The claimers, the writer of finished runs and manual runs share this many of the
        # pool's connections, keeping the rest for API calls.
        self._connections = asyncio.Semaphore(connections)

    @asynccontextmanager
    async def _session(self, *, autocommit: bool) -> AsyncIterator[PooledSession]:
        async with self._connections, PooledSession(self._pool, autocommit=autocommit) as session:
            yield session

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A connection of the dispatcher's share, each statement its own transaction."""
        async with self._session(autocommit=True) as session:
            yield await session.connection()

    async def poll(self) -> list[BucketWork]:
        async with self._connection() as conn:
            rows = await conn.fetch(_POLL, BUCKETS)
        return [BucketWork(r["bucket"], r["next_run_time"], r["lease_until"]) for r in rows]

    async def claim_due(
        self, bucket: int, now: datetime, limit: int, lease_until: datetime, plan: Planner
    ) -> ClaimBatch:
        async with self._connection() as conn:
            rows = await conn.fetch(_CLAIM_DUE, bucket, now, limit)
            claim = _Claim(now, lease_until)
            for row in rows:
                claim.add(row, plan)
            result = await conn.fetchrow(
                _CLAIM_RUNS, bucket, now, lease_until, self._history_limit, *claim.arrays()
            )
        assert result is not None  # the function returns one row
        return ClaimBatch(len(rows), claim.started(set(result["claimed"])), result["next_due"])

    async def take_over_expired(
        self,
        bucket: int,
        now: datetime,
        limit: int,
        lease_until: datetime,
        exclude: Collection[uuid.UUID],
    ) -> list[ClaimedRun]:
        async with self._connection() as conn:
            # `exclude` is left out in Python: in the statement it would make a new text (and
            # a new prepared statement) for each count.
            rows = [
                row
                for row in await conn.fetch(_EXPIRED, bucket, now, limit + len(exclude))
                if row["run_id"] not in exclude
            ][:limit]
            if not rows:
                return []
            claims, taking = [], []
            for row in rows:
                target = _target(row)
                run = _running(
                    target,
                    RunTrigger(row["trigger"]),
                    row["scheduled_time"],
                    row["run_start_time"] or now,
                    row["run_id"],
                    # At least one more call, with the same idempotency key, whatever the count.
                    row["attempt"] + 1,
                )
                takeovers = row["takeovers"] + 1
                claims.append(ClaimedRun(run, target, lease_until, takeovers))
                taking.append((run.id, row["run_lease"], run.attempt, takeovers, run.start_time))
            arrays = unnest_arrays(taking, 5)
            taken = {r["id"] for r in await conn.fetch(_TAKE_OVER, bucket, lease_until, *arrays)}
        return [c for c in claims if c.run.id in taken]

    async def load_target(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID
    ) -> RunTarget | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                _LOAD_TARGET, bucket_of(tenant_id), tenant_id, install_id, schedule_id
            )
        return _target(row) if row is not None else None

    async def start_manual_run(
        self, target: RunTarget, scheduled_time: datetime, now: datetime, lease_until: datetime
    ) -> ClaimedRun | None:
        run = _running(target, RunTrigger.MANUAL, scheduled_time, now)
        bucket = bucket_of(run.tenant_id)
        async with self._session(autocommit=False) as session:
            conn = await session.connection()
            key = (run.id, run.tenant_id, run.install_id, run.schedule_id, scheduled_time)
            if not await conn.fetch(_INSERT_MANUAL_RUN, bucket, *key, now, lease_until):
                return None
            await conn.execute(_MARK_RUNNING, bucket, target.schedule.id, run.id)
            await conn.execute(_CUT_HISTORY, bucket, [target.schedule.id], self._history_limit)
            await session.commit()
        return ClaimedRun(run, target, lease_until)

    async def record_attempt(self, claim: ClaimedRun, attempt: int) -> bool:
        run = claim.run
        async with self._connection() as conn:
            status = await conn.execute(
                _RECORD_ATTEMPT, bucket_of(run.tenant_id), run.id, attempt, claim.lease_until
            )
        return status != "UPDATE 0"

    async def finish_runs(self, outcomes: Sequence[RunOutcome]) -> list[ScheduleRun | None]:
        by_bucket: dict[int, list[RunOutcome]] = defaultdict(list)
        for o in outcomes:
            by_bucket[bucket_of(o.claim.run.tenant_id)].append(o)
        written: set[uuid.UUID] = set()
        # One connection for the whole batch, one call per bucket: the claims keep the rest of
        # the dispatcher's connections.
        async with self._connection() as conn:
            for bucket, group in by_bucket.items():
                rows = await conn.fetch(
                    _FINISH,
                    bucket,
                    sorted({o.claim.run.schedule_id for o in group}),
                    [o.claim.run.id for o in group],
                    [o.claim.lease_until for o in group],
                    [o.status.value for o in group],
                    [o.finish_time for o in group],
                    [o.error for o in group],
                    [o.attempt for o in group],
                    [o.claim.run.start_time or o.finish_time for o in group],
                    [o.disable_error for o in group],
                )
                written.update(r[0] for r in rows)
        return [o.finished_run() if o.claim.run.id in written else None for o in outcomes]

    async def release(self, claim: ClaimedRun, now: datetime) -> None:
        run = claim.run
        async with self._connection() as conn:
            await conn.execute(_RELEASE, bucket_of(run.tenant_id), run.id, now, claim.lease_until)


class _Claim:
    """A claim's plan for claim_runs: each due schedule's runs (skipped occurrences and the one
    to fire) and new state, computed from the row as read."""

    def __init__(self, now: datetime, lease_until: datetime) -> None:
        self._now = now
        self._lease_until = lease_until
        self._states: list[tuple[Any, ...]] = []
        self._runs: list[tuple[uuid.UUID, uuid.UUID, datetime, str | None]] = []
        self._firing: list[tuple[ScheduleRun, RunTarget]] = []

    def add(self, row: Record, plan: Planner) -> None:
        target = _target(row)
        decision = plan(target)
        schedule_id = target.schedule.id
        self._runs.extend(
            (uuid.uuid4(), schedule_id, skip.scheduled_time, skip.reason)
            for skip in decision.skipped
        )
        fired = None
        if decision.fire_at is not None:
            fired = _running(target, RunTrigger.SCHEDULE, decision.fire_at, self._now)
            self._runs.append((fired.id, schedule_id, decision.fire_at, None))
            self._firing.append((fired, target))
        self._states.append(_new_state(row, target, decision, fired, self._now))

    def arrays(self) -> list[list[Any]]:
        """The parameters $5.. of _CLAIM_RUNS: the states' columns, then the runs'."""
        return unnest_arrays(self._states, 10) + unnest_arrays(self._runs, 4)

    def started(self, claimed: set[uuid.UUID]) -> list[ClaimedRun]:
        return [
            ClaimedRun(run, target, self._lease_until)
            for run, target in self._firing
            if run.id in claimed
        ]


def _new_state(
    row: Record, target: RunTarget, decision: ClaimPlan, fired: ScheduleRun | None, now: datetime
) -> tuple[Any, ...]:
    """A claimed schedule's new state, in the order of claim_runs' arrays (the run to fire is
    its running run only if claim_runs records it)."""
    s = target.schedule
    next_run_time = None if decision.park else decision.next_run_time
    enabled, revision, update_time = s.enabled, s.revision, s.update_time
    last_run_time, last_status, last_error = s.last_run_time, s.last_run_status, s.last_error
    if decision.disable_error is not None or decision.complete:
        # Disabled by the server: a change of the definition, so the etag changes.
        enabled, next_run_time, revision, update_time = False, None, s.revision + 1, now
        if decision.disable_error is not None:
            last_error = decision.disable_error
    if decision.skipped:
        last_run_time, last_status = now, RunState.SKIPPED.value
        last_error = decision.skipped[-1].reason
    return (
        s.id,
        row["row_version"],
        next_run_time,
        enabled,
        last_run_time,
        last_status,
        last_error,
        fired.id if fired is not None else None,
        revision,
        update_time,
    )
