"""The ports the use cases depend on; adapters implement them, tests may fake them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol, Self

from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.domain.schedule import Schedule

Clock = Callable[[], datetime]
# Where a page ends in its order (a time, then an id); the next page starts after it.
Position = tuple[datetime, uuid.UUID]


class ScheduleRepository(Protocol):
    """Schedules of one install; every method is scoped by tenant and install."""

    async def get(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID, *, for_update: bool
    ) -> Schedule | None: ...

    async def page_with_total(
        self, tenant_id: str, install_id: uuid.UUID, after: Position | None, limit: int
    ) -> tuple[list[Schedule], int]:
        """One page in (create_time, id) order after `after`, and the install's count, from
        one snapshot."""

    async def usage(
        self, tenant_id: str, install_id: uuid.UUID, request_id: uuid.UUID | None, since: datetime
    ) -> tuple[int, uuid.UUID | None]:
        """The install's schedule count, and the schedule a create with `request_id` made after
        `since` (when set), from one snapshot."""

    async def create(
        self,
        schedule: Schedule,
        limit: int,
        request_id: uuid.UUID | None,
        since: datetime,
        version_id: str,
    ) -> CreateOutcome:
        """Under the install's lock: unless the install is no longer at `version_id` (the
        version the endpoint was resolved against), `request_id` names a create since `since`
        (its schedule id is returned, nothing written) or the install already has `limit`
        schedules, insert the schedule (its create time just after the install's newest, if the
        clock lags) and remember the request id. Raises NameInUse for a taken name,
        InstallNotFound when the install is gone."""

    async def update_definition(
        self, schedule: Schedule, expected_revision: int, *, timing: bool, version_id: str
    ) -> Schedule | None:
        """Write what a caller may change (the definition), the revision and the update time,
        and next_run_time when `timing`, if the stored revision is still `expected_revision` and
        the install is still at `version_id`; the schedule as stored then, or None when it
        changed, is gone or the install was upgraded. The fields the dispatcher keeps (last run,
        next run) are not written otherwise. Raises NameInUse."""

    async def delete(
        self,
        tenant_id: str,
        install_id: uuid.UUID,
        schedule_id: uuid.UUID,
        *,
        revision: int | None = None,
    ) -> bool:
        """Remove the schedule with its runs (only at `revision`, when set); False when there was
        none to remove."""

    async def lock_install_schedules(self, tenant_id: str, install_id: uuid.UUID) -> list[Schedule]:
        """Every schedule of the install, locked until the unit of work ends."""

    async def apply_remap(
        self, tenant_id: str, install_id: uuid.UUID, changes: Sequence[Schedule]
    ) -> None:
        """Write what a remap changes (endpoint id, enabled, next run time, last error, revision,
        update time) of schedules locked by lock_install_schedules."""


class InstallRepository(Protocol):
    async def get(self, install_id: uuid.UUID) -> Install | None: ...

    async def context(self, install_id: uuid.UUID) -> InstallContext | None: ...

    async def lock(self, tenant_id: str, install_id: uuid.UUID) -> bool:
        """Take the install's row lock for this unit of work; False when it does not exist."""

    async def endpoints(
        self, tenant_id: str, install_id: uuid.UUID, version_id: str
    ) -> list[Endpoint]:
        """Ordered by path and method; may come from the EndpointCache the unit of work was
        given, as stale as the install context it goes with."""

    async def save(self, install: Install) -> bool:
        """Insert or overwrite the install and the endpoints of its current version; False (and
        nothing written) when the install id is registered for another tenant."""

    async def delete(self, install_id: uuid.UUID) -> bool:
        """Remove the install with its endpoints, schedules, runs and idempotency keys."""


class RunRepository(Protocol):
    async def page(
        self, tenant_id: str, schedule_id: uuid.UUID, before: Position | None, limit: int
    ) -> list[ScheduleRun]:
        """Runs of a schedule, newest first (scheduled time, then id), before `before`."""


class RateLimiter(Protocol):
    async def hit(
        self, scope: str, tenant_id: str, limit: int, window: timedelta, now: datetime
    ) -> timedelta | None:
        """Count one call in `scope`; or, when `limit` calls already fell in the rolling window,
        count nothing and return how long until the oldest of them leaves it. Atomic on its own
        across processes: in an autocommit unit of work the hit is committed when it returns."""

    async def forget(self, scope: str, tenant_id: str) -> None:
        """Drop every hit of `scope` (its owner is gone)."""


class Housekeeping(Protocol):
    async def prune(self, keys_before: datetime, hits_before: datetime) -> int:
        """Delete idempotency keys made before `keys_before` and rate-limit hits before
        `hits_before`; how many rows went."""


class UnitOfWork(Protocol):
    """One transaction: commit() makes the changes visible; leaving without it rolls back.

    Made with `autocommit=True`, there is no transaction: each statement is its own snapshot
    and commits when it completes; commit() then does nothing. For use cases that need no
    common snapshot or lock: one-statement reads, conditional (optimistic) writes and the rate
    limiter. Use cases still call commit() after their writes, so that either kind is right."""

    @property
    def schedules(self) -> ScheduleRepository: ...

    @property
    def installs(self) -> InstallRepository: ...

    @property
    def runs(self) -> RunRepository: ...

    @property
    def rate_limits(self) -> RateLimiter: ...

    @property
    def housekeeping(self) -> Housekeeping: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self, *, autocommit: bool = False) -> UnitOfWork: ...


@dataclass(frozen=True)
class CreateOutcome:
    """What ScheduleRepository.create did: `created` (the schedule as stored); or nothing,
    because `earlier` (the schedule an earlier create with the same request id made) exists or
    the install is `full`."""

    created: Schedule | None = None
    earlier: uuid.UUID | None = None
    full: bool = False
    # The install was upgraded since the endpoint was resolved: resolve again and retry.
    stale_version: bool = False


class EndpointCache(Protocol):
    """Endpoints of installs' current versions, kept as long as their install contexts."""

    def endpoints(self, install_id: uuid.UUID, version_id: str) -> list[Endpoint] | None: ...

    def keep_endpoints(
        self, install_id: uuid.UUID, version_id: str, endpoints: list[Endpoint]
    ) -> None: ...


class PageTokens(Protocol):
    """Opaque, signed page tokens bound to one scope (an install, a schedule)."""

    def encode(self, scope: str, position: Sequence[str]) -> str: ...

    def decode(self, scope: str, token: str) -> list[str] | None: ...


@dataclass(frozen=True)
class RunTarget:
    """What a call of the Runner for one schedule needs: the schedule and its install."""

    schedule: Schedule
    install: InstallContext
    # Whether the schedule's method and path are still among the install's current endpoints.
    endpoint_found: bool
    # Whether the run named by the schedule's running_run_id is still pending or running.
    run_in_flight: bool


@dataclass(frozen=True)
class SkippedOccurrence:
    scheduled_time: datetime
    reason: str


@dataclass(frozen=True)
class ClaimPlan:
    """What the dispatcher does with one claimed due schedule, applied in the claim transaction.

    `skipped` become finished `skipped` run records; `fire_at` (if set) becomes a running run;
    `next_run_time` replaces the schedule's. `disable_error` disables the schedule with that
    last_error; `complete` disables it without one (a one-time schedule that fired or was
    missed); `park` clears next_run_time of a disabled install's schedule until re-enabled.
    """

    skipped: tuple[SkippedOccurrence, ...] = ()
    fire_at: datetime | None = None
    next_run_time: datetime | None = None
    disable_error: str | None = None
    complete: bool = False
    park: bool = False


# What the dispatcher does with a claimed due schedule, decided from its row as read.
Planner = Callable[[RunTarget], ClaimPlan]


@dataclass(frozen=True)
class ClaimedRun:
    """A run this process holds until `lease_until` (the lease is also its fencing token).
    `takeovers` counts the times a process took the run over after another's lease expired."""

    run: ScheduleRun
    target: RunTarget
    lease_until: datetime
    takeovers: int = 0


@dataclass(frozen=True)
class BucketWork:
    """What the lock-free poll saw in one bucket (a partition of the tenants): the earliest next
    run time of an enabled schedule and the earliest lease of an open run, either may be None."""

    bucket: int
    next_run_time: datetime | None
    lease_until: datetime | None


@dataclass(frozen=True)
class ClaimBatch:
    """One claim transaction in one bucket: how many due schedules it locked, the runs to make,
    and the bucket's earliest next run time after it (None when it has none)."""

    schedules: int
    runs: list[ClaimedRun]
    next_due: datetime | None = None


@dataclass(frozen=True)
class RunOutcome:
    """How a claimed run ended, to be recorded on the run and its schedule.

    `disable_error` (if set) also disables the schedule with that last_error.
    """

    claim: ClaimedRun
    status: RunState
    error: str | None
    attempt: int
    finish_time: datetime
    disable_error: str | None = None

    def finished_run(self) -> ScheduleRun:
        """The claimed run as this outcome finishes it."""
        return replace(
            self.claim.run,
            finish_time=self.finish_time,
            status=self.status,
            attempt=self.attempt,
            error=self.error,
        )


class DispatchStore(Protocol):
    """The dispatcher's storage. Its tenants are partitioned in buckets; every claim, takeover
    and finish stays inside one bucket (one transaction or statement each), so a sharded database
    never needs a transaction across shards."""

    async def poll(self) -> list[BucketWork]:
        """Every bucket with an enabled schedule or an open run, read without locks."""

    async def claim_due(
        self, bucket: int, now: datetime, limit: int, lease_until: datetime, plan: Planner
    ) -> ClaimBatch:
        """Lock up to `limit` due schedules of the bucket that no other process holds, apply
        `plan` to each (run records, next run time, history cut to its limit), commit; return the
        runs to make (those whose run record the unique guard accepted). Set-based: a few
        statements per batch."""

    async def take_over_expired(
        self,
        bucket: int,
        now: datetime,
        limit: int,
        lease_until: datetime,
        exclude: Collection[uuid.UUID],
    ) -> list[ClaimedRun]:
        """Claim open runs of the bucket whose lease expired (their process died), counting one
        more attempt and one more takeover; `exclude` names runs this process is still making."""

    async def load_target(
        self, tenant_id: str, install_id: uuid.UUID, schedule_id: uuid.UUID
    ) -> RunTarget | None: ...

    async def start_manual_run(
        self, target: RunTarget, scheduled_time: datetime, now: datetime, lease_until: datetime
    ) -> ClaimedRun | None:
        """Insert a running manual run; None when the unique guard refused `scheduled_time`."""

    async def record_attempt(self, claim: ClaimedRun, attempt: int) -> bool:
        """Store the attempt number before a retry; False when the claim was lost."""

    async def finish_runs(self, outcomes: Sequence[RunOutcome]) -> list[ScheduleRun | None]:
        """Record the outcomes (one statement per bucket) on the runs and their schedules (last
        run fields; disabled where `disable_error` is set); for each, the finished run, or None
        when its claim was lost (nothing is written for that one then)."""

    async def release(self, claim: ClaimedRun, now: datetime) -> None:
        """Let another process take the run over at once (graceful stop)."""


@dataclass(frozen=True)
class RunnerCall:
    """One call of the Runner for a run: what to execute, for whom, and how it is identified.

    The adapter turns it into the Runner's request and judges the answer."""

    target: RunTarget
    trigger: RunTrigger
    # The same for every attempt and takeover of one occurrence.
    idempotency_key: str
    # New for each attempt.
    request_id: str
    timeout_seconds: float


@dataclass(frozen=True)
class CallOutcome:
    """How one call ended: `ok`, or the run's error text and whether another attempt may help."""

    ok: bool
    error: str | None = None
    retryable: bool = False


class RunnerClient(Protocol):
    async def execute(self, call: RunnerCall) -> CallOutcome:
        """One call; never raises for HTTP, transport or response failures (they are outcomes)."""

    async def close(self) -> None: ...
