"""SQL of the dispatcher: claims of due schedules (FOR UPDATE SKIP LOCKED), run records, leases.

A run's `lease_until` is also its fencing token: every write after the claim names the lease it
holds, so a process whose claim was taken over writes nothing.

Claims and finishes are set-based: a batch of schedules costs a few statements in one
transaction, not a few per run (executemany and multi-row INSERT ... RETURNING, one round trip
each on asyncpg).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from scheduler_host.adapters.db.engine import is_connectivity_error
from scheduler_host.adapters.db.rows import install_context_from_row, schedule_from_row
from scheduler_host.adapters.db.tables import (
    UtcDateTime,
    endpoints,
    installs,
    schedule_runs,
    schedules,
)
from scheduler_host.domain.errors import DatabaseUnavailable
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.service.ports import (
    ClaimBatch,
    ClaimedRun,
    ClaimPlan,
    RunOutcome,
    RunTarget,
)

s, i, r = schedules.c, installs.c, schedule_runs.c
# Literal predicates, so that PostgreSQL matches the partial indexes ix_schedules_due and
# ix_schedule_runs_open_lease even with prepared statements.
_DUE = sa.text("schedules.enabled AND schedules.next_run_time IS NOT NULL")
_OPEN_RUN = sa.text("schedule_runs.status IN ('pending', 'running')")
_OPEN_STATES = (RunState.PENDING.value, RunState.RUNNING.value)

_running = schedule_runs.alias("running")
_TARGET_COLUMNS = (
    *(c for c in schedules.c if c.name != "running_run_id"),
    i.enabled.label("install_enabled"),
    i.registry_id,
    i.version_id,
    i.content_hash,
    i.granted_capabilities,
    sa.exists()
    .where(
        endpoints.c.tenant_id == s.tenant_id,
        endpoints.c.install_id == s.install_id,
        endpoints.c.version_id == i.version_id,
        endpoints.c.method == s.endpoint_method,
        endpoints.c.path == s.endpoint_path,
    )
    .label("endpoint_found"),
    _running.c.status.label("running_status"),
)
_TARGET_FROM = schedules.join(installs, i.id == s.install_id).outerjoin(
    _running, _running.c.id == s.running_run_id
)


def _record(run: ScheduleRun, lease_until: datetime | None) -> dict[str, Any]:
    return {
        "id": run.id,
        "tenant_id": run.tenant_id,
        "install_id": run.install_id,
        "schedule_id": run.schedule_id,
        "trigger": run.trigger.value,
        "scheduled_time": run.scheduled_time,
        "start_time": run.start_time,
        "finish_time": run.finish_time,
        "status": run.status.value,
        "attempt": run.attempt,
        "error": run.error,
        "lease_until": lease_until,
    }


def _param(name: str, type_: Any) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


# A claimed schedule's whole new state; one parameter set per schedule of a batch (executemany).
_SET_SCHEDULE_STATE = (
    schedules.update()
    .where(s.tenant_id == sa.bindparam("b_tenant_id"), s.id == sa.bindparam("b_id"))
    .values(
        next_run_time=_param("b_next_run_time", UtcDateTime()),
        enabled=_param("b_enabled", sa.Boolean()),
        last_run_time=_param("b_last_run_time", UtcDateTime()),
        last_run_status=_param("b_last_run_status", sa.String()),
        last_error=_param("b_last_error", sa.Text()),
        running_run_id=_param("b_running_run_id", sa.Uuid()),
        revision=_param("b_revision", sa.Integer()),
        update_time=_param("b_update_time", UtcDateTime()),
    )
)
# A finished run, fenced by the lease it was claimed with.
_FINISH_RUN = (
    schedule_runs.update()
    .where(r.id == sa.bindparam("b_id"), r.lease_until == _param("b_lease", UtcDateTime()))
    .values(
        status=sa.bindparam("b_status"),
        finish_time=_param("b_finish_time", UtcDateTime()),
        error=sa.bindparam("b_error"),
        attempt=sa.bindparam("b_attempt"),
        lease_until=None,
    )
)
_TAKE_OVER_RUN = (
    schedule_runs.update()
    .where(r.id == sa.bindparam("b_id"))
    .values(
        lease_until=_param("b_lease", UtcDateTime()),
        attempt=sa.bindparam("b_attempt"),
        status=RunState.RUNNING.value,
        start_time=_param("b_start_time", UtcDateTime()),
    )
)
# Its schedule's last run fields; the schedule stops naming it as the run in flight.
_LAST_RUN_VALUES: dict[str, Any] = {
    "last_run_time": _param("b_last_run_time", UtcDateTime()),
    "last_run_status": sa.bindparam("b_status"),
    "last_error": sa.bindparam("b_error"),
    "running_run_id": sa.case(
        (s.running_run_id == _param("b_run_id", sa.Uuid()), sa.null()),
        else_=s.running_run_id,
    ),
}
_RECORD_LAST_RUN = (
    schedules.update()
    .where(s.tenant_id == sa.bindparam("b_tenant_id"), s.id == sa.bindparam("b_schedule_id"))
    .values(**_LAST_RUN_VALUES)
)
_RECORD_LAST_RUN_AND_DISABLE = (
    schedules.update()
    .where(s.tenant_id == sa.bindparam("b_tenant_id"), s.id == sa.bindparam("b_schedule_id"))
    .values(
        **_LAST_RUN_VALUES,
        enabled=False,
        next_run_time=None,
        revision=s.revision + 1,
        update_time=_param("b_finish_time", UtcDateTime()),
    )
)


# PostgreSQL: the same writes as one statement over arrays (UNNEST), sent through the driver
# (no per-row parameter processing); the text is the same for every batch size. Each names its
# parameters in the order of the column list beside it.
_PG_INSERT_RUNS = (
    "INSERT INTO schedule_runs (id, tenant_id, install_id, schedule_id, trigger, scheduled_time, "
    "start_time, finish_time, status, attempt, error, lease_until) "
    "SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], "
    "$6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::integer[], "
    "$11::text[], $12::timestamptz[]) "
    "ON CONFLICT (schedule_id, trigger, scheduled_time) DO NOTHING RETURNING id"
)
_PG_INSERT_RUNS_COLUMNS = (
    "id",
    "tenant_id",
    "install_id",
    "schedule_id",
    "trigger",
    "scheduled_time",
    "start_time",
    "finish_time",
    "status",
    "attempt",
    "error",
    "lease_until",
)
_PG_SET_SCHEDULE_STATE = (
    "UPDATE schedules AS s SET next_run_time = v.next_run_time, enabled = v.enabled, "
    "last_run_time = v.last_run_time, last_run_status = v.last_run_status, "
    "last_error = v.last_error, running_run_id = v.running_run_id, revision = v.revision, "
    "update_time = v.update_time "
    "FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::boolean[], $5::timestamptz[], "
    "$6::text[], $7::text[], $8::uuid[], $9::integer[], $10::timestamptz[]) "
    "AS v(tenant_id, id, next_run_time, enabled, last_run_time, last_run_status, last_error, "
    "running_run_id, revision, update_time) "
    "WHERE s.tenant_id = v.tenant_id AND s.id = v.id"
)
_PG_SET_SCHEDULE_STATE_COLUMNS = (
    "b_tenant_id",
    "b_id",
    "b_next_run_time",
    "b_enabled",
    "b_last_run_time",
    "b_last_run_status",
    "b_last_error",
    "b_running_run_id",
    "b_revision",
    "b_update_time",
)
_PG_FINISH_RUNS = (
    "UPDATE schedule_runs AS r SET status = v.status, finish_time = v.finish_time, "
    "error = v.error, attempt = v.attempt, lease_until = NULL "
    "FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::timestamptz[], $5::text[], "
    "$6::integer[]) AS v(id, lease, status, finish_time, error, attempt) "
    "WHERE r.id = v.id AND r.lease_until = v.lease RETURNING r.id"
)
_PG_LOCK_SCHEDULES = (
    "SELECT id FROM schedules WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE"
)
_PG_FINISH_RUNS_COLUMNS = ("b_id", "b_lease", "b_status", "b_finish_time", "b_error", "b_attempt")
# Only for a batch naming each schedule once: an UPDATE ... FROM applies one source row per row.
_PG_RECORD_LAST_RUNS = (
    "UPDATE schedules AS s SET last_run_time = v.last_run_time, last_run_status = v.status, "
    "last_error = v.error, running_run_id = CASE WHEN s.running_run_id = v.run_id THEN NULL "
    "ELSE s.running_run_id END "
    "FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::text[], $6::text[]) "
    "AS v(tenant_id, schedule_id, run_id, last_run_time, status, error) "
    "WHERE s.tenant_id = v.tenant_id AND s.id = v.schedule_id"
)
_PG_RECORD_LAST_RUNS_COLUMNS = (
    "b_tenant_id",
    "b_schedule_id",
    "b_run_id",
    "b_last_run_time",
    "b_status",
    "b_error",
)


def _arrays(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> tuple[list[Any], ...]:
    return tuple([row[c] for row in rows] for c in columns)


def _target(row: sa.Row[Any]) -> RunTarget:
    m = row._mapping
    schedule = schedule_from_row(m)
    install = install_context_from_row(m, enabled_key="install_enabled")
    return RunTarget(
        schedule=schedule,
        install=install,
        endpoint_found=bool(m["endpoint_found"]),
        run_in_flight=m["running_status"] in _OPEN_STATES,
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


class SqlDispatchStore:
    def __init__(self, engine: AsyncEngine, history_limit: int, connections: int = 6) -> None:
        self._engine = engine
        self._history_limit = history_limit
        self._postgres = engine.dialect.name == "postgresql"
        # The claimers, the writer of finished runs and manual runs queue here, keeping the rest
        # of the engine's pool for the health watch and API calls.
        self._connections = asyncio.Semaphore(connections)

    def _among(self, column: sa.ColumnElement[uuid.UUID], name: str) -> sa.ColumnElement[bool]:
        """`column` is one of the ids in parameter `name`. On PostgreSQL one array parameter:
        the statement's text, and so its prepared statement, is the same for every count."""
        if self._postgres:
            return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(sa.Uuid())))
        return column.in_(sa.bindparam(name, expanding=True))

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._connections, self._engine.begin() as conn:
                yield conn
        except Exception as exc:
            if is_connectivity_error(exc):
                raise DatabaseUnavailable() from exc
            raise

    async def claim_due(
        self,
        now: datetime,
        limit: int,
        lease_until: datetime,
        plan: Callable[[RunTarget], ClaimPlan],
    ) -> ClaimBatch:
        query = (
            sa.select(*_TARGET_COLUMNS, s.running_run_id)
            .select_from(_TARGET_FROM)
            .where(_DUE, s.next_run_time <= now)
            .order_by(s.next_run_time)
            .limit(limit)
            # SQLite ignores this: it runs in one process, where the transaction is enough.
            .with_for_update(of=schedules, skip_locked=True)
        )
        async with self._transaction() as conn:
            rows: Sequence[sa.Row[Any]] = (await conn.execute(query)).all()  # type: ignore[assignment]
            targets = [_target(row) for row in rows]
            plans = [plan(target) for target in targets]
            # Every run record of the batch in one INSERT; the unique (schedule, trigger,
            # scheduled time) guard refuses an occurrence already recorded, by any process.
            records: list[dict[str, Any]] = []
            firing: list[ScheduleRun | None] = []
            for target, decision in zip(targets, plans, strict=True):
                for skip in decision.skipped:
                    skipped = _run(
                        target,
                        uuid.uuid4(),
                        RunTrigger.SCHEDULE,
                        skip.scheduled_time,
                        RunState.SKIPPED,
                        finish_time=now,
                        error=skip.reason,
                    )
                    records.append(_record(skipped, None))
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
                    records.append(_record(run, lease_until))
                firing.append(run)
            inserted = await self._insert_many(conn, records)
            # Each locked row's new state, computed from the row read under its lock, written
            # by one statement for the batch.
            updates: list[dict[str, Any]] = []
            touched: list[uuid.UUID] = []
            claims: list[ClaimedRun] = []
            for row, target, decision, run in zip(rows, targets, plans, firing, strict=True):
                schedule = target.schedule
                state = {
                    "b_tenant_id": schedule.tenant_id,
                    "b_id": schedule.id,
                    "b_next_run_time": None if decision.park else decision.next_run_time,
                    "b_enabled": schedule.enabled,
                    "b_last_run_time": schedule.last_run_time,
                    "b_last_run_status": schedule.last_run_status,
                    "b_last_error": schedule.last_error,
                    "b_running_run_id": row._mapping["running_run_id"],
                    "b_revision": schedule.revision,
                    "b_update_time": schedule.update_time,
                }
                if decision.disable_error is not None:
                    state.update(
                        b_enabled=False,
                        b_next_run_time=None,
                        b_last_error=decision.disable_error,
                        b_revision=schedule.revision + 1,
                        b_update_time=now,
                    )
                if decision.skipped:
                    state.update(
                        b_last_run_time=now,
                        b_last_run_status=RunState.SKIPPED.value,
                        b_last_error=decision.skipped[-1].reason,
                    )
                if run is not None and run.id in inserted:
                    state["b_running_run_id"] = run.id
                    claims.append(ClaimedRun(run, target, lease_until))
                if decision.skipped or (run is not None and run.id in inserted):
                    touched.append(schedule.id)
                updates.append(state)
            if updates and self._postgres:
                await conn.exec_driver_sql(
                    _PG_SET_SCHEDULE_STATE, _arrays(updates, _PG_SET_SCHEDULE_STATE_COLUMNS)
                )
            elif updates:
                await conn.execute(_SET_SCHEDULE_STATE, updates)
            await self._prune(conn, touched)
            next_due = None
            if len(rows) < limit:
                soonest = sa.select(sa.func.min(s.next_run_time)).where(_DUE, s.next_run_time > now)
                next_due = (await conn.execute(soonest)).scalar()
        return ClaimBatch(len(rows), claims, next_due)

    async def _insert_many(
        self, conn: AsyncConnection, records: list[dict[str, Any]]
    ) -> set[uuid.UUID]:
        """Insert run records, skipping those the unique guard refuses; the ids inserted."""
        if not records:
            return set()
        if self._postgres:
            result = await conn.exec_driver_sql(
                _PG_INSERT_RUNS, _arrays(records, _PG_INSERT_RUNS_COLUMNS)
            )
            return {row[0] for row in result}
        statement = (
            sqlite.insert(schedule_runs)
            .on_conflict_do_nothing(index_elements=["schedule_id", "trigger", "scheduled_time"])
            .returning(r.id)
        )
        if len(records) == 1:
            result = await conn.execute(statement.values(records[0]))
        else:
            result = await conn.execute(statement, records)
        return {row[0] for row in result}

    async def _prune(self, conn: AsyncConnection, schedule_ids: list[uuid.UUID]) -> None:
        """Keep the newest runs of each schedule (the history limit); open runs are never cut.

        One statement for all the schedules a batch touched."""
        if not schedule_ids:
            return
        ranked = (
            sa.select(
                r.id,
                r.status,
                sa.func.row_number()
                .over(partition_by=r.schedule_id, order_by=(r.scheduled_time.desc(), r.id.desc()))
                .label("newest"),
            )
            .where(self._among(r.schedule_id, "schedule_ids"))
            .subquery()
        )
        beyond = sa.select(ranked.c.id).where(
            ranked.c.newest > self._history_limit, ranked.c.status.not_in(_OPEN_STATES)
        )
        await conn.execute(
            schedule_runs.delete().where(r.id.in_(beyond)), {"schedule_ids": schedule_ids}
        )

    async def take_over_expired(
        self, now: datetime, limit: int, lease_until: datetime, exclude: Collection[uuid.UUID]
    ) -> list[ClaimedRun]:
        # `exclude` is left out in Python: a list of every run in flight in the statement would
        # make a new statement text (and a new prepared statement) for each count.
        query = (
            sa.select(
                r.id.label("run_id"),
                r.trigger,
                r.scheduled_time,
                r.start_time,
                r.attempt,
                *_TARGET_COLUMNS,
            )
            .select_from(schedule_runs.join(_TARGET_FROM, s.id == r.schedule_id))
            .where(_OPEN_RUN, r.lease_until < now)
            .order_by(r.lease_until)
            .limit(limit + len(exclude))
            .with_for_update(of=schedule_runs, skip_locked=True)
        )
        excluded = set(exclude)
        claims: list[ClaimedRun] = []
        async with self._transaction() as conn:
            rows = [
                row
                for row in (await conn.execute(query)).all()
                if row._mapping["run_id"] not in excluded
            ][:limit]
            if not rows:
                return claims
            for row in rows:
                m = row._mapping
                target = _target(row)
                run = _run(
                    target,
                    m["run_id"],
                    RunTrigger(m["trigger"]),
                    m["scheduled_time"],
                    RunState.RUNNING,
                    start_time=m["start_time"] or now,
                    # At least one more call, with the same idempotency key, whatever the count.
                    attempt=m["attempt"] + 1,
                )
                claims.append(ClaimedRun(run, target, lease_until))
            await conn.execute(
                _TAKE_OVER_RUN,
                [
                    {
                        "b_id": c.run.id,
                        "b_lease": lease_until,
                        "b_attempt": c.run.attempt,
                        "b_start_time": c.run.start_time,
                    }
                    for c in claims
                ],
            )
        return claims

    async def load_target(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID
    ) -> RunTarget | None:
        query = (
            sa.select(*_TARGET_COLUMNS)
            .select_from(_TARGET_FROM)
            .where(s.tenant_id == tenant_id, s.install_id == install_id, s.id == schedule_id)
        )
        async with self._transaction() as conn:
            row = (await conn.execute(query)).first()
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
        schedule = target.schedule
        async with self._transaction() as conn:
            if not await self._insert_many(conn, [_record(run, lease_until)]):
                return None
            open_run = (
                sa.select(_running.c.id)
                .where(_running.c.id == s.running_run_id, _running.c.status.in_(_OPEN_STATES))
                .exists()
            )
            # A manual run counts as in flight for the no-overlap rule, unless another already is.
            await conn.execute(
                schedules.update()
                .where(s.tenant_id == schedule.tenant_id, s.id == schedule.id, ~open_run)
                .values(running_run_id=run.id)
            )
            await self._prune(conn, [schedule.id])
        return ClaimedRun(run, target, lease_until)

    async def record_attempt(self, claim: ClaimedRun, attempt: int) -> bool:
        async with self._transaction() as conn:
            result = await conn.execute(
                schedule_runs.update()
                .where(r.id == claim.run.id, r.lease_until == claim.lease_until)
                .values(attempt=attempt)
            )
        return bool(result.rowcount)

    async def finish_runs(self, outcomes: Sequence[RunOutcome]) -> list[ScheduleRun | None]:
        if not outcomes:
            return []
        finished = [
            {
                "b_id": o.claim.run.id,
                "b_lease": o.claim.lease_until,
                "b_status": o.status.value,
                "b_finish_time": o.finish_time,
                "b_error": o.error,
                "b_attempt": o.attempt,
            }
            for o in outcomes
        ]
        async with self._transaction() as conn:
            if self._postgres:
                # Schedules first, then their runs, in id order: the order of a schedule's
                # DELETE (the row, then its runs by cascade) and of a claim, so that neither
                # they nor another process's finishes can deadlock with this transaction.
                await conn.exec_driver_sql(
                    _PG_LOCK_SCHEDULES, (sorted({o.claim.run.schedule_id for o in outcomes}),)
                )
                # Fenced by the lease: a run taken over (or released) is not written.
                result = await conn.exec_driver_sql(
                    _PG_FINISH_RUNS, _arrays(finished, _PG_FINISH_RUNS_COLUMNS)
                )
                written = {row[0] for row in result}
            else:
                leases = dict(
                    (
                        await conn.execute(
                            sa.select(r.id, r.lease_until).where(self._among(r.id, "ids")),
                            {"ids": [o.claim.run.id for o in outcomes]},
                        )
                    ).all()
                )
                fenced = [
                    row
                    for row, o in zip(finished, outcomes, strict=True)
                    if leases.get(o.claim.run.id) == o.claim.lease_until
                ]
                if fenced:
                    await conn.execute(_FINISH_RUN, fenced)
                written = {row["b_id"] for row in fenced}
            last_runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for o in sorted(outcomes, key=lambda o: o.claim.run.schedule_id):
                run = o.claim.run
                if run.id not in written:
                    continue
                disable = o.disable_error is not None
                last_runs[disable].append(
                    {
                        "b_tenant_id": run.tenant_id,
                        "b_schedule_id": run.schedule_id,
                        "b_run_id": run.id,
                        "b_last_run_time": run.start_time or o.finish_time,
                        "b_status": o.status.value,
                        "b_error": o.disable_error if disable else o.error,
                        "b_finish_time": o.finish_time,
                    }
                )
            plain = last_runs[False]
            if self._postgres and plain and len({r["b_schedule_id"] for r in plain}) == len(plain):
                await conn.exec_driver_sql(
                    _PG_RECORD_LAST_RUNS, _arrays(plain, _PG_RECORD_LAST_RUNS_COLUMNS)
                )
            elif plain:
                await conn.execute(_RECORD_LAST_RUN, plain)
            if last_runs[True]:
                await conn.execute(_RECORD_LAST_RUN_AND_DISABLE, last_runs[True])
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
        async with self._transaction() as conn:
            await conn.execute(
                schedule_runs.update()
                .where(r.id == claim.run.id, r.lease_until == claim.lease_until)
                .values(lease_until=now)
            )
