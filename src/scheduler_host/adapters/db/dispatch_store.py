"""SQL of the dispatcher: claims of due schedules (FOR UPDATE SKIP LOCKED), run records, leases.

A run's `lease_until` is also its fencing token: every write after the claim names the lease it
holds, so a process whose claim was taken over writes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from scheduler_host.adapters.db.engine import is_connectivity_error
from scheduler_host.adapters.db.repositories import install_context_from_row, schedule_from_row
from scheduler_host.adapters.db.tables import endpoints, installs, schedule_runs, schedules
from scheduler_host.domain.errors import DatabaseUnavailable
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.service.ports import ClaimBatch, ClaimedRun, ClaimPlan, RunTarget

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


def _target(row: sa.Row[Any]) -> RunTarget:
    m = row._mapping
    schedule = schedule_from_row(row)
    install = install_context_from_row(row, enabled_key="install_enabled")
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
    def __init__(self, engine: AsyncEngine, history_limit: int, connections: int = 4) -> None:
        self._engine = engine
        self._history_limit = history_limit
        self._postgres = engine.dialect.name == "postgresql"
        # Many runs finish at once; queueing them here keeps the rest of the pool for API calls
        # and avoids opening and closing overflow connections for each burst.
        self._connections = asyncio.Semaphore(connections)

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
            sa.select(*_TARGET_COLUMNS)
            .select_from(_TARGET_FROM)
            .where(_DUE, s.next_run_time <= now)
            .order_by(s.next_run_time)
            .limit(limit)
            # SQLite ignores this: it runs in one process, where the transaction is enough.
            .with_for_update(of=schedules, skip_locked=True)
        )
        runs: list[ClaimedRun] = []
        async with self._transaction() as conn:
            rows = (await conn.execute(query)).all()
            for row in rows:
                target = _target(row)
                claimed = await self._apply(conn, target, plan(target), now, lease_until)
                if claimed is not None:
                    runs.append(claimed)
        return ClaimBatch(len(rows), runs)

    async def _apply(
        self,
        conn: AsyncConnection,
        target: RunTarget,
        plan: ClaimPlan,
        now: datetime,
        lease_until: datetime,
    ) -> ClaimedRun | None:
        schedule = target.schedule
        values: dict[str, Any] = {"next_run_time": plan.next_run_time}
        if plan.park:
            values = {"next_run_time": None}
        elif plan.disable_error is not None:
            values = {
                "enabled": False,
                "next_run_time": None,
                "last_error": plan.disable_error,
                "revision": s.revision + 1,
                "update_time": now,
            }
        for skip in plan.skipped:
            run = _run(
                target,
                uuid.uuid4(),
                RunTrigger.SCHEDULE,
                skip.scheduled_time,
                RunState.SKIPPED,
                finish_time=now,
                error=skip.reason,
            )
            await self._insert(conn, run, None)
            values.update(last_run_time=now, last_run_status="skipped", last_error=skip.reason)
        claimed = None
        if plan.fire_at is not None:
            run = _run(
                target,
                uuid.uuid4(),
                RunTrigger.SCHEDULE,
                plan.fire_at,
                RunState.RUNNING,
                start_time=now,
                attempt=1,
            )
            # The unique (schedule, trigger, scheduled time) guard: one run per occurrence.
            if await self._insert(conn, run, lease_until):
                values["running_run_id"] = run.id
                claimed = ClaimedRun(run, target, lease_until)
        await conn.execute(
            schedules.update()
            .where(s.tenant_id == schedule.tenant_id, s.id == schedule.id)
            .values(**values)
        )
        if plan.skipped or claimed is not None:
            await self._prune(conn, schedule.tenant_id, schedule.id)
        return claimed

    async def _insert(
        self, conn: AsyncConnection, run: ScheduleRun, lease_until: datetime | None
    ) -> bool:
        insert = postgresql.insert if self._postgres else sqlite.insert
        statement = (
            insert(schedule_runs)
            .values(
                id=run.id,
                tenant_id=run.tenant_id,
                install_id=run.install_id,
                schedule_id=run.schedule_id,
                trigger=run.trigger.value,
                scheduled_time=run.scheduled_time,
                start_time=run.start_time,
                finish_time=run.finish_time,
                status=run.status.value,
                attempt=run.attempt,
                error=run.error,
                lease_until=lease_until,
            )
            .on_conflict_do_nothing(index_elements=["schedule_id", "trigger", "scheduled_time"])
        )
        return bool((await conn.execute(statement)).rowcount)

    async def _prune(self, conn: AsyncConnection, tenant_id: str, schedule_id: uuid.UUID) -> None:
        """Keep the newest runs of the schedule (the history limit); open runs are never cut."""
        beyond = (
            sa.select(r.id)
            .where(r.tenant_id == tenant_id, r.schedule_id == schedule_id)
            .order_by(r.scheduled_time.desc(), r.id.desc())
            .offset(self._history_limit)
        )
        await conn.execute(
            schedule_runs.delete().where(
                r.tenant_id == tenant_id,
                r.schedule_id == schedule_id,
                r.id.in_(beyond),
                r.status.not_in(_OPEN_STATES),
            )
        )

    async def take_over_expired(
        self, now: datetime, limit: int, lease_until: datetime, exclude: Collection[uuid.UUID]
    ) -> list[ClaimedRun]:
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
            .limit(limit)
            .with_for_update(of=schedule_runs, skip_locked=True)
        )
        if exclude:
            query = query.where(r.id.not_in(list(exclude)))
        claims: list[ClaimedRun] = []
        async with self._transaction() as conn:
            for row in (await conn.execute(query)).all():
                m = row._mapping
                start_time = m["start_time"] or now
                # At least one more call, with the same idempotency key, whatever the count was.
                attempt = m["attempt"] + 1
                await conn.execute(
                    schedule_runs.update()
                    .where(r.id == m["run_id"])
                    .values(
                        lease_until=lease_until,
                        attempt=attempt,
                        status=RunState.RUNNING.value,
                        start_time=start_time,
                    )
                )
                target = _target(row)
                run = _run(
                    target,
                    m["run_id"],
                    RunTrigger(m["trigger"]),
                    m["scheduled_time"],
                    RunState.RUNNING,
                    start_time=start_time,
                    attempt=attempt,
                )
                claims.append(ClaimedRun(run, target, lease_until))
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
            if not await self._insert(conn, run, lease_until):
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
            await self._prune(conn, schedule.tenant_id, schedule.id)
        return ClaimedRun(run, target, lease_until)

    async def record_attempt(self, claim: ClaimedRun, attempt: int) -> bool:
        async with self._transaction() as conn:
            result = await conn.execute(
                schedule_runs.update()
                .where(r.id == claim.run.id, r.lease_until == claim.lease_until)
                .values(attempt=attempt)
            )
        return bool(result.rowcount)

    async def finish_run(
        self,
        claim: ClaimedRun,
        status: RunState,
        error: str | None,
        attempt: int,
        now: datetime,
        disable_error: str | None = None,
    ) -> ScheduleRun | None:
        run = claim.run
        async with self._transaction() as conn:
            result = await conn.execute(
                schedule_runs.update()
                .where(r.id == run.id, r.lease_until == claim.lease_until)
                .values(
                    status=status.value,
                    finish_time=now,
                    error=error,
                    attempt=attempt,
                    lease_until=None,
                )
            )
            if not result.rowcount:
                return None
            values: dict[str, Any] = {
                "last_run_time": run.start_time or now,
                "last_run_status": status.value,
                "last_error": error,
                "running_run_id": sa.case(
                    (s.running_run_id == run.id, sa.null()), else_=s.running_run_id
                ),
            }
            if disable_error is not None:
                values.update(
                    enabled=False,
                    next_run_time=None,
                    last_error=disable_error,
                    revision=s.revision + 1,
                    update_time=now,
                )
            await conn.execute(
                schedules.update()
                .where(s.tenant_id == run.tenant_id, s.id == run.schedule_id)
                .values(**values)
            )
        return ScheduleRun(
            id=run.id,
            tenant_id=run.tenant_id,
            install_id=run.install_id,
            schedule_id=run.schedule_id,
            trigger=run.trigger,
            scheduled_time=run.scheduled_time,
            start_time=run.start_time,
            finish_time=now,
            status=status,
            attempt=attempt,
            error=error,
        )

    async def release(self, claim: ClaimedRun, now: datetime) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                schedule_runs.update()
                .where(r.id == claim.run.id, r.lease_until == claim.lease_until)
                .values(lease_until=now)
            )
