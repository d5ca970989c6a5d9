"""When a schedule fires: one-time runs, time bounds and jitter, on top of cron.

This module owns the fire instants of a schedule and the rules for its timing fields. Every
replica, `next_run_time` and `PreviewSchedule` take their instants from `fires_after` /
`next_fire`, so they agree to the microsecond.

**Nominal occurrences.** A cron schedule's nominal occurrences N_1 < N_2 < ... are those of
`occurrences.next_occurrences` (Debian cron's daylight-saving policy); a one-time schedule has
the single nominal occurrence `run_at`.

**Jitter offset.** With a jitter of J whole milliseconds (J > 0), the offset of a nominal
occurrence N of the schedule with id S is

    offset(S, N) = U mod J milliseconds, where
    U = the first 8 bytes, read as a big-endian unsigned integer, of
        SHA-256(S's 16 bytes in RFC 4122 order || M as 8 bytes big-endian two's complement),
    M = the whole microseconds from 1970-01-01T00:00:00Z to N (negative before 1970).

With no jitter the offset is 0. The offset is in [0, J) and whole milliseconds.

**Fire instants.** A cron schedule's k-th nominal occurrence fires at

    F_k = N_k + min(offset(S, N_k), N_{k+1} - N_k - 1 ms)

(no clamp when N_{k+1} does not exist). Validation keeps the jitter at most half the shortest
interval of the expression, so the clamp only bites where daylight saving brings two
occurrences closer than that (`5 2,3 * * *` in America/New_York on 2026-03-08: the skipped
02:05 runs at 03:00 EDT, 03:05 follows five minutes later). It keeps every fire before the next
nominal occurrence, so fire instants strictly increase, and the fire after fire F_k is F_{k+1}:
the fire of the first nominal occurrence after F_k. A one-time schedule fires at
run_at + offset(S, run_at).

**Bounds** apply to fire instants: none before `start_time`, none after `end_time` (inclusive
bounds). Past `end_time`, or once a one-time schedule's fire has passed, there is no next fire.

**Cost.** With a jitter, `next_fire` after one of the schedule's fires is one search for three
nominal occurrences plus three hashes: median 18 µs for `0 0 29 2 *` in America/New_York (a
plain `next_occurrence`: 6 µs) and 21 µs for `*/5 * * * *` in Australia/Lord_Howe (15 µs), from
`python -m bench.occurrence_speed` on the quiet 2-core development machine.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, TypedDict
from zoneinfo import ZoneInfo

from scheduler_host.domain.cron import CronExpression, parse_cron, shortest_interval
from scheduler_host.domain.errors import FieldViolation
from scheduler_host.domain.occurrences import next_occurrences
from scheduler_host.domain.schedule import Schedule

if TYPE_CHECKING:
    from typing_extensions import Unpack  # in typing from Python 3.12

RUN_AT_INVALID = "RUN_AT_INVALID"
SCHEDULE_SPEC_INVALID = "SCHEDULE_SPEC_INVALID"
TIME_BOUNDS_INVALID = "TIME_BOUNDS_INVALID"
JITTER_INVALID = "JITTER_INVALID"

MAX_JITTER = timedelta(hours=1)
MAX_RUN_AT_AHEAD = timedelta(days=366)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MILLISECOND = timedelta(milliseconds=1)
_NANOS_PER_SECOND = 1_000_000_000
_NANOS_PER_MILLISECOND = 1_000_000
# The instants a datetime holds (and a protobuf Timestamp may carry): years 1 to 9999.
_FIRST_SECOND = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)
_LAST_SECOND = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)
_UTC_ZONE = ZoneInfo("UTC")

# refuse(field name without prefix, reason, description): keeps the first violation of a field.
_Refuse = Callable[[str, str, str], None]


class Bounds(TypedDict, total=False):
    """The optional fields of a Timing, as `recurring` and `one_time` take them by name; those
    left out take Timing's defaults."""

    start_time: datetime | None
    end_time: datetime | None
    jitter: timedelta


@dataclass(frozen=True)
class Timing:
    """What decides a schedule's fire instants: a cron expression in a zone or a one-time
    `run_at`, optional bounds, a jitter, and the schedule's id (the jitter's seed).

    Instants are aware and kept in UTC; the jitter is whole milliseconds and not negative.
    Use `recurring` or `one_time` to build one.
    """

    schedule_id: uuid.UUID
    cron: CronExpression | None
    run_at: datetime | None
    zone: ZoneInfo = _UTC_ZONE
    start_time: datetime | None = None
    end_time: datetime | None = None
    jitter: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.run_at is None):
            raise ValueError("a timing has exactly one of a cron expression and run_at")
        if self.jitter < timedelta(0) or self.jitter % _MILLISECOND:
            raise ValueError("jitter must be whole milliseconds and not negative")
        for name in ("run_at", "start_time", "end_time"):
            value: datetime | None = getattr(self, name)
            if value is not None:
                if value.utcoffset() is None:
                    raise ValueError(f"{name} must be a timezone-aware datetime")
                object.__setattr__(self, name, value.astimezone(UTC))

    @classmethod
    def recurring(
        cls, schedule_id: uuid.UUID, cron: CronExpression, zone: ZoneInfo, **bounds: Unpack[Bounds]
    ) -> Timing:
        """A cron schedule's timing."""
        return cls(schedule_id, cron, None, zone, **bounds)

    @classmethod
    def one_time(cls, schedule_id: uuid.UUID, run_at: datetime, **bounds: Unpack[Bounds]) -> Timing:
        """A one-time schedule's timing."""
        return cls(schedule_id, None, run_at, _UTC_ZONE, **bounds)


def jitter_offset(schedule_id: uuid.UUID, nominal: datetime, jitter: timedelta) -> timedelta:
    """offset(S, N) of the module docstring, before any clamp: whole ms in [0, jitter)."""
    jitter_ms = jitter // _MILLISECOND
    if jitter_ms <= 0:
        return timedelta(0)
    micros = (nominal - _EPOCH) // _MICROSECOND
    digest = hashlib.sha256(schedule_id.bytes + micros.to_bytes(8, "big", signed=True)).digest()
    return timedelta(milliseconds=int.from_bytes(digest[:8], "big") % jitter_ms)


def fires_after(timing: Timing, after: datetime, count: int) -> list[datetime]:
    """Up to `count` fire instants strictly after `after` (aware), in UTC, increasing."""
    if after.utcoffset() is None:
        raise ValueError("after must be a timezone-aware datetime")
    found: list[datetime] = []
    if count <= 0:
        return found
    after = after.astimezone(UTC)
    start = timing.start_time
    if start is not None and start > after and start > datetime.min.replace(tzinfo=UTC):
        after = start - _MICROSECOND  # instants are whole microseconds: "> this" is ">= start"
    # A fire is less than the jitter past its nominal occurrence: the first fire after `after`
    # belongs to a nominal occurrence after `after - jitter`. With a jitter, each fire needs the
    # following occurrence too (its clamp), and the occurrence of a fire at `after` (the
    # dispatcher asks for the fire after the one it made) is in that window.
    jitter = timing.jitter
    batch = count + 2 if jitter else count
    for fire in _fire_instants(timing, _earlier(after, jitter), batch):
        if timing.end_time is not None and fire > timing.end_time:
            break
        if fire > after:
            found.append(fire)
            if len(found) == count:
                break
    return found


def next_fire(timing: Timing, after: datetime) -> datetime | None:
    """The first fire instant strictly after `after` (aware), in UTC; None if there is none.

    For the schedule's fire F_k, next_fire(timing, F_k) is F_{k+1}: the dispatcher keeps
    `next_run_time` with this, and a preview lists the same instants.
    """
    found = fires_after(timing, after, 1)
    return found[0] if found else None


def min_interval(timing: Timing) -> timedelta:
    """The preview's min_interval: the expression's shortest interval; zero for a one-time run."""
    return timedelta(0) if timing.cron is None else shortest_interval(timing.cron)


def _fire_instants(timing: Timing, after: datetime, batch: int) -> Iterator[datetime]:
    """Fire instants of the nominal occurrences strictly after `after`, in order, unbounded."""
    if timing.run_at is not None:
        if timing.run_at > after and (fire := _one_time_fire(timing.run_at, timing)) is not None:
            yield fire
        return
    assert timing.cron is not None  # a timing has one or the other
    if not timing.jitter:
        while True:
            nominals = next_occurrences(timing.cron, timing.zone, after, batch)
            yield from nominals
            if len(nominals) < batch:
                return
            after, batch = nominals[-1], min(2 * batch, 100)
    held: datetime | None = None  # a nominal occurrence whose clamp waits for the next one
    while True:
        nominals = next_occurrences(timing.cron, timing.zone, after, batch)
        for nominal in nominals:
            if held is not None:
                yield _clamped_fire(timing, held, nominal)
            held = nominal
        if len(nominals) < batch:
            if held is not None:
                yield _clamped_fire(timing, held, None)
            return
        # The first batch usually suffices (a preview asks for at most 100); keep later ones short.
        after, batch = nominals[-1], min(2 * batch, 100)


def _one_time_fire(run_at: datetime, timing: Timing) -> datetime | None:
    try:
        return run_at + jitter_offset(timing.schedule_id, run_at, timing.jitter)
    except OverflowError:
        return None  # past the last instant a datetime holds


def _clamped_fire(timing: Timing, nominal: datetime, following: datetime | None) -> datetime:
    offset = jitter_offset(timing.schedule_id, nominal, timing.jitter)
    if following is not None and offset:
        offset = min(offset, following - nominal - _MILLISECOND)
    return nominal + offset


def _earlier(instant: datetime, span: timedelta) -> datetime:
    """`instant - span`, or the first instant a datetime holds if that is before it."""
    try:
        return instant - span
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


_NO_SEED = uuid.UUID(int=0)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def timing_of(schedule: Schedule) -> Timing:
    """The timing of a stored schedule (its fields were validated when written). Without a
    jitter the id plays no part, so schedules on one expression share one timing (and cached
    results)."""
    seed = schedule.id if schedule.jitter else _NO_SEED
    cron = None if schedule.run_at is not None else parse_cron(schedule.cron)
    # The interval rule is not re-applied to a stored expression; a one-time run has no zone.
    zone = _UTC_ZONE if cron is None else _zone(schedule.timezone)
    return Timing(
        seed,
        cron,
        schedule.run_at,
        zone,
        schedule.start_time,
        schedule.end_time,
        schedule.jitter,
    )


def next_run_of(schedule: Schedule, after: datetime) -> datetime | None:
    """The next_run_time a schedule gets at `after`: its next fire, None while disabled."""
    return next_fire(timing_of(schedule), after) if schedule.enabled else None


# --- Validation of the timing fields of a request ------------------------------------------------


@dataclass(frozen=True)
class RequestTime:
    """A Timestamp or Duration as a request carries it: whole seconds and nanoseconds.

    Kept raw so that values a datetime cannot hold, and jitters finer than a millisecond, reach
    validation instead of failing (or rounding) on the way.
    """

    seconds: int
    nanos: int = 0


@dataclass(frozen=True)
class TimingRequest:
    """The timing fields of a create, update or preview request, before validation.

    `cron` is the expression the caller parsed (None when unset or refused); `cron_given` says
    whether a non-empty cron was sent at all, valid or not. Unset Timestamp fields are None.
    """

    cron_given: bool
    cron: CronExpression | None = None
    run_at: RequestTime | None = None
    start_time: RequestTime | None = None
    end_time: RequestTime | None = None
    jitter: RequestTime | None = None


def instant_of(value: RequestTime) -> datetime | None:
    """The UTC instant of a Timestamp (nanoseconds cut to microseconds); None when it is not
    one: outside years 1-9999, or nanos outside 0-999,999,999."""
    if not (_FIRST_SECOND <= value.seconds <= _LAST_SECOND and 0 <= value.nanos < 10**9):
        return None
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def jitter_of(value: RequestTime | None) -> timedelta:
    """The jitter of a request that passed validation (unset is 0)."""
    if value is None:
        return timedelta(0)
    return timedelta(milliseconds=_nanos(value) // _NANOS_PER_MILLISECOND)


def timing_violations(
    prefix: str, request: TimingRequest, now: datetime, *, check_run_at: bool
) -> list[FieldViolation]:
    """The violations of the timing rules, at most one per field, on fields named `prefix` +
    `cron`, `run_at`, `start_time`, `end_time` and `jitter`. Instants are taken to the
    microsecond, as they are stored.

    - `cron` SCHEDULE_SPEC_INVALID: both or neither of cron and run_at are set (the caller
      reports its own CRON_* reasons only when this finds none for the field).
    - `run_at` RUN_AT_INVALID: not an instant of years 1-9999; or, when `check_run_at` (the
      schedule is created or re-enabled, or run_at changes), not after `now` or more than 366
      days after it.
    - `start_time` / `end_time` TIME_BOUNDS_INVALID: not an instant of years 1-9999; `end_time`
      not after `start_time`. A one-time schedule whose fire could fall outside the bounds is
      refused too, as it could never fire: run_at before `start_time` (on `start_time`), or
      run_at + jitter after `end_time` (on `end_time`). Bounds that leave a cron schedule no
      occurrence, or an `end_time` already past, are accepted: the schedule just has no next
      run, which the caller can see.
    - `jitter` JITTER_INVALID: negative, not whole milliseconds, over 1 hour, or over half the
      expression's shortest interval (the cron expression's; 1 hour bounds a one-time run).
    """
    found: dict[str, FieldViolation] = {}
    now = now.astimezone(UTC)  # so that differences are real time, not wall-clock time

    def refuse(name: str, reason: str, description: str) -> None:
        found.setdefault(name, FieldViolation(prefix + name, reason, description))

    one_time = request.run_at is not None
    if request.cron_given == one_time:
        refuse(
            "cron",
            SCHEDULE_SPEC_INVALID,
            "set exactly one of cron (a recurring schedule) and run_at (a one-time run)"
            if one_time
            else "a schedule needs cron (recurring) or run_at (one time)",
        )
    run_at = _checked_run_at(request.run_at, now, check_run_at, refuse)
    start = _checked_bound(request.start_time, "start_time", refuse)
    end = _checked_bound(request.end_time, "end_time", refuse)
    if start is not None and end is not None and end <= start:
        refuse("end_time", TIME_BOUNDS_INVALID, "end_time must be after start_time")
    jitter = _checked_jitter(request, refuse)
    if run_at is not None and not request.cron_given:
        if start is not None and run_at < start:
            refuse(
                "start_time",
                TIME_BOUNDS_INVALID,
                "run_at is before start_time, so the schedule could never run",
            )
        if end is not None and jitter is not None and run_at + jitter > end:
            refuse(
                "end_time",
                TIME_BOUNDS_INVALID,
                "run_at (plus the jitter) is after end_time, so the schedule might never run",
            )
    return list(found.values())


def _checked_run_at(
    value: RequestTime | None, now: datetime, check_ahead: bool, refuse: _Refuse
) -> datetime | None:
    if value is None:
        return None
    run_at = instant_of(value)
    if run_at is None:
        refuse("run_at", RUN_AT_INVALID, "run_at must be a time between years 1 and 9999")
    elif check_ahead and run_at <= now:
        refuse("run_at", RUN_AT_INVALID, "run_at must be in the future")
    elif check_ahead and run_at - now > MAX_RUN_AT_AHEAD:
        refuse("run_at", RUN_AT_INVALID, "run_at must be at most 366 days ahead")
    return run_at


def _checked_bound(value: RequestTime | None, name: str, refuse: _Refuse) -> datetime | None:
    if value is None:
        return None
    bound = instant_of(value)
    if bound is None:
        refuse(name, TIME_BOUNDS_INVALID, f"{name} must be a time between years 1 and 9999")
    return bound


def _checked_jitter(request: TimingRequest, refuse: _Refuse) -> timedelta | None:
    """The jitter (0 when unset), or None when it is refused."""
    if request.jitter is None:
        return timedelta(0)
    seconds, nanos = request.jitter.seconds, request.jitter.nanos
    # A Duration's nanos are within a second and share the sign of its seconds.
    if not -_NANOS_PER_SECOND < nanos < _NANOS_PER_SECOND or seconds * nanos < 0:
        refuse("jitter", JITTER_INVALID, "jitter is not a valid duration")
        return None
    total = _nanos(request.jitter)
    if total < 0:
        refuse("jitter", JITTER_INVALID, "jitter must not be negative")
        return None
    if total % _NANOS_PER_MILLISECOND:
        refuse("jitter", JITTER_INVALID, "jitter must be whole milliseconds")
        return None
    if total > MAX_JITTER // timedelta(microseconds=1) * 1000:  # in nanoseconds, as it came
        refuse("jitter", JITTER_INVALID, "jitter must be at most 1 hour")
        return None
    jitter = timedelta(milliseconds=total // _NANOS_PER_MILLISECOND)
    if request.cron is not None and jitter * 2 > shortest_interval(request.cron):
        refuse(
            "jitter",
            JITTER_INVALID,
            f"jitter must be at most half the expression's shortest interval "
            f"({shortest_interval(request.cron)}), so runs stay in order",
        )
        return None
    return jitter


def _nanos(value: RequestTime) -> int:
    return value.seconds * _NANOS_PER_SECOND + value.nanos
