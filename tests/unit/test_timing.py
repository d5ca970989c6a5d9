"""Fire instants of a schedule (cron or one-time, bounds, jitter) and its timing field rules."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_host.domain import timing as timing_module
from scheduler_host.domain.cron import CronExpression, parse_cron, shortest_interval
from scheduler_host.domain.errors import FieldViolation
from scheduler_host.domain.occurrences import next_occurrences
from scheduler_host.domain.timing import (
    RequestTime,
    Timing,
    TimingRequest,
    fires_after,
    instant_of,
    jitter_of,
    jitter_offset,
    min_interval,
    next_fire,
    timing_violations,
)
from tests.unit.test_cron import cron_cases
from tests.unit.test_occurrences import Start, fires, frequent_cases, starts

NEW_YORK = ZoneInfo("America/New_York")
MS = timedelta(milliseconds=1)
HOUR = timedelta(hours=1)
ID = uuid.UUID("6f1c1d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def cron_timing(
    text: str,
    zone: ZoneInfo = NEW_YORK,
    *,
    jitter: timedelta = timedelta(0),
    schedule_id: uuid.UUID = ID,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> Timing:
    return Timing.recurring(
        schedule_id,
        parse_cron(text),
        zone,
        jitter=jitter,
        start_time=start_time,
        end_time=end_time,
    )


# --- Strategies ----------------------------------------------------------------------------------


@st.composite
def jitters(draw: st.DrawFn, expr: CronExpression) -> timedelta:
    """Whole milliseconds up to what validation allows, often the bound itself; now and then up
    to an hour regardless, which only the clamp keeps in order."""
    allowed = HOUR if draw(st.integers(0, 4)) == 0 else min(HOUR, shortest_interval(expr) / 2)
    most = allowed // MS
    return timedelta(milliseconds=draw(st.sampled_from([0, most]) | st.integers(0, most)))


@st.composite
def cron_timings(draw: st.DrawFn, start: Start) -> Timing:
    """Expressions that run often near the start's daylight-saving transition, or any valid one;
    any id and jitter."""
    case = draw(st.one_of(frequent_cases(start.hot_hours), cron_cases().filter(fires)))
    expr = parse_cron(case.text)
    return Timing.recurring(draw(st.uuids()), expr, start.tz, jitter=draw(jitters(expr)))


# --- The jitter offset ---------------------------------------------------------------------------


def test_jitter_offset_of_a_known_id_and_instant() -> None:
    # M = 1772953200000000 microseconds; SHA-256 starts 9fc938891b1acddb; mod 60000 is 20155.
    nominal = utc("2026-03-08T07:00")
    assert (nominal - EPOCH) // timedelta(microseconds=1) == 1_772_953_200_000_000
    assert jitter_offset(ID, nominal, timedelta(seconds=60)) == timedelta(milliseconds=20_155)
    assert int("9fc938891b1acddb", 16) % 60_000 == 20_155
    # Before 1970 the microseconds are negative, in two's complement.
    assert jitter_offset(ID, utc("1969-12-31T23:59"), timedelta(seconds=60)) == timedelta(
        milliseconds=52_009
    )


@settings(max_examples=200)
@given(
    st.uuids(),
    st.datetimes(timezones=st.just(UTC)),
    st.integers(1, 3_600_000),
)
def test_jitter_offset_is_the_documented_hash_of_id_and_instant(
    schedule_id: uuid.UUID, nominal: datetime, jitter_ms: int
) -> None:
    micros = (nominal - EPOCH) // timedelta(microseconds=1)
    digest = hashlib.sha256(schedule_id.bytes + micros.to_bytes(8, "big", signed=True)).digest()
    expected = timedelta(milliseconds=int.from_bytes(digest[:8], "big") % jitter_ms)
    offset = jitter_offset(schedule_id, nominal, timedelta(milliseconds=jitter_ms))
    assert offset == expected
    assert timedelta(0) <= offset < timedelta(milliseconds=jitter_ms)
    assert offset % MS == timedelta(0)


def test_no_jitter_means_no_offset() -> None:
    assert jitter_offset(ID, utc("2026-03-08T07:00"), timedelta(0)) == timedelta(0)


# --- Cron fires ----------------------------------------------------------------------------------


def test_without_jitter_the_fires_are_the_nominal_occurrences() -> None:
    expr = parse_cron("30 2 * * *")
    after = utc("2026-03-06T00:00")
    timing = Timing.recurring(ID, expr, NEW_YORK)
    assert fires_after(timing, after, 5) == next_occurrences(expr, NEW_YORK, after, 5)


def test_a_jittered_fire_is_its_occurrence_plus_the_offset() -> None:
    timing = cron_timing("0 2 * * *", ZoneInfo("UTC"), jitter=timedelta(seconds=60))
    nominal = utc("2026-03-08T02:00")
    assert next_fire(timing, utc("2026-03-08T00:00")) == nominal + jitter_offset(
        ID, nominal, timedelta(seconds=60)
    )


def test_a_fire_before_a_daylight_saving_neighbour_is_clamped_just_before_it() -> None:
    # 02:05 is skipped on 2026-03-08 and runs at the jump (03:00 EDT = 07:00Z); 03:05 EDT
    # follows five minutes later, though the expression's shortest interval is an hour.
    first, second = utc("2026-03-08T07:00"), utc("2026-03-08T07:05")
    jitter = timedelta(minutes=30)
    schedule_id = next(
        candidate
        for candidate in (uuid.UUID(int=n) for n in range(1, 1000))
        if jitter_offset(candidate, first, jitter) >= timedelta(minutes=5)
    )
    timing = cron_timing("5 2,3 * * *", jitter=jitter, schedule_id=schedule_id)
    fired = fires_after(timing, utc("2026-03-08T06:00"), 2)
    assert fired[0] == second - MS
    assert second <= fired[1] < second + jitter
    assert next_fire(timing, fired[0]) == fired[1]


@settings(max_examples=200)
@given(starts(), st.data())
def test_fires_are_their_occurrences_plus_an_offset_below_the_jitter_and_the_next_occurrence(
    start: Start, data: st.DataObject
) -> None:
    timing = data.draw(cron_timings(start))
    assert timing.cron is not None
    fired = fires_after(timing, start.after, 8)
    assert fired
    assert all(fire > start.after and fire.tzinfo is UTC for fire in fired)
    assert all(earlier < later for earlier, later in pairwise(fired))
    # Up to two hours of minutely runs (a repeated hour) fall within an hour's jitter window.
    # (In UTC: arithmetic on a zone's aware datetime is wall-clock arithmetic.)
    window_start = start.after.astimezone(UTC) - timing.jitter
    nominals = next_occurrences(timing.cron, timing.zone, window_start, 8 + 122)
    expected = []
    for nominal, following in pairwise(nominals):
        offset = jitter_offset(timing.schedule_id, nominal, timing.jitter)
        fire = nominal + min(offset, following - nominal - MS) if offset else nominal
        assert nominal <= fire < following
        assert (fire - nominal) % MS == timedelta(0)
        assert fire - nominal <= offset
        if fire > start.after:
            expected.append(fire)
    assert fired == expected[: len(fired)]


@settings(max_examples=300)
@given(starts(), st.data())
def test_the_fire_after_a_fire_is_the_next_fire(start: Start, data: st.DataObject) -> None:
    timing = data.draw(cron_timings(start))
    fired = fires_after(timing, start.after, 6)
    assert next_fire(timing, start.after) == fired[0]
    for fire, following in pairwise(fired):
        assert next_fire(timing, fire) == following
        # Any instant from one fire up to just before the next leads to the next.
        between = fire + (following - fire) * data.draw(st.floats(0, 1, exclude_max=True))
        assert next_fire(timing, min(between, following - timedelta(microseconds=1))) == following


def test_fires_are_the_same_for_equal_timings_and_repeated_calls() -> None:
    def make() -> Timing:
        return cron_timing("*/5 * * * *", jitter=timedelta(seconds=150))

    after = utc("2026-11-01T05:00")
    first = fires_after(make(), after, 30)
    assert fires_after(make(), after, 30) == first
    assert [next_fire(make(), fire) for fire in first[:-1]] == first[1:]


def test_another_id_gets_other_offsets() -> None:
    after = utc("2026-05-01T00:00")
    one = fires_after(cron_timing("0 * * * *", jitter=timedelta(minutes=30)), after, 10)
    other_id = uuid.UUID("0e5a1c3b-2d4f-4a6b-8c7d-9e0f1a2b3c4d")
    other = fires_after(
        cron_timing("0 * * * *", jitter=timedelta(minutes=30), schedule_id=other_id), after, 10
    )
    assert all(a != b for a, b in zip(one, other, strict=True))


@settings(max_examples=20)
@given(st.integers(0, 2**64))
def test_jitter_spreads_schedules_sharing_an_expression_over_the_window(seed: int) -> None:
    rng = random.Random(seed)  # ids as random as uuid4's, reproducible from the seed
    hour = utc("2026-05-01T10:00")
    offsets = sorted(
        (
            next_fire(
                cron_timing(
                    "0 * * * *",
                    ZoneInfo("UTC"),
                    jitter=timedelta(seconds=60),
                    schedule_id=uuid.UUID(int=rng.getrandbits(128)),
                ),
                hour - timedelta(microseconds=1),
            )
            or hour
        )
        - hour
        for _ in range(500)
    )
    assert offsets[0] >= timedelta(0)
    assert offsets[-1] < timedelta(seconds=60)
    # Slide a 5-second window over the minute: none holds more than a quarter of the schedules.
    busiest = max(
        sum(1 for offset in offsets if low <= offset < low + timedelta(seconds=5))
        for low in (timedelta(milliseconds=250 * n) for n in range(4 * 60))
    )
    assert busiest <= 500 // 4


def test_next_fire_after_a_fire_searches_once_for_three_occurrences(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timing = cron_timing("0 9 * * MON-FRI", jitter=timedelta(minutes=20))
    fire = next_fire(timing, utc("2026-05-01T00:00"))
    assert fire is not None
    asked: list[int] = []

    def counting(expr: CronExpression, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
        asked.append(count)
        return next_occurrences(expr, tz, after, count)

    monkeypatch.setattr(timing_module, "next_occurrences", counting)
    assert next_fire(timing, fire) is not None
    assert asked == [3]


# --- Bounds --------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(starts(), st.data())
def test_bounds_keep_out_fires_and_move_none(start: Start, data: st.DataObject) -> None:
    unbounded = data.draw(cron_timings(start))
    free = fires_after(unbounded, start.after, 12)
    low = data.draw(st.sampled_from([None, *free[:6]]))
    high = data.draw(st.sampled_from([None, *free[3:]]))
    if low is not None and data.draw(st.booleans()):
        low += timedelta(microseconds=1)  # just after a fire: that fire is out
    if high is not None and data.draw(st.booleans()):
        high -= timedelta(microseconds=1)
    bounded = Timing(
        unbounded.schedule_id,
        unbounded.cron,
        None,
        unbounded.zone,
        start_time=low,
        end_time=high,
        jitter=unbounded.jitter,
    )
    expected = [
        fire for fire in free if (low is None or fire >= low) and (high is None or fire <= high)
    ]
    assert fires_after(bounded, start.after, 12)[: len(expected)] == expected
    if high is not None:
        assert next_fire(bounded, high) is None
        assert len(fires_after(bounded, start.after, 12)) == len(expected)


def test_start_time_is_inclusive_and_end_time_too() -> None:
    timing = cron_timing(
        "0 12 * * *",
        ZoneInfo("UTC"),
        start_time=utc("2026-05-02T12:00"),
        end_time=utc("2026-05-04T12:00"),
    )
    assert fires_after(timing, utc("2026-01-01T00:00"), 10) == [
        utc("2026-05-02T12:00"),
        utc("2026-05-03T12:00"),
        utc("2026-05-04T12:00"),
    ]
    assert next_fire(timing, utc("2026-05-04T12:00")) is None


def test_bounds_apply_to_the_jittered_fire() -> None:
    nominal = utc("2026-05-02T12:00")
    jitter = timedelta(minutes=10)
    fire = nominal + jitter_offset(ID, nominal, jitter)
    assert fire > nominal  # this id's offset for that instant is not zero
    # An occurrence before start_time whose fire is not before it fires.
    late_start = cron_timing("0 12 * * *", ZoneInfo("UTC"), start_time=fire, jitter=jitter)
    assert next_fire(late_start, utc("2026-05-01T13:00")) == fire
    # An occurrence before end_time whose fire is after it does not.
    early_end = cron_timing("0 12 * * *", ZoneInfo("UTC"), end_time=fire - MS, jitter=jitter)
    assert next_fire(early_end, utc("2026-05-01T13:00")) is None


# --- One-time schedules --------------------------------------------------------------------------


def test_a_one_time_schedule_fires_once_at_run_at() -> None:
    run_at = utc("2026-06-01T12:00:00.250")
    timing = Timing.one_time(ID, run_at)
    assert fires_after(timing, utc("2026-01-01T00:00"), 5) == [run_at]
    assert next_fire(timing, run_at - timedelta(microseconds=1)) == run_at
    assert next_fire(timing, run_at) is None
    assert fires_after(timing, utc("2027-01-01T00:00"), 5) == []


@settings(max_examples=100)
@given(
    st.uuids(),
    st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.integers(0, 3_600_000),
)
def test_a_jittered_one_time_schedule_fires_once_at_its_offset(
    schedule_id: uuid.UUID, run_at: datetime, jitter_ms: int
) -> None:
    jitter = timedelta(milliseconds=jitter_ms)
    fire = run_at + jitter_offset(schedule_id, run_at, jitter)
    timing = Timing.one_time(schedule_id, run_at, jitter=jitter)
    assert fires_after(timing, run_at - HOUR, 3) == [fire]
    assert fires_after(timing, fire, 3) == []
    assert run_at <= fire < run_at + max(jitter, MS)


def test_a_one_time_fire_outside_its_bounds_never_comes() -> None:
    run_at = utc("2026-06-01T12:00")
    before = Timing.one_time(ID, run_at, start_time=run_at + MS)
    after_end = Timing.one_time(ID, run_at, end_time=run_at - MS)
    assert next_fire(before, utc("2026-01-01T00:00")) is None
    assert next_fire(after_end, utc("2026-01-01T00:00")) is None


def test_min_interval_is_the_shortest_interval_and_zero_for_one_time() -> None:
    assert min_interval(cron_timing("*/5 * * * *")) == timedelta(minutes=5)
    assert min_interval(cron_timing("0 0 29 2 *")) == timedelta(days=1461)
    assert min_interval(Timing.one_time(ID, utc("2026-06-01T12:00"))) == timedelta(0)


# --- The Timing value ----------------------------------------------------------------------------


def test_timing_keeps_instants_in_utc() -> None:
    tokyo = datetime(2026, 6, 1, 21, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    timing = Timing.one_time(ID, tokyo, start_time=tokyo, end_time=tokyo + HOUR)
    assert (timing.run_at, timing.start_time) == (utc("2026-06-01T12:00"),) * 2
    assert timing.run_at is not None
    assert timing.run_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Timing(ID, None, None), "exactly one"),
        (lambda: Timing(ID, parse_cron("@daily"), utc("2026-01-01T00:00")), "exactly one"),
        (lambda: Timing.one_time(ID, datetime(2026, 1, 1)), "timezone-aware"),
        (lambda: Timing.one_time(ID, utc("2026-01-01T00:00"), jitter=-MS), "whole milliseconds"),
        (
            lambda: Timing.one_time(
                ID, utc("2026-01-01T00:00"), jitter=timedelta(microseconds=1500)
            ),
            "whole milliseconds",
        ),
    ],
)
def test_timing_refuses_what_cannot_be_a_timing(build: Callable[[], Timing], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_naive_after_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(cron_timing("@daily"), datetime(2026, 1, 1))


# --- Validation ----------------------------------------------------------------------------------

NOW = utc("2026-05-01T12:00")


def seconds_of(text: str) -> RequestTime:
    return RequestTime((utc(text) - EPOCH) // timedelta(seconds=1))


def violations(request: TimingRequest, *, check_run_at: bool = True) -> dict[str, tuple[str, str]]:
    found = timing_violations("schedule.", request, NOW, check_run_at=check_run_at)
    assert len({v.field for v in found}) == len(found)  # one per field
    return {v.field: (v.reason, v.description) for v in found}


def reasons(request: TimingRequest, *, check_run_at: bool = True) -> dict[str, str]:
    return {
        field: reason
        for field, (reason, _) in violations(request, check_run_at=check_run_at).items()
    }


EVERY_FIVE = parse_cron("*/5 * * * *")
ONE_TIME = seconds_of("2026-06-01T12:00")


def test_a_valid_cron_or_one_time_request_has_no_violations() -> None:
    assert reasons(TimingRequest(cron_given=True, cron=EVERY_FIVE)) == {}
    assert (
        reasons(
            TimingRequest(
                cron_given=True,
                cron=EVERY_FIVE,
                start_time=seconds_of("2026-05-01T00:00"),
                end_time=seconds_of("2026-06-01T00:00"),
                jitter=RequestTime(150),
            )
        )
        == {}
    )
    assert reasons(TimingRequest(cron_given=False, run_at=ONE_TIME, jitter=RequestTime(3600))) == {}


@pytest.mark.parametrize(
    ("request_", "part"),
    [
        (TimingRequest(cron_given=True, cron=EVERY_FIVE, run_at=ONE_TIME), "exactly one"),
        (TimingRequest(cron_given=True, cron=None, run_at=ONE_TIME), "exactly one"),
        (TimingRequest(cron_given=False), "needs cron"),
    ],
)
def test_cron_and_run_at_are_one_or_the_other(request_: TimingRequest, part: str) -> None:
    reason, description = violations(request_)["schedule.cron"]
    assert reason == "SCHEDULE_SPEC_INVALID"
    assert part in description


@pytest.mark.parametrize(
    ("run_at", "part"),
    [
        (seconds_of("2026-05-01T12:00"), "in the future"),  # now is not the future
        (seconds_of("2026-04-30T12:00"), "in the future"),
        (seconds_of("2027-05-02T12:00:01"), "at most 366 days"),
        (RequestTime(253402300800), "between years 1 and 9999"),  # 10000-01-01
        (RequestTime(-62135596801), "between years 1 and 9999"),  # before 0001-01-01
        (RequestTime(2**62), "between years 1 and 9999"),
        (RequestTime(1_800_000_000, 1_000_000_000), "between years 1 and 9999"),
        (RequestTime(1_800_000_000, -1), "between years 1 and 9999"),
    ],
)
def test_run_at_must_be_a_time_in_the_coming_366_days(run_at: RequestTime, part: str) -> None:
    reason, description = violations(TimingRequest(cron_given=False, run_at=run_at))[
        "schedule.run_at"
    ]
    assert reason == "RUN_AT_INVALID"
    assert part in description


def test_run_at_may_be_366_days_ahead_to_the_microsecond() -> None:
    last = RequestTime((NOW + timedelta(days=366) - EPOCH) // timedelta(seconds=1), 999)
    assert reasons(TimingRequest(cron_given=False, run_at=last)) == {}


def test_a_past_run_at_is_checked_only_when_asked() -> None:
    past = TimingRequest(cron_given=False, run_at=seconds_of("2026-01-01T00:00"))
    assert reasons(past, check_run_at=False) == {}
    assert reasons(past) == {"schedule.run_at": "RUN_AT_INVALID"}


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (RequestTime(-(10**15)), None, {"schedule.start_time": "TIME_BOUNDS_INVALID"}),
        (None, RequestTime(10**15), {"schedule.end_time": "TIME_BOUNDS_INVALID"}),
        (
            seconds_of("2026-06-01T00:00"),
            seconds_of("2026-06-01T00:00"),
            {"schedule.end_time": "TIME_BOUNDS_INVALID"},
        ),
        (
            seconds_of("2026-06-02T00:00"),
            seconds_of("2026-06-01T00:00"),
            {"schedule.end_time": "TIME_BOUNDS_INVALID"},
        ),
        # Instants are kept (and compared) to the microsecond.
        (seconds_of("2026-06-01T00:00"), RequestTime(1_780_272_000, 1_000), {}),
        (
            seconds_of("2026-06-01T00:00"),
            RequestTime(1_780_272_000, 999),
            {"schedule.end_time": "TIME_BOUNDS_INVALID"},
        ),
        # An end already past is accepted: the schedule then has no next run.
        (None, seconds_of("2020-01-01T00:00"), {}),
    ],
)
def test_end_time_must_be_after_start_time(
    start: RequestTime | None, end: RequestTime | None, expected: dict[str, str]
) -> None:
    request = TimingRequest(cron_given=True, cron=EVERY_FIVE, start_time=start, end_time=end)
    assert reasons(request) == expected


@pytest.mark.parametrize(
    ("start", "end", "jitter", "expected"),
    [
        ("2026-06-01T12:00", None, None, {}),
        ("2026-06-01T12:00:01", None, None, {"schedule.start_time": "TIME_BOUNDS_INVALID"}),
        (None, "2026-06-01T12:00", None, {}),
        (None, "2026-06-01T11:59:59", None, {"schedule.end_time": "TIME_BOUNDS_INVALID"}),
        (None, "2026-06-01T12:01", RequestTime(60), {}),
        (None, "2026-06-01T12:01", RequestTime(61), {"schedule.end_time": "TIME_BOUNDS_INVALID"}),
    ],
)
def test_a_run_at_that_its_bounds_would_keep_from_firing_is_refused(
    start: str | None, end: str | None, jitter: RequestTime | None, expected: dict[str, str]
) -> None:
    request = TimingRequest(
        cron_given=False,
        run_at=ONE_TIME,
        start_time=None if start is None else seconds_of(start),
        end_time=None if end is None else seconds_of(end),
        jitter=jitter,
    )
    assert reasons(request) == expected


@pytest.mark.parametrize(
    ("cron", "jitter", "part"),
    [
        (EVERY_FIVE, RequestTime(-1), "negative"),
        (EVERY_FIVE, RequestTime(0, -1_000_000), "negative"),
        (EVERY_FIVE, RequestTime(1, 500_000), "whole milliseconds"),
        (EVERY_FIVE, RequestTime(0, 1), "whole milliseconds"),
        (EVERY_FIVE, RequestTime(150, 1_000_000), "half the expression's shortest interval"),
        (parse_cron("@daily"), RequestTime(3600, 1_000_000), "at most 1 hour"),
        (None, RequestTime(3600, 1_000_000), "at most 1 hour"),
        (EVERY_FIVE, RequestTime(1, -5), "not a valid duration"),
        (EVERY_FIVE, RequestTime(0, 1_000_000_000), "not a valid duration"),
        (EVERY_FIVE, RequestTime(315_576_000_001), "at most 1 hour"),
    ],
)
def test_jitter_is_whole_milliseconds_up_to_an_hour_and_half_the_interval(
    cron: CronExpression | None, jitter: RequestTime, part: str
) -> None:
    request = (
        TimingRequest(cron_given=True, cron=cron, jitter=jitter)
        if cron is not None
        else TimingRequest(cron_given=False, run_at=ONE_TIME, jitter=jitter)
    )
    reason, description = violations(request)["schedule.jitter"]
    assert reason == "JITTER_INVALID"
    assert part in description


@pytest.mark.parametrize(
    ("cron", "jitter"),
    [
        (EVERY_FIVE, RequestTime(150)),
        (EVERY_FIVE, RequestTime(0, 999_000_000)),
        (parse_cron("@daily"), RequestTime(3600)),
        (None, RequestTime(3600)),
        (None, RequestTime(0)),
    ],
)
def test_jitter_up_to_its_bound_is_accepted(
    cron: CronExpression | None, jitter: RequestTime
) -> None:
    request = (
        TimingRequest(cron_given=True, cron=cron, jitter=jitter)
        if cron is not None
        else TimingRequest(cron_given=False, run_at=ONE_TIME, jitter=jitter)
    )
    assert reasons(request) == {}


def test_a_refused_cron_leaves_only_the_hour_bound_on_jitter() -> None:
    # The caller reports the cron's own reason; the jitter is still checked against an hour.
    assert reasons(TimingRequest(cron_given=True, cron=None, jitter=RequestTime(600))) == {}


def test_every_field_gets_at_most_one_violation_with_the_callers_prefix() -> None:
    request = TimingRequest(
        cron_given=True,
        cron=EVERY_FIVE,
        run_at=RequestTime(10**15),
        start_time=RequestTime(10**15),
        end_time=RequestTime(-(10**15)),
        jitter=RequestTime(-1),
    )
    found = timing_violations("update.", request, NOW, check_run_at=True)
    assert sorted((v.field, v.reason) for v in found) == [
        ("update.cron", "SCHEDULE_SPEC_INVALID"),
        ("update.end_time", "TIME_BOUNDS_INVALID"),
        ("update.jitter", "JITTER_INVALID"),
        ("update.run_at", "RUN_AT_INVALID"),
        ("update.start_time", "TIME_BOUNDS_INVALID"),
    ]
    assert all(isinstance(v, FieldViolation) for v in found)


def request_times() -> st.SearchStrategy[RequestTime | None]:
    return st.none() | st.builds(
        RequestTime, st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1)
    )


@settings(max_examples=300)
@given(
    st.booleans(),
    st.sampled_from([None, EVERY_FIVE, parse_cron("0 0 29 2 *")]),
    request_times(),
    request_times(),
    request_times(),
    request_times(),
    st.booleans(),
)
def test_validation_answers_any_numbers_with_violations_not_errors(
    cron_given: bool,
    cron: CronExpression | None,
    run_at: RequestTime | None,
    start: RequestTime | None,
    end: RequestTime | None,
    jitter: RequestTime | None,
    check_run_at: bool,
) -> None:
    request = TimingRequest(cron_given, cron, run_at, start, end, jitter)
    found = timing_violations("", request, NOW, check_run_at=check_run_at)
    assert {v.field for v in found} <= {"cron", "run_at", "start_time", "end_time", "jitter"}
    if not found and run_at is not None:
        # What passes can be built into a Timing that fires within its bounds.
        instant = instant_of(run_at)
        assert instant is not None
        bounds = [None if b is None else instant_of(b) for b in (start, end)]
        timing = Timing.one_time(
            ID, instant, start_time=bounds[0], end_time=bounds[1], jitter=jitter_of(jitter)
        )
        assert fires_after(timing, instant - timedelta(microseconds=1), 2) == [
            instant + jitter_offset(ID, instant, jitter_of(jitter))
        ]


def test_instant_of_cuts_nanoseconds_to_microseconds() -> None:
    assert instant_of(RequestTime(0, 1_999)) == EPOCH + timedelta(microseconds=1)
    assert instant_of(RequestTime(-62135596800)) == datetime.min.replace(tzinfo=UTC)
    assert instant_of(RequestTime(253402300799, 999_999_999)) == datetime.max.replace(tzinfo=UTC)


def test_jitter_of_a_valid_request() -> None:
    assert jitter_of(None) == timedelta(0)
    assert jitter_of(RequestTime(1, 500_000_000)) == timedelta(milliseconds=1500)


def every_fire(timing: Timing, after: datetime, limit: int) -> Iterator[datetime]:
    """Fires one by one, each from the one before: the dispatcher's walk."""
    fire = after
    for _ in range(limit):
        following = next_fire(timing, fire)
        if following is None:
            return
        yield following
        fire = following


def test_the_dispatchers_walk_gives_the_previews_list_across_a_repeated_hour() -> None:
    timing = cron_timing("*/30 * * * *", jitter=timedelta(minutes=15))
    after = utc("2026-11-01T04:00")
    assert list(every_fire(timing, after, 10)) == fires_after(timing, after, 10)
