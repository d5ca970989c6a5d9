"""The dispatcher's statements on PostgreSQL: the poll, claims, takeovers, run records, leases.

Every claim, takeover and finish stays inside one bucket: a claim is one transaction that locks
the bucket's due schedules (`FOR UPDATE OF s SKIP LOCKED`, so processes share a burst), writes
their run records (the unique (schedule, trigger, scheduled time) guard refuses an occurrence
recorded twice) and their new state; a finish is one call of `finish_runs` (migration 0003). A
run's `lease_until` is also its fencing token: every write after the claim names the lease it
holds, so a process whose claim was taken over writes nothing. Only the poll reads across
buckets, without locks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from asyncpg import Record

from scheduler_host.adapters.db.buckets import BUCKETS, bucket_of
from scheduler_host.adapters.db.pool import DatabasePool
from scheduler_host.adapters.db.rows import (
    SCHEDULE_COLUMNS,
    columns,
    install_context_from_row,
    schedule_from_row,
)
from scheduler_host.adapters.db.unit_of_work import PooledSession
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.service.ports import (
    BucketWork,
    ClaimBatch,
    ClaimedRun,
    ClaimPlan,
    RunOutcome,
    RunTarget,
)

_OPEN_STATES = (RunState.PENDING.value, RunState.RUNNING.value)

_POLL = "SELECT bucket, next_run_time, lease_until FROM dispatch_poll($1)"

# A schedule with its install, whether its endpoint is still there and whether its last run is
# still open: what planning a claim and calling the Runner need.
_TARGET_PART = f"""SELECT {columns(SCHEDULE_COLUMNS, "s")}, s.running_run_id,
    i.enabled AS install_enabled, i.registry_id, i.version_id, i.content_hash,
    i.granted_capabilities,
    EXISTS (SELECT 1 FROM endpoints e
            WHERE e.bucket = s.bucket AND e.install_id = s.install_id
              AND e.version_id = i.version_id AND e.method = s.endpoint_method
              AND e.path = s.endpoint_path) AS endpoint_found,
    running.status AS running_status
FROM schedules s
JOIN installs i ON i.bucket = s.bucket AND i.id = s.install_id
LEFT JOIN schedule_runs running ON running.bucket = s.bucket AND running.id = s.running_run_id"""

# Literal predicates, so that the partial index ix_schedules_due applies.
_CLAIM_DUE = f"""{_TARGET_PART}
WHERE s.bucket = $1 AND s.enabled AND s.next_run_time IS NOT NULL AND s.next_run_time <= $2
ORDER BY s.next_run_time LIMIT $3
FOR UPDATE OF s SKIP LOCKED"""

_LOAD_TARGET = (
    f"{_TARGET_PART}\nWHERE s.bucket = $1 AND s.tenant_id = $2 AND s.install_id = $3 AND s.id = $4"
)

_INSERT_RUNS = """INSERT INTO schedule_runs (bucket, id, tenant_id, install_id, schedule_id,
    trigger, scheduled_time, start_time, finish_time, status, attempt, error, lease_until)
SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::uuid[], $5::uuid[], $6::text[],
    $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::integer[],
    $12::text[], $13::timestamptz[])
ON CONFLICT (bucket, schedule_id, trigger, scheduled_time) DO NOTHING RETURNING id"""

# A claimed schedule's whole new state, computed from the row read under its lock.
_SET_STATES = """UPDATE schedules AS s SET next_run_time = v.next_run_time, enabled = v.enabled,
    last_run_time = v.last_run_time, last_run_status = v.last_run_status,
    last_error = v.last_error, running_run_id = v.running_run_id, revision = v.revision,
    update_time = v.update_time
FROM unnest($2::uuid[], $3::timestamptz[], $4::boolean[], $5::timestamptz[], $6::text[],
    $7::text[], $8::uuid[], $9::integer[], $10::timestamptz[])
    AS v(id, next_run_time, enabled, last_run_time, last_run_status, last_error,
         running_run_id, revision, update_time)
WHERE s.bucket = $1 AND s.id = v.id"""

# Keep the newest runs of each schedule (the history limit); open runs are never cut.
_CUT_HISTORY = """DELETE FROM schedule_runs WHERE bucket = $1 AND id IN (
    SELECT id FROM (
        SELECT id, status, row_number() OVER (
            PARTITION BY schedule_id ORDER BY scheduled_time DESC, id DESC) AS newest
        FROM schedule_runs WHERE bucket = $1 AND schedule_id = ANY($2::uuid[])
    ) AS ranked
    WHERE newest > $3 AND status NOT IN ('pending', 'running'))"""

_NEXT_DUE = """SELECT min(next_run_time) FROM schedules
WHERE bucket = $1 AND enabled AND next_run_time IS NOT NULL"""

_EXPIRED = f"""SELECT r.id AS run_id, r.trigger, r.scheduled_time, r.start_time AS run_start_time,
    r.attempt, r.takeovers, r.lease_until AS run_lease,
    {_TARGET_PART.removeprefix("SELECT ")}
JOIN schedule_runs r ON r.bucket = s.bucket AND r.schedule_id = s.id
WHERE r.bucket = $1 AND r.status IN ('pending', 'running') AND r.lease_until < $2
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
    WHERE running.bucket = s.bucket AND running.id = s.running_run_id
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


def _run(
    target: RunTarget,
    run_id: uuid.UUID,
    trigger: RunTrigger,
    scheduled_time: datetime,
    status: RunState,
    *,
    start_time: datetime | None = None,
    finish_time: datetime | None = None,
    attempt: int = 0,
    error: str | None = None,
) -> ScheduleRun:
    return ScheduleRun(
        id=run_id,
        tenant_id=target.schedule.tenant_id,
        install_id=target.schedule.install_id,
        schedule_id=target.schedule.id,
        trigger=trigger,
        scheduled_time=scheduled_time,
        start_time=start_time,
        finish_time=finish_time,
        status=status,
        attempt=attempt,
        error=error,
    )


def _record_arrays(records: Sequence[tuple[ScheduleRun, datetime | None]]) -> list[list[Any]]:
    """The parameters $2.. of _INSERT_RUNS."""
    return [
        [r.id for r, _ in records],
        [r.tenant_id for r, _ in records],
        [r.install_id for r, _ in records],
        [r.schedule_id for r, _ in records],
        [r.trigger.value for r, _ in records],
        [r.scheduled_time for r, _ in records],
        [r.start_time for r, _ in records],
        [r.finish_time for r, _ in records],
        [r.status.value for r, _ in records],
        [r.attempt for r, _ in records],
        [r.error for r, _ in records],
        [lease for _, lease in records],
    ]


def _bucket_of_run(run: ScheduleRun) -> int:
    return bucket_of(run.tenant_id)


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

    async def poll(self) -> list[BucketWork]:
        async with self._session(autocommit=True) as session:
            rows = await (await session.connection()).fetch(_POLL, BUCKETS)
        return [BucketWork(r["bucket"], r["next_run_time"], r["lease_until"]) for r in rows]

    async def claim_due(
        self,
        bucket: int,
        now: datetime,
        limit: int,
        lease_until: datetime,
        plan: Callable[[RunTarget], ClaimPlan],
    ) -> ClaimBatch:
        async with self._session(autocommit=False) as session:
            conn = await session.connection()
            rows = await conn.fetch(_CLAIM_DUE, bucket, now, limit)
            targets = [_target(row) for row in rows]
            plans = [plan(target) for target in targets]
            records: list[tuple[ScheduleRun, datetime | None]] = []
            firing: list[ScheduleRun | None] = []
            for target, decision in zip(targets, plans, strict=True):
                records.extend(
                    (
                        _run(
                            target,
                            uuid.uuid4(),
                            RunTrigger.SCHEDULE,
                            skip.scheduled_time,
                            RunState.SKIPPED,
                            finish_time=now,
                            error=skip.reason,
                        ),
                        None,
                    )
                    for skip in decision.skipped
                )
                run = None
                if decision.fire_at is not None:
                    run = _run(
                        target,
                        uuid.uuid4(),
                        RunTrigger.SCHEDULE,
                        decision.fire_at,
                        RunState.RUNNING,
                        start_time=now,
                        attempt=1,
                    )
                    records.append((run, lease_until))
                firing.append(run)
            inserted: set[uuid.UUID] = set()
            if records:
                inserted = {
                    r["id"]
                    for r in await conn.fetch(_INSERT_RUNS, bucket, *_record_arrays(records))
                }
            states: list[tuple[Any, ...]] = []
            touched: list[uuid.UUID] = []
            claims: list[ClaimedRun] = []
            for row, target, decision, run in zip(rows, targets, plans, firing, strict=True):
                fired = run is not None and run.id in inserted
                states.append(_new_state(row, target, decision, run if fired else None, now))
                if fired:
                    assert run is not None
                    claims.append(ClaimedRun(run, target, lease_until))
                if decision.skipped or fired:
                    touched.append(target.schedule.id)
            if states:
                await conn.execute(
                    _SET_STATES, bucket, *(list(c) for c in zip(*states, strict=True))
                )
            if touched:
                await conn.execute(_CUT_HISTORY, bucket, touched, self._history_limit)
            next_due = await conn.fetchval(_NEXT_DUE, bucket)
            await session.commit()
        return ClaimBatch(len(rows), claims, next_due)

    async def take_over_expired(
        self,
        bucket: int,
        now: datetime,
        limit: int,
        lease_until: datetime,
        exclude: Collection[uuid.UUID],
    ) -> list[ClaimedRun]:
        async with self._session(autocommit=True) as session:
            conn = await session.connection()
            # `exclude` is left out in Python: in the statement it would make a new text (and
            # a new prepared statement) for each count.
            rows = [
                row
                for row in await conn.fetch(_EXPIRED, bucket, now, limit + len(exclude))
                if row["run_id"] not in exclude
            ][:limit]
            if not rows:
                return []
            claims = []
            for row in rows:
                target = _target(row)
                run = _run(
                    target,
                    row["run_id"],
                    RunTrigger(row["trigger"]),
                    row["scheduled_time"],
                    RunState.RUNNING,
                    start_time=row["run_start_time"] or now,
                    # At least one more call, with the same idempotency key, whatever the count.
                    attempt=row["attempt"] + 1,
                )
                claims.append(ClaimedRun(run, target, lease_until, row["takeovers"] + 1))
            taken = {
                r["id"]
                for r in await conn.fetch(
                    _TAKE_OVER,
                    bucket,
                    lease_until,
                    [c.run.id for c in claims],
                    [row["run_lease"] for row in rows],
                    [c.run.attempt for c in claims],
                    [c.takeovers for c in claims],
                    [c.run.start_time for c in claims],
                )
            }
        return [c for c in claims if c.run.id in taken]

    async def load_target(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID
    ) -> RunTarget | None:
        async with self._session(autocommit=True) as session:
            row = await (await session.connection()).fetchrow(
                _LOAD_TARGET, bucket_of(tenant_id), tenant_id, install_id, schedule_id
            )
        return _target(row) if row is not None else None

    async def start_manual_run(
        self, target: RunTarget, scheduled_time: datetime, now: datetime, lease_until: datetime
    ) -> ClaimedRun | None:
        run = _run(
            target,
            uuid.uuid4(),
            RunTrigger.MANUAL,
            scheduled_time,
            RunState.RUNNING,
            start_time=now,
            attempt=1,
        )
        bucket = _bucket_of_run(run)
        async with self._session(autocommit=False) as session:
            conn = await session.connection()
            if not await conn.fetch(_INSERT_RUNS, bucket, *_record_arrays([(run, lease_until)])):
                return None
            await conn.execute(_MARK_RUNNING, bucket, target.schedule.id, run.id)
            await conn.execute(_CUT_HISTORY, bucket, [target.schedule.id], self._history_limit)
            await session.commit()
        return ClaimedRun(run, target, lease_until)

    async def record_attempt(self, claim: ClaimedRun, attempt: int) -> bool:
        run = claim.run
        async with self._session(autocommit=True) as session:
            status = await (await session.connection()).execute(
                _RECORD_ATTEMPT, _bucket_of_run(run), run.id, attempt, claim.lease_until
            )
        return status != "UPDATE 0"

    async def finish_runs(self, outcomes: Sequence[RunOutcome]) -> list[ScheduleRun | None]:
        by_bucket: dict[int, list[RunOutcome]] = defaultdict(list)
        for o in outcomes:
            by_bucket[_bucket_of_run(o.claim.run)].append(o)
        written: set[uuid.UUID] = set()
        async with self._session(autocommit=True) as session:
            conn = await session.connection()
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
        return [
            replace(
                o.claim.run,
                finish_time=o.finish_time,
                status=o.status,
                attempt=o.attempt,
                error=o.error,
            )
            if o.claim.run.id in written
            else None
            for o in outcomes
        ]

    async def release(self, claim: ClaimedRun, now: datetime) -> None:
        run = claim.run
        async with self._session(autocommit=True) as session:
            await (await session.connection()).execute(
                _RELEASE, _bucket_of_run(run), run.id, now, claim.lease_until
            )


def _new_state(
    row: Record,
    target: RunTarget,
    decision: ClaimPlan,
    fired: ScheduleRun | None,
    now: datetime,
) -> tuple[Any, ...]:
    """A claimed schedule's new state, in the order of _SET_STATES' arrays."""
    s = target.schedule
    next_run_time = None if decision.park else decision.next_run_time
    enabled, last_run_time, last_status, last_error = (
        s.enabled,
        s.last_run_time,
        s.last_run_status,
        s.last_error,
    )
    revision, update_time = s.revision, s.update_time
    if decision.disable_error is not None or decision.complete:
        # Disabled by the server: a change of the definition, so the etag changes.
        enabled, next_run_time, revision, update_time = False, None, s.revision + 1, now
        if decision.disable_error is not None:
            last_error = decision.disable_error
    if decision.skipped:
        last_run_time, last_status = now, RunState.SKIPPED.value
        last_error = decision.skipped[-1].reason
    running = fired.id if fired is not None else row["running_run_id"]
    return (
        s.id,
        next_run_time,
        enabled,
        last_run_time,
        last_status,
        last_error,
        running,
        revision,
        update_time,
    )
