"""Who may call, and how often: runner and admin tokens, install scope, the mutation rate limit
(shared by every process, in the database), the read limit (per process) and the early quota.

These are the use cases behind the server's interceptor chain (auth → rate limit → quota).
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import timedelta

from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.errors import (
    CapabilityNotGranted,
    FieldViolation,
    InstallDisabled,
    InstallNotFound,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    ValidationFailed,
)
from scheduler_host.domain.install import SCHEDULER_CAPABILITY, InstallContext
from scheduler_host.domain.schedule import validate_uuid
from scheduler_host.service.ports import Clock, UnitOfWorkFactory
from scheduler_host.service.schedules import IDEMPOTENCY_WINDOW

RATE_WINDOW = timedelta(seconds=60)
# A monotonic clock in seconds (time.monotonic; tests move their own).
Ticker = Callable[[], float]


def mutations_scope(install_id: uuid.UUID) -> str:
    """The rate limiter's scope of an install's mutating calls."""
    return f"mutations:{install_id}"


def manual_runs_scope(tenant_id: str) -> str:
    """The rate limiter's scope of a tenant's manual runs."""
    return f"manual-runs:{tenant_id}"


def check_token(presented: str | None, accepted: Iterable[str]) -> None:
    """Constant-time comparison against every accepted token (several, for rotation)."""
    if not presented:
        raise Unauthenticated("MISSING_CREDENTIALS", "credentials are missing")
    matched = False
    for token in accepted:
        # No early exit: the time taken does not tell which token, if any, matched.
        matched |= hmac.compare_digest(presented.encode(), token.encode())
    if not matched:
        raise Unauthenticated("INVALID_TOKEN", "the token is not valid")


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


class InstallContextCache:
    """Install contexts, and the endpoints of their versions, kept for a short, bounded time so
    every call need not read them.

    An admin change is visible to this process after at most `ttl_seconds`; changes made through
    this process are visible at once (invalidate). Endpoints are kept by (install, version) and
    expire like contexts, so a call works with a context and endpoints that are at most as stale
    as a cached context alone was; the dispatcher re-checks the endpoint of every run."""

    def __init__(
        self, ttl_seconds: float, max_entries: int = 10_000, ticker: Ticker = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._now = ticker
        self._entries: OrderedDict[uuid.UUID, tuple[float, InstallContext | None]] = OrderedDict()
        self._endpoints: OrderedDict[uuid.UUID, tuple[float, str, list[Endpoint]]] = OrderedDict()

    def get(self, install_id: uuid.UUID) -> tuple[bool, InstallContext | None]:
        entry = self._entries.get(install_id)
        if entry is None or entry[0] < self._now():
            return False, None
        return True, entry[1]

    def put(self, install_id: uuid.UUID, ctx: InstallContext | None) -> None:
        if self._ttl <= 0:
            return
        self._entries[install_id] = (self._now() + self._ttl, ctx)
        self._entries.move_to_end(install_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def endpoints(self, install_id: uuid.UUID, version_id: str) -> list[Endpoint] | None:
        entry = self._endpoints.get(install_id)
        if entry is None or entry[1] != version_id or entry[0] < self._now():
            return None
        # A copy: callers may not change what other calls are given.
        return list(entry[2])

    def keep_endpoints(
        self, install_id: uuid.UUID, version_id: str, endpoints: list[Endpoint]
    ) -> None:
        if self._ttl <= 0:
            return
        self._endpoints[install_id] = (self._now() + self._ttl, version_id, list(endpoints))
        self._endpoints.move_to_end(install_id)
        while len(self._endpoints) > self._max:
            self._endpoints.popitem(last=False)

    def invalidate(self, install_id: uuid.UUID) -> None:
        self._entries.pop(install_id, None)
        self._endpoints.pop(install_id, None)


class ReadLimiter:
    """At most `limit` reads per install in any rolling minute, counted in this process: it
    protects the process, so it needs no shared state. Installs idle for a minute are forgotten."""

    def __init__(self, limit: int, ticker: Ticker = time.monotonic) -> None:
        self._limit = limit
        self._now = ticker
        self._hits: OrderedDict[uuid.UUID, deque[float]] = OrderedDict()

    def hit(self, install_id: uuid.UUID) -> None:
        """Count one read, or raise RateLimited with the wait until a slot frees."""
        now = self._now()
        window = RATE_WINDOW.total_seconds()
        # Forget installs whose newest read left the window (the oldest-touched come first).
        while self._hits:
            oldest_id, oldest = next(iter(self._hits.items()))
            if oldest and oldest[-1] > now - window:
                break
            del self._hits[oldest_id]
        hits = self._hits.pop(install_id, None) or deque()
        while hits and hits[0] <= now - window:
            hits.popleft()
        self._hits[install_id] = hits
        if len(hits) >= self._limit:
            wait = timedelta(seconds=max(hits[0] + window - now, 0.001))
            raise RateLimited(
                f"at most {self._limit} reads per minute; retry in {wait.total_seconds():.1f} s",
                wait,
            )
        hits.append(now)


async def authorize_install(
    raw_install_id: str | None, *, uow_factory: UnitOfWorkFactory, cache: InstallContextCache
) -> InstallContext:
    """The order of checks is part of the contract: id → exists → enabled → capability."""
    install_id = validate_uuid(raw_install_id or "", "x-install-id")
    if isinstance(install_id, FieldViolation):
        raise ValidationFailed(
            [FieldViolation("x-install-id", "ID_INVALID", "metadata x-install-id must be a UUID")]
        )
    hit, ctx = cache.get(install_id)
    if not hit:
        async with uow_factory(autocommit=True) as uow:
            ctx = await uow.installs.context(install_id)
        cache.put(install_id, ctx)
    if ctx is None:
        raise InstallNotFound(str(install_id))
    if not ctx.enabled:
        raise InstallDisabled("the install is disabled")
    if SCHEDULER_CAPABILITY not in ctx.capabilities:
        raise CapabilityNotGranted(f"the install was not granted {SCHEDULER_CAPABILITY}")
    return ctx


async def count_call(
    scope: str,
    tenant_id: str,
    limit: int,
    what: str,
    *,
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
) -> None:
    """Count one call against a rolling 60 s limit shared by every process, or refuse it.

    The hit commits on its own, before the call it counts: a call that reaches the limiter
    counts whether it then succeeds or fails."""
    async with uow_factory(autocommit=True) as uow:
        wait = await uow.rate_limits.hit(scope, tenant_id, limit, RATE_WINDOW, clock())
        await uow.commit()
    if wait is not None:
        raise RateLimited(
            f"at most {limit} {what} per minute; retry in {wait.total_seconds():.1f} s", wait
        )


async def check_quota_early(
    ctx: InstallContext,
    request_id: str,
    limit: int,
    *,
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
) -> None:
    """Refuse a create early when the install is full; the create's transaction re-checks it.

    A retry of a create that already succeeded passes, so it can return its first result."""
    rid = validate_uuid(request_id, "request_id") if request_id.strip() else None
    async with uow_factory(autocommit=True) as uow:
        count, earlier = await uow.schedules.usage(
            ctx.tenant_id,
            ctx.install_id,
            rid if isinstance(rid, uuid.UUID) else None,
            clock() - IDEMPOTENCY_WINDOW,
        )
    if count >= limit and earlier is None:
        raise QuotaExceeded(f"install:{ctx.install_id}", limit)
