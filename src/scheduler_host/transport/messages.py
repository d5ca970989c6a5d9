"""Protobuf messages ↔ plain values of the domain and the use cases."""

from __future__ import annotations

import dataclasses
import math
import operator
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from schedulerhost.v1 import schedule_pb2, scheduler_admin_pb2

from scheduler_host.domain.errors import FieldViolation
from scheduler_host.domain.install import Install
from scheduler_host.domain.runs import RunState, RunTrigger, ScheduleRun
from scheduler_host.domain.schedule import Json, Schedule
from scheduler_host.domain.timing import RequestTime
from scheduler_host.service.installs import EndpointSpecInput, InstallInput
from scheduler_host.service.preview import start_time_violation
from scheduler_host.service.runs import RunPage
from scheduler_host.service.schedule_input import ScheduleFields
from scheduler_host.service.schedules import EndpointView, SchedulePage

_LAST_RUN_STATUS = {
    "success": schedule_pb2.RUN_STATUS_SUCCESS,
    "error": schedule_pb2.RUN_STATUS_ERROR,
    "skipped": schedule_pb2.RUN_STATUS_SKIPPED,
}
_RUN_STATE = {
    RunState.PENDING: schedule_pb2.RUN_STATE_PENDING,
    RunState.RUNNING: schedule_pb2.RUN_STATE_RUNNING,
    RunState.SUCCESS: schedule_pb2.RUN_STATE_SUCCESS,
    RunState.ERROR: schedule_pb2.RUN_STATE_ERROR,
    RunState.SKIPPED: schedule_pb2.RUN_STATE_SKIPPED,
}
_RUN_TRIGGER = {
    RunTrigger.SCHEDULE: schedule_pb2.RUN_TRIGGER_SCHEDULE,
    RunTrigger.MANUAL: schedule_pb2.RUN_TRIGGER_MANUAL,
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_time(field: timestamp_pb2.Timestamp, value: datetime) -> None:
    """Fill a Timestamp from an aware datetime with integer arithmetic (exact, and several
    times cheaper than Timestamp.FromDatetime, which matters for a page of 50 schedules)."""
    delta = value - _EPOCH
    field.seconds = delta.days * 86_400 + delta.seconds
    field.nanos = delta.microseconds * 1_000


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    set_time(ts, value)
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def start_time_of(ts: timestamp_pb2.Timestamp) -> datetime | FieldViolation:
    """A caller's start_time, or its violation: seconds outside years 1-9999 or nanos outside
    0-999,999,999 do not make a datetime (ToDatetime raised, which answered INTERNAL)."""
    try:
        return from_timestamp(ts)
    except (ValueError, OverflowError):
        return start_time_violation(
            "start_time must be between 0001-01-01 and 9999-12-31 with nanos below one second"
        )


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


# Integral doubles below this magnitude are integers exactly, and are given back as int.
_EXACT_INTEGERS = 2**53


def _json_of(value: struct_pb2.Value) -> Json:
    """The JSON a Value holds, walked directly (json_format.MessageToDict went through descriptors
    per node and cost several times more); an unset Value is null, as in MessageToDict.

    google.protobuf.Value carries every number as a double; integers get back their form. A NaN
    or infinity raises ValueError: JSON has no such numbers."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {k: _json_of(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_json_of(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise ValueError("a number is NaN or infinite")
        return int(number) if number.is_integer() and abs(number) < _EXACT_INTEGERS else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def payload_from_value(
    value: struct_pb2.Value, field: str
) -> tuple[Json | None, FieldViolation | None]:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None, None
    try:
        return _json_of(value), None
    except ValueError:
        return None, FieldViolation(field, "PAYLOAD_INVALID", "payload is not valid JSON")


def set_payload(field: struct_pb2.Value, payload: Json) -> None:
    """Fill a Value from decoded JSON directly (a JSON text round trip cost five times more)."""
    if isinstance(payload, dict):
        field.struct_value.SetInParent()  # an empty object is still an object, not unset
        field.struct_value.update(payload)
    elif isinstance(payload, list):
        field.list_value.SetInParent()
        field.list_value.extend(payload)
    elif payload is None:
        field.null_value = struct_pb2.NULL_VALUE
    elif isinstance(payload, bool):
        field.bool_value = payload
    elif isinstance(payload, (int, float)):
        field.number_value = payload
    else:
        field.string_value = payload


def schedule_fields(msg: schedule_pb2.Schedule, field_prefix: str = "schedule.") -> ScheduleFields:
    """Input fields of a Schedule message; output-only fields are ignored, never refused."""
    endpoint = msg.endpoint.strip()
    if not endpoint and (msg.endpoint_method.strip() or msg.endpoint_path.strip()):
        endpoint = f"{msg.endpoint_method.strip()} {msg.endpoint_path.strip()}".strip()
    payload, payload_violation = payload_from_value(msg.payload, f"{field_prefix}payload")
    # The caller's own encoding, kept beside the payload so reads send it back without
    # rebuilding a Value from JSON in Python.
    wire = msg.payload.SerializeToString(deterministic=True) if payload is not None else None
    present = {
        name
        for name, is_set in (
            ("endpoint", bool(endpoint)),
            ("cron", bool(msg.cron.strip())),
            ("timezone", bool(msg.timezone.strip())),
            ("name", bool(msg.name.strip())),
            ("enabled", msg.HasField("enabled")),
            ("payload", msg.HasField("payload")),
            ("run_at", msg.HasField("run_at")),
            ("start_time", msg.HasField("start_time")),
            ("end_time", msg.HasField("end_time")),
            ("jitter", msg.HasField("jitter")),
        )
        if is_set
    }
    return ScheduleFields(
        endpoint=endpoint,
        name=msg.name,
        cron=msg.cron,
        timezone=msg.timezone,
        enabled=msg.enabled if msg.HasField("enabled") else None,
        payload=payload,
        payload_wire=wire,
        payload_violation=payload_violation,
        run_at=_request_time(msg, "run_at"),
        start_time=_request_time(msg, "start_time"),
        end_time=_request_time(msg, "end_time"),
        jitter=_request_time(msg, "jitter"),
        present=frozenset(present),
    )


def _request_time(msg: schedule_pb2.Schedule, name: str) -> RequestTime | None:
    """A Timestamp or Duration field as the request carried it; None when unset."""
    if not msg.HasField(name):  # type: ignore[arg-type]
        return None
    value = getattr(msg, name)
    return RequestTime(value.seconds, value.nanos)


# The schedule's times that are unset (None) on some schedules; the message leaves them unset too.
_OPTIONAL_TIMES = ("next_run_time", "last_run_time", "run_at", "start_time", "end_time")

# Every value of a Schedule, with the payload as its wire encoding: equal keys make equal
# messages. A schedule whose payload has no wire encoding is not kept.
_ENCODED_BY = operator.attrgetter(
    *(f.name for f in dataclasses.fields(Schedule) if f.name != "payload")
)
_ENCODED_MAX = 4096


class _EncodedSchedules:
    """Schedule messages already encoded, by the values they were built from: the same schedules
    are read again and again (pages, polling), and parsing the encoding in C costs a third of
    setting some twenty fields from Python. Bounded; the oldest entry goes first."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._by_values: dict[tuple[Any, ...], bytes] = {}

    def fill(self, msg: schedule_pb2.Schedule, s: Schedule) -> None:
        if s.payload_wire is None and s.payload is not None:
            _set_schedule(msg, s)
            return
        key = _ENCODED_BY(s)
        encoded = self._by_values.get(key)
        if encoded is None:
            _set_schedule(msg, s)
            if len(self._by_values) >= self._max:
                del self._by_values[next(iter(self._by_values))]
            self._by_values[key] = msg.SerializeToString()
        else:
            msg.MergeFromString(encoded)


_encoded = _EncodedSchedules(_ENCODED_MAX)


def fill_schedule(msg: schedule_pb2.Schedule, s: Schedule) -> schedule_pb2.Schedule:
    """Write a schedule into the empty `msg` (typically a field of the response): filling in
    place avoids building a message apart and copying it in, which a page of 50 felt."""
    _encoded.fill(msg, s)
    return msg


def _set_schedule(msg: schedule_pb2.Schedule, s: Schedule) -> None:
    msg.id = str(s.id)
    msg.endpoint = s.endpoint
    msg.endpoint_method = s.endpoint_method
    msg.endpoint_path = s.endpoint_path
    msg.endpoint_id = str(s.endpoint_id)
    msg.name = s.name or ""
    msg.cron = s.cron
    msg.timezone = s.timezone
    msg.enabled = s.enabled
    msg.last_run_status = _LAST_RUN_STATUS.get(
        s.last_run_status or "", schedule_pb2.RUN_STATUS_UNSPECIFIED
    )
    msg.last_error = s.last_error or ""
    msg.etag = s.etag
    set_time(msg.create_time, s.create_time)
    set_time(msg.update_time, s.update_time)
    if s.payload_wire is not None:
        msg.payload.MergeFromString(s.payload_wire)  # parsed in C
    elif s.payload is not None:
        set_payload(msg.payload, s.payload)
    for name in _OPTIONAL_TIMES:
        value = getattr(s, name)
        if value is not None:
            set_time(getattr(msg, name), value)
    if s.jitter:
        msg.jitter.FromTimedelta(s.jitter)


class _HasSchedule(Protocol):
    @property
    def schedule(self) -> schedule_pb2.Schedule: ...


class _HasSchedulePage(Protocol):
    next_page_token: str
    total_size: int

    @property
    def schedules(self) -> RepeatedCompositeFieldContainer[schedule_pb2.Schedule]: ...


OneSchedule = TypeVar("OneSchedule", bound=_HasSchedule)
ManySchedules = TypeVar("ManySchedules", bound=_HasSchedulePage)


def with_schedule(response: OneSchedule, s: Schedule) -> OneSchedule:
    """A response whose `schedule` field is `s`."""
    fill_schedule(response.schedule, s)
    return response


def with_schedule_page(response: ManySchedules, page: SchedulePage) -> ManySchedules:
    """A list response holding one page of schedules and where the next page starts."""
    response.next_page_token = page.next_page_token
    response.total_size = page.total_size
    add = response.schedules.add
    for s in page.schedules:
        fill_schedule(add(), s)
    return response


def endpoint_message(view: EndpointView) -> schedule_pb2.Endpoint:
    e = view.endpoint
    return schedule_pb2.Endpoint(
        id=str(e.id),
        method=e.method,
        path=e.path,
        handler=e.handler,
        schedulable=not view.unschedulable_reason,
        unschedulable_reason=view.unschedulable_reason,
    )


def run_message(run: ScheduleRun) -> schedule_pb2.ScheduleRun:
    msg = schedule_pb2.ScheduleRun(
        id=str(run.id),
        schedule_id=str(run.schedule_id),
        trigger=_RUN_TRIGGER[run.trigger],
        scheduled_time=timestamp(run.scheduled_time),
        status=_RUN_STATE[run.status],
        attempt=run.attempt,
        error=run.error or "",
    )
    if run.start_time is not None:
        msg.start_time.CopyFrom(timestamp(run.start_time))
        msg.lateness.CopyFrom(duration((run.start_time - run.scheduled_time).total_seconds()))
    if run.finish_time is not None:
        msg.finish_time.CopyFrom(timestamp(run.finish_time))
    return msg


class _HasRunPage(Protocol):
    next_page_token: str

    @property
    def runs(self) -> RepeatedCompositeFieldContainer[schedule_pb2.ScheduleRun]: ...


ManyRuns = TypeVar("ManyRuns", bound=_HasRunPage)


def with_run_page(response: ManyRuns, page: RunPage) -> ManyRuns:
    """A list response holding one page of runs and where the next page starts."""
    response.runs.extend(run_message(r) for r in page.runs)
    response.next_page_token = page.next_page_token
    return response


def install_input(msg: scheduler_admin_pb2.Install) -> InstallInput:
    return InstallInput(
        install_id=msg.install_id,
        tenant_id=msg.tenant_id,
        registry_id=msg.registry_id,
        version_id=msg.version_id,
        content_hash=msg.content_hash,
        enabled=msg.enabled if msg.HasField("enabled") else None,
        granted_capabilities=tuple(msg.granted_capabilities),
        endpoints=tuple(EndpointSpecInput(e.method, e.path, e.handler) for e in msg.endpoints),
    )


def install_message(install: Install) -> scheduler_admin_pb2.Install:
    return scheduler_admin_pb2.Install(
        install_id=str(install.install_id),
        tenant_id=install.tenant_id,
        registry_id=install.registry_id,
        version_id=install.version_id,
        content_hash=install.content_hash,
        enabled=install.enabled,
        granted_capabilities=list(install.granted_capabilities),
        endpoints=[
            scheduler_admin_pb2.EndpointSpec(method=e.method, path=e.path, handler=e.handler)
            for e in install.endpoints
        ],
        create_time=timestamp(install.create_time),
        update_time=timestamp(install.update_time),
    )
