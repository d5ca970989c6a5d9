"""In-memory implementations of every port of `service/ports.py`, for unit tests of the use cases
and the dispatcher. They keep the ports' promises (transactions roll back unless committed,
conditional writes, the unique run guard, lease fencing). The fakes subclass their ports and mark
the ports' methods `@override` (an argument a fake has no use for is still the port's), except the
unit of work, whose port declares read-only properties; mypy checks every fake against its port
(see the end of this file), so a fake cannot drift from it."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

from typing_extensions import override

from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.errors import InstallNotFound, NameInUse
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service import ports

OPEN = (RunState.PENDING, RunState.RUNNING)


@dataclass
class Lease:
    until: datetime | None
    takeovers: int = 0


@dataclass
class Data:
    """Everything stored; one lock-free world (tests run one coroutine at a time)."""

    installs: dict[uuid.UUID, Install] = field(default_factory=dict)
    schedules: dict[uuid.UUID, Schedule] = field(default_factory=dict)
    running: dict[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)  # schedule → run
    runs: dict[uuid.UUID, ScheduleRun] = field(default_factory=dict)
    leases: dict[uuid.UUID, Lease] = field(default_factory=dict)
    keys: dict[tuple[uuid.UUID, uuid.UUID], tuple[uuid.UUID, datetime]] = field(
        default_factory=dict
    )
    hits: dict[str, list[datetime]] = field(default_factory=dict)


class FakeSchedules(ports.ScheduleRepository):
    def __init__(self, data: Data) -> None:
        self.d = data

    def _mine(self, tenant_id: str, install_id: uuid.UUID) -> list[Schedule]:
        return sorted(
            (
                s
                for s in self.d.schedules.values()
                if s.tenant_id == tenant_id and s.install_id == install_id
            ),
            key=lambda s: (s.create_time, s.id),
        )

    def _check_name(self, s: Schedule) -> None:
        for other in self._mine(s.tenant_id, s.install_id):
            if s.name is not None and other.id != s.id and other.name == s.name:
                raise NameInUse("a schedule with this name already exists in the install")

    @override
    async def get(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID, *, for_update: bool
    ) -> Schedule | None:
        found = self.d.schedules.get(schedule_id)
        if found is None or (found.tenant_id, found.install_id) != (tenant_id, install_id):
            return None
        return found

    @override
    async def page_with_total(
        self, tenant_id: str, install_id: uuid.UUID, after: ports.Position | None, limit: int
    ) -> tuple[list[Schedule], int]:
        mine = self._mine(tenant_id, install_id)
        page = [s for s in mine if after is None or (s.create_time, s.id) > after]
        return page[:limit], len(mine)

    @override
    async def usage(
        self, tenant_id: str, install_id: uuid.UUID, request_id: uuid.UUID | None, since: datetime
    ) -> tuple[int, uuid.UUID | None]:
        return len(self._mine(tenant_id, install_id)), self._earlier(install_id, request_id, since)

    def _earlier(
        self, install_id: uuid.UUID, request_id: uuid.UUID | None, since: datetime
    ) -> uuid.UUID | None:
        key = self.d.keys.get((install_id, request_id)) if request_id is not None else None
        return key[0] if key is not None and key[1] > since else None

    @override
    async def create(
        self,
        schedule: Schedule,
        limit: int,
        request_id: uuid.UUID | None,
        since: datetime,
        version_id: str,
    ) -> ports.CreateOutcome:
        install = self.d.installs.get(schedule.install_id)
        if install is None or install.tenant_id != schedule.tenant_id:
            raise InstallNotFound(str(schedule.install_id))
        if install.version_id != version_id:
            return ports.CreateOutcome(stale_version=True)
        earlier = self._earlier(schedule.install_id, request_id, since)
        if earlier is not None:
            return ports.CreateOutcome(earlier=earlier)
        mine = self._mine(schedule.tenant_id, schedule.install_id)
        if len(mine) >= limit:
            return ports.CreateOutcome(full=True)
        self._check_name(schedule)
        created = schedule
        newest = max((s.create_time for s in mine), default=None)
        if newest is not None and newest >= schedule.create_time:
            at = newest + timedelta(microseconds=1)
            created = replace(schedule, create_time=at, update_time=at)
        self.d.schedules[created.id] = created
        self.d.running[created.id] = None
        if request_id is not None:
            self.d.keys[(created.install_id, request_id)] = (created.id, created.create_time)
        return ports.CreateOutcome(created=created)

    @override
    async def update_definition(
        self, schedule: Schedule, expected_revision: int, *, timing: bool, version_id: str
    ) -> Schedule | None:
        current = self.d.schedules.get(schedule.id)
        install = self.d.installs.get(schedule.install_id)
        if current is None or current.revision != expected_revision:
            return None
        if install is None or install.version_id != version_id:
            return None
        self._check_name(schedule)
        stored = replace(
            schedule,
            next_run_time=schedule.next_run_time if timing else current.next_run_time,
            last_run_time=current.last_run_time,
            last_run_status=current.last_run_status,
            last_error=current.last_error,
        )
        self.d.schedules[schedule.id] = stored
        return stored

    @override
    async def delete(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        schedule_id: uuid.UUID,
        *,
        revision: int | None = None,
    ) -> bool:
        found = await self.get(tenant_id, install_id, schedule_id, for_update=True)
        if found is None or (revision is not None and found.revision != revision):
            return False
        del self.d.schedules[schedule_id]
        for run_id in [r.id for r in self.d.runs.values() if r.schedule_id == schedule_id]:
            del self.d.runs[run_id]
        return True

    @override
    async def lock_install_schedules(self, tenant_id: str, install_id: uuid.UUID) -> list[Schedule]:
        return sorted(self._mine(tenant_id, install_id), key=lambda s: s.id)

    @override
    async def apply_remap(
        self, tenant_id: str, install_id: uuid.UUID, changes: Sequence[Schedule]
    ) -> None:
        for change in changes:
            current = self.d.schedules[change.id]
            self.d.schedules[change.id] = replace(
                current,
                endpoint_id=change.endpoint_id,
                enabled=change.enabled,
                next_run_time=change.next_run_time,
                last_error=change.last_error,
                revision=change.revision,
                update_time=change.update_time,
            )


class FakeInstalls(ports.InstallRepository):
    def __init__(self, data: Data, cache: ports.EndpointCache | None = None) -> None:
        self.d = data
        self.cache = cache

    @override
    async def get(self, install_id: uuid.UUID) -> Install | None:
        return self.d.installs.get(install_id)

    @override
    async def context(self, install_id: uuid.UUID) -> InstallContext | None:
        found = self.d.installs.get(install_id)
        return found.context() if found is not None else None

    @override
    async def lock(self, tenant_id: str, install_id: uuid.UUID) -> bool:
        found = self.d.installs.get(install_id)
        return found is not None and found.tenant_id == tenant_id

    @override
    async def endpoints(
        self, tenant_id: str, install_id: uuid.UUID, version_id: str
    ) -> list[Endpoint]:
        if self.cache is not None and (cached := self.cache.endpoints(install_id, version_id)):
            return cached
        found = self.d.installs.get(install_id)
        if found is None or found.version_id != version_id:
            return []
        eps = sorted(found.endpoints, key=lambda e: (e.path, e.method))
        if self.cache is not None:
            self.cache.keep_endpoints(install_id, version_id, eps)
        return eps

    @override
    async def save(self, install: Install) -> bool:
        stored = self.d.installs.get(install.install_id)
        if stored is not None and stored.tenant_id != install.tenant_id:
            return False
        self.d.installs[install.install_id] = install
        return True

    @override
    async def delete(self, install_id: uuid.UUID) -> bool:
        if self.d.installs.pop(install_id, None) is None:
            return False
        for s in [s for s in self.d.schedules.values() if s.install_id == install_id]:
            await FakeSchedules(self.d).delete(s.tenant_id, install_id, s.id)
        for key in [k for k in self.d.keys if k[0] == install_id]:
            del self.d.keys[key]
        return True


class FakeRuns(ports.RunRepository):
    def __init__(self, data: Data) -> None:
        self.d = data

    @override
    async def page(
        self, tenant_id: str, schedule_id: uuid.UUID, before: ports.Position | None, limit: int
    ) -> list[ScheduleRun]:
        runs = sorted(
            (r for r in self.d.runs.values() if r.schedule_id == schedule_id),
            key=lambda r: (r.scheduled_time, r.id),
            reverse=True,
        )
        return [r for r in runs if before is None or (r.scheduled_time, r.id) < before][:limit]


class FakeRateLimiter(ports.RateLimiter):
    def __init__(self, data: Data) -> None:
        self.d = data

    @override
    async def hit(
        self, scope: str, tenant_id: str, limit: int, window: timedelta, now: datetime
    ) -> timedelta | None:
        hits = self.d.hits.setdefault(scope, [])
        now = max([now, *(h + timedelta(microseconds=1) for h in hits[-1:])])
        hits[:] = [h for h in hits if h > now - window]
        if len(hits) >= limit:
            return max(hits[-limit] + window - now, timedelta(milliseconds=1))
        hits.append(now)
        return None

    @override
    async def forget(self, scope: str, tenant_id: str) -> None:
        self.d.hits.pop(scope, None)


class FakeHousekeeping(ports.Housekeeping):
    def __init__(self, data: Data) -> None:
        self.d = data

    @override
    async def prune(self, keys_before: datetime, hits_before: datetime) -> int:
        old = [k for k, (_, made) in self.d.keys.items() if made <= keys_before]
        for k in old:
            del self.d.keys[k]
        removed = len(old)
        for scope, hits in self.d.hits.items():
            kept = [h for h in hits if h > hits_before]
            removed += len(hits) - len(kept)
            self.d.hits[scope] = kept
        return removed


class FakeUnitOfWork:
    """Writes apply at once; leaving a transactional unit without commit() restores the state
    it began with."""

    def __init__(self, data: Data, autocommit: bool, cache: ports.EndpointCache | None) -> None:
        self._data = data
        self._autocommit = autocommit
        self._snapshot: Data | None = None
        self._committed = False
        self.schedules = FakeSchedules(data)
        self.installs = FakeInstalls(data, cache)
        self.runs = FakeRuns(data)
        self.rate_limits = FakeRateLimiter(data)
        self.housekeeping = FakeHousekeeping(data)

    async def __aenter__(self) -> Self:
        if not self._autocommit:
            self._snapshot = copy.deepcopy(self._data)
        return self

    async def commit(self) -> None:
        self._committed = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._snapshot is not None and not self._committed:
            self._data.__dict__.update(self._snapshot.__dict__)


class FakeUnitOfWorkFactory(ports.UnitOfWorkFactory):
    def __init__(self, data: Data | None = None, cache: ports.EndpointCache | None = None) -> None:
        self.data = data or Data()
        self.cache = cache
        self.units = 0

    @override
    def __call__(self, *, autocommit: bool = False) -> FakeUnitOfWork:
        self.units += 1
        return FakeUnitOfWork(self.data, autocommit, self.cache)


class FakeDispatchStore(ports.DispatchStore):
    """The dispatch store over the same data, with one bucket (0) for every tenant."""

    def __init__(self, data: Data, history_limit: int = 100) -> None:
        self.d = data
        self.history_limit = history_limit
        self.attempts: list[int] = []

    def _target(self, s: Schedule) -> ports.RunTarget:
        install = self.d.installs[s.install_id]
        running = self.d.running.get(s.id)
        run = self.d.runs.get(running) if running is not None else None
        return ports.RunTarget(
            schedule=s,
            install=install.context(),
            endpoint_found=any(
                (e.method, e.path) == (s.endpoint_method, s.endpoint_path)
                for e in install.endpoints
            ),
            run_in_flight=run is not None and run.status in OPEN,
        )

    @override
    async def poll(self) -> list[ports.BucketWork]:
        due = [s.next_run_time for s in self.d.schedules.values() if s.enabled and s.next_run_time]
        leases = [
            lease.until
            for run_id, lease in self.d.leases.items()
            if lease.until is not None and self.d.runs[run_id].status in OPEN
        ]
        if not due and not leases:
            return []
        return [ports.BucketWork(0, min(due, default=None), min(leases, default=None))]

    def _insert(self, run: ScheduleRun, lease: datetime | None) -> bool:
        for other in self.d.runs.values():
            same = (other.schedule_id, other.trigger, other.scheduled_time)
            if same == (run.schedule_id, run.trigger, run.scheduled_time):
                return False  # the unique guard
        self.d.runs[run.id] = run
        self.d.leases[run.id] = Lease(lease)
        return True

    def _cut_history(self, schedule_id: uuid.UUID) -> None:
        runs = sorted(
            (r for r in self.d.runs.values() if r.schedule_id == schedule_id),
            key=lambda r: (r.scheduled_time, r.id),
            reverse=True,
        )
        for r in runs[self.history_limit :]:
            if r.status not in OPEN:
                del self.d.runs[r.id]

    @override
    async def claim_due(
        self, bucket: int, now: datetime, limit: int, lease_until: datetime, plan: ports.Planner
    ) -> ports.ClaimBatch:
        due = sorted(
            (
                s
                for s in self.d.schedules.values()
                if s.enabled and s.next_run_time is not None and s.next_run_time <= now
            ),
            key=lambda s: s.next_run_time or now,
        )[:limit]
        claims = [c for s in due if (c := self._apply(s, plan(self._target(s)), now, lease_until))]
        nexts = [
            s.next_run_time for s in self.d.schedules.values() if s.enabled and s.next_run_time
        ]
        return ports.ClaimBatch(len(due), claims, min(nexts, default=None))

    def _apply(
        self, s: Schedule, decision: ports.ClaimPlan, now: datetime, lease_until: datetime
    ) -> ports.ClaimedRun | None:
        target = self._target(s)
        for skip in decision.skipped:
            self._insert(
                _run(
                    s,
                    RunTrigger.SCHEDULE,
                    skip.scheduled_time,
                    RunState.SKIPPED,
                    finish=now,
                    error=skip.reason,
                ),
                None,
            )
        claim = None
        if decision.fire_at is not None:
            run = _run(
                s, RunTrigger.SCHEDULE, decision.fire_at, RunState.RUNNING, start=now, attempt=1
            )
            if self._insert(run, lease_until):
                claim = ports.ClaimedRun(run, target, lease_until)
                self.d.running[s.id] = run.id
        new = replace(s, next_run_time=None if decision.park else decision.next_run_time)
        if decision.disable_error is not None or decision.complete:
            new = replace(
                new, enabled=False, next_run_time=None, revision=s.revision + 1, update_time=now
            )
            if decision.disable_error is not None:
                new = replace(new, last_error=decision.disable_error)
        if decision.skipped:
            new = replace(
                new,
                last_run_time=now,
                last_run_status="skipped",
                last_error=decision.skipped[-1].reason,
            )
        self.d.schedules[s.id] = new
        self._cut_history(s.id)
        return claim

    @override
    async def take_over_expired(
        self,
        bucket: int,
        now: datetime,
        limit: int,
        lease_until: datetime,
        exclude: Collection[uuid.UUID],
    ) -> list[ports.ClaimedRun]:
        claims: list[ports.ClaimedRun] = []
        for run_id, lease in list(self.d.leases.items()):
            run = self.d.runs.get(run_id)
            if run is None or run.status not in OPEN or lease.until is None:
                continue
            if lease.until >= now or run_id in exclude or len(claims) >= limit:
                continue
            lease.until, lease.takeovers = lease_until, lease.takeovers + 1
            taken = replace(
                run,
                status=RunState.RUNNING,
                attempt=run.attempt + 1,
                start_time=run.start_time or now,
            )
            self.d.runs[run_id] = taken
            schedule = self.d.schedules[run.schedule_id]
            claims.append(
                ports.ClaimedRun(taken, self._target(schedule), lease_until, lease.takeovers)
            )
        return claims

    @override
    async def load_target(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID
    ) -> ports.RunTarget | None:
        s = self.d.schedules.get(schedule_id)
        if s is None or (s.tenant_id, s.install_id) != (tenant_id, install_id):
            return None
        return self._target(s)

    @override
    async def start_manual_run(
        self,
        target: ports.RunTarget,
        scheduled_time: datetime,
        now: datetime,
        lease_until: datetime,
    ) -> ports.ClaimedRun | None:
        s = target.schedule
        run = _run(s, RunTrigger.MANUAL, scheduled_time, RunState.RUNNING, start=now, attempt=1)
        if not self._insert(run, lease_until):
            return None
        if not self._target(s).run_in_flight:
            self.d.running[s.id] = run.id
        self._cut_history(s.id)
        return ports.ClaimedRun(run, target, lease_until)

    def _holds(self, claim: ports.ClaimedRun) -> bool:
        lease = self.d.leases.get(claim.run.id)
        return lease is not None and lease.until == claim.lease_until

    @override
    async def record_attempt(self, claim: ports.ClaimedRun, attempt: int) -> bool:
        self.attempts.append(attempt)
        if not self._holds(claim):
            return False
        self.d.runs[claim.run.id] = replace(self.d.runs[claim.run.id], attempt=attempt)
        return True

    @override
    async def finish_runs(self, outcomes: Sequence[ports.RunOutcome]) -> list[ScheduleRun | None]:
        written: list[ScheduleRun | None] = []
        for o in outcomes:
            if not self._holds(o.claim):
                written.append(None)
                continue
            run = o.finished_run()
            self.d.runs[run.id] = run
            self.d.leases[run.id] = Lease(None)
            s = self.d.schedules.get(run.schedule_id)
            if s is not None:
                s = replace(
                    s,
                    last_run_time=run.start_time or o.finish_time,
                    last_run_status=o.status.value,
                    last_error=o.disable_error or o.error,
                )
                if o.disable_error is not None:
                    s = replace(
                        s,
                        enabled=False,
                        next_run_time=None,
                        revision=s.revision + 1,
                        update_time=o.finish_time,
                    )
                self.d.schedules[s.id] = s
                if self.d.running.get(s.id) == run.id:
                    self.d.running[s.id] = None
            written.append(run)
        return written

    @override
    async def release(self, claim: ports.ClaimedRun, now: datetime) -> None:
        if self._holds(claim):
            self.d.leases[claim.run.id] = Lease(now, self.d.leases[claim.run.id].takeovers)


def _run(
    s: Schedule,
    trigger: RunTrigger,
    scheduled: datetime,
    status: RunState,
    *,
    start: datetime | None = None,
    finish: datetime | None = None,
    attempt: int = 0,
    error: str | None = None,
) -> ScheduleRun:
    return ScheduleRun(
        uuid.uuid4(),
        s.tenant_id,
        s.install_id,
        s.id,
        trigger,
        scheduled,
        start,
        finish,
        status,
        attempt,
        error,
    )


@dataclass
class FakeRunner(ports.RunnerClient):
    """Answers each call with the next scripted outcome (success when the script is empty)."""

    answers: list[ports.CallOutcome] = field(default_factory=list)
    calls: list[ports.RunnerCall] = field(default_factory=list)
    closed: bool = False

    @override
    async def execute(self, call: ports.RunnerCall) -> ports.CallOutcome:
        self.calls.append(call)
        return self.answers.pop(0) if self.answers else ports.CallOutcome(True)

    @override
    async def close(self) -> None:
        self.closed = True


# mypy checks each fake against its port here.
_ports: tuple[
    ports.UnitOfWorkFactory, ports.UnitOfWork, ports.DispatchStore, ports.RunnerClient
] = (
    FakeUnitOfWorkFactory(),
    FakeUnitOfWork(Data(), False, None),
    FakeDispatchStore(Data()),
    FakeRunner(),
)
