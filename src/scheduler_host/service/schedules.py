"""SchedulerHost use cases: create, get, list, update, delete, endpoints and preview.

Each takes the install context of the caller and a unit-of-work factory, validates with the domain
(every violation at once) and runs in one transaction.
"""

from __future__ import annotations

import uuid
import zoneinfo
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from scheduler_host.domain.cron import CronError, CronExpression, shortest_interval, validate_cron
from scheduler_host.domain.endpoints import (
    Endpoint,
    Selector,
    parse_selector,
    resolve_endpoint,
    unschedulable_reason,
)
from scheduler_host.domain.errors import (
    EtagMismatch,
    FieldViolation,
    QuotaExceeded,
    ScheduleNotFound,
    ValidationFailed,
)
from scheduler_host.domain.install import InstallContext
from scheduler_host.domain.occurrences import next_occurrence, next_occurrences
from scheduler_host.domain.schedule import (
    Json,
    Schedule,
    validate_name,
    validate_payload,
    validate_timezone,
    validate_uuid,
)
from scheduler_host.service.policies import SchedulePolicy
from scheduler_host.service.ports import Clock, PageTokens, UnitOfWork, UnitOfWorkFactory

IDEMPOTENCY_WINDOW = timedelta(hours=24)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
DEFAULT_PREVIEW_COUNT = 10
MAX_PREVIEW_COUNT = 100
UPDATABLE_FIELDS = frozenset({"endpoint", "cron", "timezone", "enabled", "name", "payload"})
# Optimistic tries of an update before it takes the row lock.
_OPTIMISTIC_UPDATES = 3


@dataclass(frozen=True)
class ScheduleFields:
    """The caller's input for a schedule; `present` names the fields the caller set."""

    endpoint: str = ""
    name: str = ""
    cron: str = ""
    timezone: str = ""
    enabled: bool | None = None
    payload: Json | None = None
    # The payload as the caller encoded it on the wire, stored beside it for reads.
    payload_wire: bytes | None = None
    payload_violation: FieldViolation | None = None  # the transport could not read it as JSON
    present: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class SchedulePage:
    schedules: list[Schedule]
    next_page_token: str
    total_size: int


@dataclass(frozen=True)
class EndpointView:
    endpoint: Endpoint
    unschedulable_reason: str


@dataclass(frozen=True)
class Preview:
    run_times: list[datetime]
    min_interval: timedelta


@dataclass
class _Checked:
    """Validated values of the fields that were checked; violations collected on the way."""

    violations: list[FieldViolation] = field(default_factory=list)
    cron: CronExpression | None = None
    timezone: str = "UTC"
    name: str | None = None
    selector: Selector | None = None


def _check(
    fields: ScheduleFields, names: frozenset[str], policy: SchedulePolicy, prefix: str
) -> _Checked:
    out = _Checked()

    def bad(violation: FieldViolation | None) -> bool:
        if violation is not None:
            out.violations.append(violation)
            return True
        return False

    if "cron" in names:
        try:
            out.cron = validate_cron(fields.cron, policy.min_interval_seconds)
        except CronError as exc:
            bad(FieldViolation(f"{prefix}cron", exc.reason, str(exc)))
    if "timezone" in names:
        tz = validate_timezone(fields.timezone, f"{prefix}timezone")
        if not (isinstance(tz, FieldViolation) and bad(tz)):
            out.timezone = str(tz)
    if "name" in names:
        name = validate_name(fields.name, f"{prefix}name")
        if not (isinstance(name, FieldViolation) and bad(name)):
            out.name = name if isinstance(name, str) else None
    if "payload" in names and not bad(fields.payload_violation):
        bad(validate_payload(fields.payload, f"{prefix}payload"))
    if "endpoint" in names:
        selector = parse_selector(fields.endpoint, f"{prefix}endpoint")
        if not (isinstance(selector, FieldViolation) and bad(selector)):
            out.selector = selector if isinstance(selector, Selector) else None
    return out


def _next_run(cron: str, timezone: str, enabled: bool, now: datetime) -> datetime | None:
    if not enabled:
        return None
    # Stored expressions were validated when written; the interval rule is not re-applied here.
    expr = validate_cron(cron, 0)
    return next_occurrence(expr, zoneinfo.ZoneInfo(timezone), now)


def _parse_id(raw: str, name: str) -> uuid.UUID:
    parsed = validate_uuid(raw, name)
    if isinstance(parsed, FieldViolation):
        raise ValidationFailed([parsed])
    return parsed


async def _resolve_into(uow: UnitOfWork, ctx: InstallContext, checked: _Checked) -> Endpoint | None:
    """The endpoint the checked selector names, or None with its violation added."""
    if checked.selector is None:
        return None
    eps = await uow.installs.endpoints(ctx.tenant_id, ctx.install_id, ctx.version_id)
    resolved = resolve_endpoint(checked.selector, eps, "schedule.endpoint")
    if isinstance(resolved, FieldViolation):
        checked.violations.append(resolved)
        return None
    return resolved


async def _current_endpoint(uow: UnitOfWork, ctx: InstallContext, s: Schedule) -> Schedule:
    """An enabled schedule must call an endpoint of the install's current version: one that an
    upgrade left behind while the schedule was disabled is refused until a new one is set."""
    eps = await uow.installs.endpoints(ctx.tenant_id, ctx.install_id, ctx.version_id)
    for e in eps:
        if (e.method, e.path) == (s.endpoint_method, s.endpoint_path):
            return replace(s, endpoint_id=e.id)
    raise ValidationFailed(
        [
            FieldViolation(
                "schedule.endpoint",
                "ENDPOINT_NOT_FOUND",
                f"endpoint {s.endpoint} is not part of the installed version; "
                "set another endpoint to enable the schedule",
            )
        ]
    )


async def create_schedule(
    ctx: InstallContext,
    fields: ScheduleFields,
    request_id: str,
    *,
    uow_factory: UnitOfWorkFactory,
    policy: SchedulePolicy,
    clock: Clock,
) -> Schedule:
    checked = _check(fields, UPDATABLE_FIELDS - {"enabled"}, policy, "schedule.")
    request_uuid: uuid.UUID | None = None
    if request_id.strip():
        parsed = validate_uuid(request_id, "request_id")
        if isinstance(parsed, FieldViolation):
            checked.violations.append(parsed)
        else:
            request_uuid = parsed
    # One statement writes: the create runs under the install's lock in the database.
    async with uow_factory(autocommit=True) as uow:
        # Resolving the endpoint reads the install's endpoints; its violation is reported together
        # with the others.
        endpoint = await _resolve_into(uow, ctx, checked)
        if checked.violations:
            raise ValidationFailed(checked.violations)
        assert checked.cron is not None and endpoint is not None
        now = clock()
        enabled = True if fields.enabled is None else fields.enabled
        schedule = Schedule(
            id=uuid.uuid4(),
            install_id=ctx.install_id,
            tenant_id=ctx.tenant_id,
            endpoint_id=endpoint.id,
            endpoint_method=endpoint.method,
            endpoint_path=endpoint.path,
            name=checked.name,
            cron=checked.cron.source,
            timezone=checked.timezone,
            enabled=enabled,
            payload=fields.payload,
            next_run_time=_next_run(checked.cron.source, checked.timezone, enabled, now),
            last_run_time=None,
            last_run_status=None,
            last_error=None,
            create_time=now,
            update_time=now,
            revision=1,
            payload_wire=fields.payload_wire if fields.payload is not None else None,
        )
        # The idempotency check, then the quota, then the name (the unique index): one step.
        outcome = await uow.schedules.create(
            schedule, policy.max_schedules_per_install, request_uuid, now - IDEMPOTENCY_WINDOW
        )
        if outcome.earlier is not None:
            existing = await uow.schedules.get(
                ctx.tenant_id, ctx.install_id, outcome.earlier, for_update=False
            )
            if existing is None:
                raise ScheduleNotFound(str(outcome.earlier))
            return existing
        if outcome.created is None:
            raise QuotaExceeded(f"install:{ctx.install_id}", policy.max_schedules_per_install)
        await uow.commit()
    return outcome.created


async def get_schedule(
    ctx: InstallContext, schedule_id: str, *, uow_factory: UnitOfWorkFactory, field: str = "id"
) -> Schedule:
    sid = _parse_id(schedule_id, field)
    async with uow_factory(autocommit=True) as uow:
        found = await uow.schedules.get(ctx.tenant_id, ctx.install_id, sid, for_update=False)
    if found is None:
        raise ScheduleNotFound(str(sid))
    return found


Position = tuple[datetime, uuid.UUID]


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
    sid = validate_uuid(schedule_id, "schedule.id")
    if isinstance(sid, FieldViolation):
        violations.append(sid)
    if mask is None:
        names = fields.present & UPDATABLE_FIELDS
    else:
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
        names = frozenset(mask) & UPDATABLE_FIELDS
    checked = _check(fields, names, policy, "schedule.")
    checked.violations[:0] = violations
    # Optimistic first: read, then write only if the revision is still the one read (no
    # transaction, two statements). A lost race reads again; the last try holds the row lock.
    for attempt in range(_OPTIMISTIC_UPDATES + 1):
        locked = attempt == _OPTIMISTIC_UPDATES
        async with uow_factory(autocommit=not locked) as uow:
            endpoint = await _resolve_into(uow, ctx, checked)
            if checked.violations:
                raise ValidationFailed(checked.violations)
            assert isinstance(sid, uuid.UUID)
            current = await uow.schedules.get(ctx.tenant_id, ctx.install_id, sid, for_update=locked)
            if current is None:
                raise ScheduleNotFound(str(sid))
            if etag.strip() and etag.strip() != current.etag:
                raise EtagMismatch(
                    "the schedule changed since it was read; read it again and retry"
                )
            updated = _merged(current, endpoint, checked, fields, names)
            if updated.enabled and endpoint is None:
                updated = await _current_endpoint(uow, ctx, updated)
            if updated == current:
                return current
            now = clock()
            timing = (updated.cron, updated.timezone, updated.enabled) != (
                current.cron,
                current.timezone,
                current.enabled,
            )
            if timing:
                updated = replace(
                    updated,
                    next_run_time=_next_run(updated.cron, updated.timezone, updated.enabled, now),
                )
            updated = replace(updated, revision=current.revision + 1, update_time=now)
            stored = await uow.schedules.update_definition(updated, current.revision, timing=timing)
            if stored is not None:
                await uow.commit()
                return stored
    raise AssertionError("the locked update found its row changed")


def _merged(
    current: Schedule,
    endpoint: Endpoint | None,
    checked: _Checked,
    fields: ScheduleFields,
    names: frozenset[str],
) -> Schedule:
    """`current` with the fields the update names."""
    updated = current
    if endpoint is not None:
        updated = replace(
            updated,
            endpoint_id=endpoint.id,
            endpoint_method=endpoint.method,
            endpoint_path=endpoint.path,
        )
    if "cron" in names:
        assert checked.cron is not None
        updated = replace(updated, cron=checked.cron.source)
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
    sid = _parse_id(schedule_id, "id")
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


START_TIME_INVALID = "START_TIME_INVALID"


def start_time_violation(description: str) -> FieldViolation:
    return FieldViolation("start_time", START_TIME_INVALID, description)


def preview_schedule(
    cron: str,
    timezone: str,
    count: int,
    start_time: datetime | FieldViolation | None,
    *,
    policy: SchedulePolicy,
    clock: Clock,
) -> Preview:
    """`start_time` is a FieldViolation when the transport could not read it as a time."""
    fields = ScheduleFields(cron=cron, timezone=timezone)
    checked = _check(fields, frozenset({"cron", "timezone"}), policy, "")
    if count < 0:
        checked.violations.append(
            FieldViolation("count", "COUNT_INVALID", "count must not be negative")
        )
    if isinstance(start_time, FieldViolation):
        checked.violations.append(start_time)
    if checked.violations:
        raise ValidationFailed(checked.violations)
    assert checked.cron is not None
    n = DEFAULT_PREVIEW_COUNT if count == 0 else min(count, MAX_PREVIEW_COUNT)
    start = start_time if isinstance(start_time, datetime) else clock()
    try:
        times = next_occurrences(checked.cron, zoneinfo.ZoneInfo(checked.timezone), start, n)
    except OverflowError:
        # A start at the very edge of the calendar (year 1) leaves no room to compute in: a
        # caller's bad value, not a server failure (it answered INTERNAL before).
        raise ValidationFailed(
            [start_time_violation("start_time is too close to the first representable date")]
        ) from None
    return Preview(times, shortest_interval(checked.cron))
