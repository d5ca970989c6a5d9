"""SchedulerHost use cases: create, get, list, update, delete and endpoints.

Each takes the install context of the caller and a unit-of-work factory, validates with the domain
(every violation at once, see schedule_input.py) and runs in one unit of work.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from scheduler_host.domain.endpoints import Endpoint, resolve_endpoint, unschedulable_reason
from scheduler_host.domain.errors import (
    EtagMismatch,
    FieldViolation,
    InstallNotFound,
    QuotaExceeded,
    ScheduleNotFound,
    ValidationFailed,
)
from scheduler_host.domain.install import InstallContext
from scheduler_host.domain.schedule import Schedule, validate_uuid
from scheduler_host.domain.timing import next_run_of
from scheduler_host.service.policies import SchedulePolicy
from scheduler_host.service.ports import (
    Clock,
    PageTokens,
    Position,
    UnitOfWork,
    UnitOfWorkFactory,
)
from scheduler_host.service.schedule_input import (
    PREFIX,
    UPDATABLE_FIELDS,
    Checked,
    ScheduleFields,
    check_fields,
    check_timing,
    request_time,
    timing_request,
)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
# Optimistic tries of an update before it takes the row lock.
_OPTIMISTIC_UPDATES = 3
# What an update compares to decide whether next_run_time is computed again.
_TIMING = ("cron", "run_at", "timezone", "start_time", "end_time", "jitter", "enabled")
_SPEC = frozenset({"cron", "run_at"})


@dataclass(frozen=True)
class SchedulePage:
    schedules: list[Schedule]
    next_page_token: str
    total_size: int


@dataclass(frozen=True)
class EndpointView:
    endpoint: Endpoint
    unschedulable_reason: str


def parse_id(raw: str, name: str) -> uuid.UUID:
    parsed = validate_uuid(raw, name)
    if isinstance(parsed, FieldViolation):
        raise ValidationFailed([parsed])
    return parsed


async def _resolve_into(uow: UnitOfWork, ctx: InstallContext, checked: Checked) -> Endpoint | None:
    """The endpoint the checked selector names, or None with its violation added."""
    if checked.selector is None:
        return None
    eps = await uow.installs.endpoints(ctx.tenant_id, ctx.install_id, ctx.version_id)
    resolved = resolve_endpoint(checked.selector, eps, f"{PREFIX}endpoint")
    if isinstance(resolved, FieldViolation):
        checked.violations.append(resolved)
        return None
    return resolved


async def _current_endpoint(uow: UnitOfWork, ctx: InstallContext, s: Schedule) -> Schedule | None:
    """An enabled schedule must call an endpoint of the install's current version: one that an
    upgrade left behind while the schedule was disabled is refused until a new one is set. None
    when `ctx` proves older than the stored install (the caller reads it again and retries)."""
    eps = await uow.installs.endpoints(ctx.tenant_id, ctx.install_id, ctx.version_id)
    for e in eps:
        if (e.method, e.path) == (s.endpoint_method, s.endpoint_path):
            return replace(s, endpoint_id=e.id)
    if (await _fresh_context(uow, ctx)).version_id != ctx.version_id:
        return None
    raise ValidationFailed(
        [
            FieldViolation(
                f"{PREFIX}endpoint",
                "ENDPOINT_NOT_FOUND",
                f"endpoint {s.endpoint} is not part of the installed version; "
                "set another endpoint to enable the schedule",
            )
        ]
    )


def _request_uuid(request_id: str, checked: Checked) -> uuid.UUID | None:
    if not request_id.strip():
        return None
    parsed = validate_uuid(request_id, "request_id")
    return None if checked.add(parsed if isinstance(parsed, FieldViolation) else None) else parsed  # type: ignore[return-value]


def _new_schedule(
    ctx: InstallContext, fields: ScheduleFields, checked: Checked, endpoint: Endpoint, now: datetime
) -> Schedule:
    enabled = True if fields.enabled is None else fields.enabled
    schedule = Schedule(
        id=uuid.uuid4(),
        install_id=ctx.install_id,
        tenant_id=ctx.tenant_id,
        endpoint_id=endpoint.id,
        endpoint_method=endpoint.method,
        endpoint_path=endpoint.path,
        name=checked.name,
        cron=checked.cron.source if checked.cron is not None else "",
        timezone=checked.timezone,
        enabled=enabled,
        payload=fields.payload,
        next_run_time=None,
        last_run_time=None,
        last_run_status=None,
        last_error=None,
        create_time=now,
        update_time=now,
        revision=1,
        run_at=checked.run_at,
        start_time=checked.start_time,
        end_time=checked.end_time,
        jitter=checked.jitter,
        payload_wire=fields.payload_wire if fields.payload is not None else None,
    )
    return replace(schedule, next_run_time=next_run_of(schedule, now))


async def create_schedule(
    ctx: InstallContext,
    fields: ScheduleFields,
    request_id: str,
    *,
    uow_factory: UnitOfWorkFactory,
    policy: SchedulePolicy,
    clock: Clock,
) -> Schedule:
    checked = check_fields(fields, UPDATABLE_FIELDS - {"enabled"}, policy)
    request_uuid = _request_uuid(request_id, checked)
    now = clock()
    check_timing(
        checked, timing_request(fields, UPDATABLE_FIELDS, checked, None), now, check_run_at=True
    )
    # One statement writes: the create runs under the install's lock in the database. A second
    # try follows an upgrade the caller's install context had not seen yet.
    for _ in range(2):
        async with uow_factory(autocommit=True) as uow:
            attempt = replace(checked, violations=list(checked.violations))
            created = await _create(uow, ctx, fields, attempt, request_uuid, policy, now)
            if created is not None:
                await uow.commit()
                return created
            ctx = await _fresh_context(uow, ctx)
    raise AssertionError("the install changed version twice during one create")


async def _create(
    uow: UnitOfWork,
    ctx: InstallContext,
    fields: ScheduleFields,
    checked: Checked,
    request_uuid: uuid.UUID | None,
    policy: SchedulePolicy,
    now: datetime,
) -> Schedule | None:
    """The create's one step; None when the install's version moved on meanwhile."""
    # Resolving the endpoint reads the install's endpoints; its violation is reported together
    # with the others.
    endpoint = await _resolve_into(uow, ctx, checked)
    if checked.violations:
        raise ValidationFailed(checked.violations)
    assert endpoint is not None
    schedule = _new_schedule(ctx, fields, checked, endpoint, now)
    # The idempotency check, then the quota, then the name (the unique index): one step.
    outcome = await uow.schedules.create(
        schedule,
        policy.max_schedules_per_install,
        request_uuid,
        now - IDEMPOTENCY_WINDOW,
        ctx.version_id,
    )
    if outcome.stale_version:
        return None
    if outcome.earlier is not None:
        existing = await uow.schedules.get(
            ctx.tenant_id, ctx.install_id, outcome.earlier, for_update=False
        )
        if existing is None:
            raise ScheduleNotFound(str(outcome.earlier))
        return existing
    if outcome.created is None:
        raise QuotaExceeded(f"install:{ctx.install_id}", policy.max_schedules_per_install)
    return outcome.created


async def _fresh_context(uow: UnitOfWork, ctx: InstallContext) -> InstallContext:
    """The install's context as stored now (a cached one may predate an upgrade)."""
    fresh = await uow.installs.context(ctx.install_id)
    if fresh is None:
        raise InstallNotFound(str(ctx.install_id))
    return fresh


async def get_schedule(
    ctx: InstallContext, schedule_id: str, *, uow_factory: UnitOfWorkFactory, field: str = "id"
) -> Schedule:
    sid = parse_id(schedule_id, field)
    async with uow_factory(autocommit=True) as uow:
        found = await uow.schedules.get(ctx.tenant_id, ctx.install_id, sid, for_update=False)
    if found is None:
        raise ScheduleNotFound(str(sid))
    return found


def read_page_request(
    page_size: int,
    page_token: str,
    tokens: PageTokens,
    scope: str,
    violations: list[FieldViolation] | None = None,
) -> tuple[int, Position | None]:
    """Page size and keyset position of a listing; raises every violation (with `violations`
    already found by the caller) at once."""
    found = list(violations or [])
    size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
    if page_size < 0:
        found.append(FieldViolation("page_size", "PAGE_INVALID", "page_size must not be negative"))
    position: Position | None = None
    if page_token:
        raw = tokens.decode(scope, page_token)
        try:
            if raw is None or len(raw) != 2:
                raise ValueError(page_token)
            position = datetime.fromisoformat(raw[0]), uuid.UUID(raw[1])
        except ValueError:
            found.append(
                FieldViolation(
                    "page_token", "PAGE_INVALID", "page_token is not one this listing issued"
                )
            )
    if found:
        raise ValidationFailed(found)
    return size, position


async def list_schedules(
    ctx: InstallContext,
    page_size: int,
    page_token: str,
    *,
    uow_factory: UnitOfWorkFactory,
    tokens: PageTokens,
) -> SchedulePage:
    scope = f"schedules:{ctx.install_id}"
    size, after = read_page_request(page_size, page_token, tokens, scope)
    async with uow_factory(autocommit=True) as uow:
        rows, total = await uow.schedules.page_with_total(
            ctx.tenant_id, ctx.install_id, after, size + 1
        )
    next_token = ""
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        next_token = tokens.encode(scope, [last.create_time.isoformat(), str(last.id)])
    return SchedulePage(rows, next_token, total)


def _update_names(
    fields: ScheduleFields, mask: list[str] | None, violations: list[FieldViolation]
) -> frozenset[str]:
    """The fields an update changes: the mask's, or without one, those the request sets.
    `cron` and `run_at` are one choice: naming either sets both from the request."""
    names = _named(fields, mask, violations)
    return names | _SPEC if names & _SPEC else names


def _named(
    fields: ScheduleFields, mask: list[str] | None, violations: list[FieldViolation]
) -> frozenset[str]:
    if mask is None:
        return fields.present & UPDATABLE_FIELDS
    unknown = sorted(set(mask) - UPDATABLE_FIELDS)
    if unknown:
        violations.append(
            FieldViolation(
                "update_mask",
                "UPDATE_MASK_INVALID",
                f"cannot update {', '.join(unknown)}; allowed: "
                + ", ".join(sorted(UPDATABLE_FIELDS)),
            )
        )
    return frozenset(mask) & UPDATABLE_FIELDS


async def update_schedule(
    ctx: InstallContext,
    schedule_id: str,
    etag: str,
    fields: ScheduleFields,
    mask: list[str] | None,
    *,
    uow_factory: UnitOfWorkFactory,
    policy: SchedulePolicy,
    clock: Clock,
) -> Schedule:
    violations: list[FieldViolation] = []
    sid = validate_uuid(schedule_id, f"{PREFIX}id")
    if isinstance(sid, FieldViolation):
        violations.append(sid)
    names = _update_names(fields, mask, violations)
    # Optimistic first: read, then write only if the revision is still the one read (no
    # transaction, two statements). A lost race reads again; the last try holds the row lock.
    for attempt in range(_OPTIMISTIC_UPDATES + 1):
        locked = attempt == _OPTIMISTIC_UPDATES
        checked = check_fields(fields, names, policy)
        checked.violations[:0] = violations
        async with uow_factory(autocommit=not locked) as uow:
            endpoint = await _resolve_into(uow, ctx, checked)
            current = None
            if isinstance(sid, uuid.UUID):
                current = await uow.schedules.get(
                    ctx.tenant_id, ctx.install_id, sid, for_update=locked
                )
            if current is None and not checked.violations:
                raise ScheduleNotFound(str(sid))
            now = clock()
            if current is not None:
                _check_merged_timing(checked, fields, names, current, now)
            if checked.violations:
                raise ValidationFailed(checked.violations)
            assert current is not None
            if etag.strip() and etag.strip() != current.etag:
                raise EtagMismatch(
                    "the schedule changed since it was read; read it again and retry"
                )
            stored = await _write_update(uow, ctx, current, endpoint, checked, fields, names, now)
            if stored is not None:
                await uow.commit()
                return stored
            # Another change came first, or an upgrade the cached context had not seen.
            ctx = await _fresh_context(uow, ctx)
    raise AssertionError("the locked update found its row changed")


def _check_merged_timing(
    checked: Checked,
    fields: ScheduleFields,
    names: frozenset[str],
    current: Schedule,
    now: datetime,
) -> None:
    """The timing the update leaves, checked as a whole; run_at must lie ahead when it changes
    or when a one-time schedule is enabled again."""
    request = timing_request(fields, names, checked, current)
    enabled = bool(fields.enabled) if "enabled" in names else current.enabled
    run_at_changed = bool(names & {"cron", "run_at"}) and request.run_at != request_time(
        current.run_at
    )
    check_timing(
        checked,
        request,
        now,
        check_run_at=run_at_changed or (enabled and not current.enabled),
    )


async def _write_update(
    uow: UnitOfWork,
    ctx: InstallContext,
    current: Schedule,
    endpoint: Endpoint | None,
    checked: Checked,
    fields: ScheduleFields,
    names: frozenset[str],
    now: datetime,
) -> Schedule | None:
    """Write the merged schedule if the revision is still the one read; the schedule as stored
    (`current` when nothing changes), or None when another change came first."""
    merged = _merged(current, endpoint, checked, fields, names)
    updated = merged
    if merged.enabled and endpoint is None:
        on_current = await _current_endpoint(uow, ctx, merged)
        if on_current is None:
            return None
        updated = on_current
    if updated == current:
        return current
    timing = any(getattr(updated, n) != getattr(current, n) for n in _TIMING)
    if timing:
        updated = replace(updated, next_run_time=next_run_of(updated, now))
    updated = replace(updated, revision=current.revision + 1, update_time=now)
    return await uow.schedules.update_definition(
        updated, current.revision, timing=timing, version_id=ctx.version_id
    )


def _merged(
    current: Schedule,
    endpoint: Endpoint | None,
    checked: Checked,
    fields: ScheduleFields,
    names: frozenset[str],
) -> Schedule:
    """`current` with the fields the update names (the timing as check_timing left it)."""
    updated = replace(
        current,
        cron=checked.cron.source if checked.cron is not None else "",
        run_at=checked.run_at,
        start_time=checked.start_time,
        end_time=checked.end_time,
        jitter=checked.jitter,
    )
    if endpoint is not None:
        updated = replace(
            updated,
            endpoint_id=endpoint.id,
            endpoint_method=endpoint.method,
            endpoint_path=endpoint.path,
        )
    if "timezone" in names:
        updated = replace(updated, timezone=checked.timezone)
    if "name" in names:
        updated = replace(updated, name=checked.name)
    if "payload" in names:
        wire = fields.payload_wire if fields.payload is not None else None
        updated = replace(updated, payload=fields.payload, payload_wire=wire)
    if "enabled" in names:
        updated = replace(updated, enabled=bool(fields.enabled))
    return updated


def revision_in_etag(etag: str, schedule_id: uuid.UUID) -> int | None:
    """The revision an etag of this schedule names (Schedule.etag's form); None when the text
    is no etag of this schedule, so that it matches no state of it."""
    revision, _, tag = etag.partition("-")
    if tag != schedule_id.hex[:8] or not (revision.isascii() and revision.isdigit()):
        return None
    value = int(revision)
    # Revisions are 32-bit integers in the database; a larger number matches none.
    return value if len(revision) <= 10 and value < 2**31 else None


async def delete_schedule(
    ctx: InstallContext, schedule_id: str, etag: str, *, uow_factory: UnitOfWorkFactory
) -> None:
    sid = parse_id(schedule_id, "id")
    wanted = etag.strip()
    revision = revision_in_etag(wanted, sid) if wanted else None
    # One conditional statement; only a refusal reads why (gone, or changed since read).
    async with uow_factory(autocommit=True) as uow:
        if (not wanted or revision is not None) and await uow.schedules.delete(
            ctx.tenant_id, ctx.install_id, sid, revision=revision
        ):
            await uow.commit()
            return
        current = await uow.schedules.get(ctx.tenant_id, ctx.install_id, sid, for_update=False)
    if current is None:
        raise ScheduleNotFound(str(sid))
    raise EtagMismatch("the schedule changed since it was read; read it again and retry")


async def get_endpoints(
    ctx: InstallContext, *, uow_factory: UnitOfWorkFactory
) -> list[EndpointView]:
    async with uow_factory(autocommit=True) as uow:
        eps = await uow.installs.endpoints(ctx.tenant_id, ctx.install_id, ctx.version_id)
    return [EndpointView(e, unschedulable_reason(e.method, e.path)) for e in eps]
