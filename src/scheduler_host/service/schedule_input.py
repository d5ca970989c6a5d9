"""A caller's schedule fields, checked: every field rule of the domain applied at once, one
violation per field, for a create, an update (on the merged result) or a preview."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from scheduler_host.domain.cron import CronError, CronExpression, parse_cron, validate_cron
from scheduler_host.domain.endpoints import Selector, parse_selector
from scheduler_host.domain.errors import FieldViolation
from scheduler_host.domain.schedule import (
    Json,
    Schedule,
    validate_name,
    validate_payload,
    validate_timezone,
)
from scheduler_host.domain.timing import (
    SCHEDULE_SPEC_INVALID,
    RequestTime,
    TimingRequest,
    instant_of,
    jitter_of,
    timing_violations,
)
from scheduler_host.service.policies import SchedulePolicy

# Fields that decide when a schedule fires; naming `cron` or `run_at` sets both (they are one
# choice: a recurring or a one-time schedule).
TIMING_FIELDS = frozenset({"cron", "run_at", "start_time", "end_time", "jitter"})
UPDATABLE_FIELDS = (
    frozenset({"endpoint", "cron", "timezone", "enabled", "name", "payload"}) | TIMING_FIELDS
)
PREFIX = "schedule."
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    # Timestamps and the jitter as the request carried them (None when unset).
    run_at: RequestTime | None = None
    start_time: RequestTime | None = None
    end_time: RequestTime | None = None
    jitter: RequestTime | None = None
    present: frozenset[str] = field(default_factory=frozenset)


@dataclass
class Checked:
    """Validated values of the fields that were checked; violations collected on the way."""

    violations: list[FieldViolation] = field(default_factory=list)
    cron: CronExpression | None = None
    timezone: str = "UTC"
    name: str | None = None
    selector: Selector | None = None
    run_at: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    jitter: timedelta = timedelta(0)

    def add(self, violation: FieldViolation | None) -> bool:
        if violation is not None:
            self.violations.append(violation)
            return True
        return False


def check_fields(
    fields: ScheduleFields, names: frozenset[str], policy: SchedulePolicy, prefix: str = PREFIX
) -> Checked:
    """The rules of the fields in `names` other than the timing ones (see check_timing)."""
    out = Checked()
    if "cron" in names and fields.cron.strip():
        try:
            out.cron = validate_cron(fields.cron, policy.min_interval_seconds)
        except CronError as exc:
            out.add(FieldViolation(f"{prefix}cron", exc.reason, str(exc)))
    if "timezone" in names:
        tz = validate_timezone(fields.timezone, f"{prefix}timezone")
        if not (isinstance(tz, FieldViolation) and out.add(tz)):
            out.timezone = str(tz)
    if "name" in names:
        name = validate_name(fields.name, f"{prefix}name")
        if not (isinstance(name, FieldViolation) and out.add(name)):
            out.name = name if isinstance(name, str) else None
    if "payload" in names and not out.add(fields.payload_violation):
        out.add(validate_payload(fields.payload, f"{prefix}payload"))
    if "endpoint" in names:
        selector = parse_selector(fields.endpoint, f"{prefix}endpoint")
        if not (isinstance(selector, FieldViolation) and out.add(selector)):
            out.selector = selector if isinstance(selector, Selector) else None
    return out


def request_time(value: datetime | None) -> RequestTime | None:
    """A stored instant as a request would carry it."""
    if value is None:
        return None
    delta = value - _EPOCH
    return RequestTime(delta.days * 86_400 + delta.seconds, delta.microseconds * 1000)


def request_jitter(value: timedelta) -> RequestTime | None:
    return RequestTime(value // timedelta(seconds=1), value.microseconds * 1000) if value else None


def check_timing(
    out: Checked, request: TimingRequest, now: datetime, *, check_run_at: bool
) -> None:
    """The rules on the timing of the whole schedule; the values when they pass. A
    schedule with both or neither of cron and run_at is reported once, on `cron`."""
    found = timing_violations(PREFIX, request, now, check_run_at=check_run_at)
    spec_refused = any(v.reason == SCHEDULE_SPEC_INVALID for v in found)
    if spec_refused:
        out.violations = [v for v in out.violations if v.field != f"{PREFIX}cron"]
    out.violations.extend(found)
    out.cron = request.cron
    out.run_at = instant_of(request.run_at) if request.run_at is not None else None
    out.start_time = instant_of(request.start_time) if request.start_time is not None else None
    out.end_time = instant_of(request.end_time) if request.end_time is not None else None
    if not any(v.field == f"{PREFIX}jitter" for v in found):
        out.jitter = jitter_of(request.jitter)


def timing_request(
    fields: ScheduleFields, names: frozenset[str], checked: Checked, current: Schedule | None
) -> TimingRequest:
    """The timing a create (`current` None) or an update leaves the schedule with: what `names`
    sets from the request, the rest as stored."""

    def chosen(name: str, stored: RequestTime | None) -> RequestTime | None:
        given: RequestTime | None = getattr(fields, name)
        return given if current is None or name in names else stored

    sets_spec = current is None or bool(names & {"cron", "run_at"})
    if sets_spec:
        cron_given, cron = bool(fields.cron.strip()), checked.cron
        run_at = fields.run_at
    else:
        assert current is not None
        cron_given = bool(current.cron)
        cron = parse_cron(current.cron) if current.cron else None
        run_at = request_time(current.run_at)
    return TimingRequest(
        cron_given=cron_given,
        cron=cron,
        run_at=run_at,
        start_time=chosen("start_time", request_time(current.start_time if current else None)),
        end_time=chosen("end_time", request_time(current.end_time if current else None)),
        jitter=chosen("jitter", request_jitter(current.jitter) if current else None),
    )
