"""Next run times in a time zone under the daylight-saving policy: examples and an oracle."""

from __future__ import annotations

import calendar
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_host.domain import occurrences
from scheduler_host.domain.cron import CronError, parse_cron
from scheduler_host.domain.occurrences import next_occurrence, next_occurrences
from tests.unit.test_cron import CronCase, cron_cases, rare_cases

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
SANTIAGO = ZoneInfo("America/Santiago")
APIA = ZoneInfo("Pacific/Apia")
MINUTE = timedelta(minutes=1)
ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "UTC",
    "America/Santiago",
    "Pacific/Chatham",
]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def runs(text: str, tz: ZoneInfo, after: str, count: int) -> list[datetime]:
    return next_occurrences(parse_cron(text), tz, utc(after), count)


def utcs(*texts: str) -> list[datetime]:
    return [utc(text) for text in texts]


# --- New York 2026: 02:00 EST -> 03:00 EDT on Mar 8; 02:00 EDT -> 01:00 EST on Nov 1 -------------


def test_fixed_time_in_skipped_hour_runs_at_the_jump() -> None:
    assert runs("30 2 * * *", NEW_YORK, "2026-03-07T00:00", 3) == utcs(
        "2026-03-07T07:30",  # 02:30 EST
        "2026-03-08T07:00",  # 03:00 EDT, the first instant after the jump
        "2026-03-09T06:30",  # 02:30 EDT
    )


def test_fixed_times_in_skipped_hour_run_once_together_at_the_jump() -> None:
    assert runs("0,30 2 * * *", NEW_YORK, "2026-03-08T00:00", 3) == utcs(
        "2026-03-08T07:00", "2026-03-09T06:00", "2026-03-09T06:30"
    )


def test_fixed_time_in_repeated_hour_runs_once_on_first_pass() -> None:
    assert runs("30 1 * * *", NEW_YORK, "2026-10-31T12:00", 2) == utcs(
        "2026-11-01T05:30",  # 01:30 EDT; not again at 01:30 EST
        "2026-11-02T06:30",
    )


def test_fixed_time_after_first_pass_of_repeated_hour_waits_for_next_day() -> None:
    assert runs("30 1 * * *", NEW_YORK, "2026-11-01T05:45", 1) == utcs("2026-11-02T06:30")


def test_wildcard_expression_runs_both_passes_of_a_repeated_hour() -> None:
    assert runs("*/30 * * * *", NEW_YORK, "2026-11-01T04:45", 5) == utcs(
        "2026-11-01T05:00",  # 01:00 EDT
        "2026-11-01T05:30",  # 01:30 EDT
        "2026-11-01T06:00",  # 01:00 EST
        "2026-11-01T06:30",  # 01:30 EST
        "2026-11-01T07:00",  # 02:00 EST
    )


def test_wildcard_expression_runs_nothing_in_a_skipped_hour() -> None:
    assert runs("*/30 * * * *", NEW_YORK, "2026-03-08T06:00", 3) == utcs(
        "2026-03-08T06:30",  # 01:30 EST
        "2026-03-08T07:00",  # 03:00 EDT
        "2026-03-08T07:30",
    )


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ("2026-03-08T04:30", ["2026-03-08T05:00", "2026-03-08T06:00", "2026-03-08T07:00"]),
        (
            "2026-11-01T03:30",
            ["2026-11-01T04:00", "2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"],
        ),
    ],
)
def test_hourly_follows_the_wall_clock(after: str, expected: list[str]) -> None:
    assert runs("0 * * * *", NEW_YORK, after, len(expected)) == utcs(*expected)


def test_hour_wildcard_with_fixed_minute_is_not_fixed_time() -> None:
    # "30 * * * *" has a * in the hour field: a skipped 02:30 is not caught up.
    assert runs("30 * * * *", NEW_YORK, "2026-03-08T06:00", 2) == utcs(
        "2026-03-08T06:30", "2026-03-08T07:30"
    )


# --- Other zones ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        # Mar 29: 02:00 CET -> 03:00 CEST; Oct 25: 03:00 CEST -> 02:00 CET.
        ("30 2 * * *", "2026-03-28T12:00", ["2026-03-29T01:00", "2026-03-30T00:30"]),
        ("30 2 * * *", "2026-10-24T12:00", ["2026-10-25T00:30", "2026-10-26T01:30"]),
        (
            "*/30 2 * * *",
            "2026-10-24T12:00",
            ["2026-10-25T00:00", "2026-10-25T00:30", "2026-10-25T01:00", "2026-10-25T01:30"],
        ),
    ],
)
def test_berlin_transitions(text: str, after: str, expected: list[str]) -> None:
    assert runs(text, BERLIN, after, len(expected)) == utcs(*expected)


def test_lord_howe_shifts_by_thirty_minutes_in_2026() -> None:
    # Checked before relying on it: Apr 5 02:00 -> 01:30 and Oct 4 02:00 -> 02:30.
    assert utc("2026-04-04T14:59").astimezone(LORD_HOWE).utcoffset() == timedelta(hours=11)
    assert utc("2026-04-04T15:00").astimezone(LORD_HOWE).utcoffset() == timedelta(hours=10.5)
    assert utc("2026-10-03T15:29").astimezone(LORD_HOWE).utcoffset() == timedelta(hours=10.5)
    assert utc("2026-10-03T15:30").astimezone(LORD_HOWE).utcoffset() == timedelta(hours=11)


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        # 02:15 is skipped on Oct 4: runs at the jump, 02:30 LHDT.
        ("15 2 * * *", "2026-10-02T12:00", ["2026-10-02T15:45", "2026-10-03T15:30"]),
        # 01:45 repeats on Apr 5: runs on the first pass (+11:00) only.
        ("45 1 * * *", "2026-04-03T12:00", ["2026-04-03T14:45", "2026-04-04T14:45"]),
        ("45 1 * * *", "2026-04-04T14:45", ["2026-04-05T15:15"]),
        (
            "*/15 * * * *",
            "2026-04-04T14:20",
            ["2026-04-04T14:30", "2026-04-04T14:45", "2026-04-04T15:00", "2026-04-04T15:15"],
        ),
        ("*/15 * * * *", "2026-10-03T15:10", ["2026-10-03T15:15", "2026-10-03T15:30"]),
    ],
)
def test_lord_howe_half_hour_transitions(text: str, after: str, expected: list[str]) -> None:
    assert runs(text, LORD_HOWE, after, len(expected)) == utcs(*expected)


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        # Sep 6: 00:00 -> 01:00, so the day starts at 01:00 -03.
        ("30 0 * * *", "2026-09-05T00:00", ["2026-09-05T04:30", "2026-09-06T04:00"]),
        # Apr 5 00:00 -> Apr 4 23:00: the last hour of Apr 4 repeats.
        ("30 23 * * *", "2026-04-04T12:00", ["2026-04-05T02:30", "2026-04-06T03:30"]),
        (
            "30 * * * *",
            "2026-04-05T01:00",
            ["2026-04-05T01:30", "2026-04-05T02:30", "2026-04-05T03:30", "2026-04-05T04:30"],
        ),
    ],
)
def test_santiago_transitions_at_midnight(text: str, after: str, expected: list[str]) -> None:
    assert runs(text, SANTIAGO, after, len(expected)) == utcs(*expected)


def test_repeated_hour_across_midnight_runs_in_instant_order() -> None:
    # Goose Bay fell back at 00:01 ADT on 2009-11-01: Oct 31 23:01 to Nov 1 00:00 ran twice.
    goose_bay = ZoneInfo("America/Goose_Bay")
    assert runs("*/30 * * * *", goose_bay, "2009-11-01T01:50", 6) == utcs(
        "2009-11-01T02:00",  # Oct 31 23:00 ADT
        "2009-11-01T02:30",  # Oct 31 23:30 ADT
        "2009-11-01T03:00",  # Nov 1 00:00 ADT
        "2009-11-01T03:30",  # Oct 31 23:30 AST, a day's wall time after the next day's
        "2009-11-01T04:00",  # Nov 1 00:00 AST
        "2009-11-01T04:30",
    )
    assert runs("0,30 0,23 * * *", goose_bay, "2009-11-01T01:50", 4) == utcs(
        "2009-11-01T02:00", "2009-11-01T02:30", "2009-11-01T03:00", "2009-11-01T04:30"
    )


def test_a_whole_skipped_day_runs_fixed_times_once_at_the_jump() -> None:
    # Samoa skipped 2011-12-30 entirely (-10:00 -> +14:00 at 10:00Z).
    assert runs("0 6,12 * * *", APIA, "2011-12-29T12:00", 4) == utcs(
        "2011-12-29T16:00",  # Dec 29 06:00 -10
        "2011-12-29T22:00",  # Dec 29 12:00 -10
        "2011-12-30T10:00",  # Dec 30 06:00 and 12:00, at the jump
        "2011-12-30T16:00",  # Dec 31 06:00 +14
    )
    assert runs("0 */6 * * *", APIA, "2011-12-30T04:00", 2) == utcs(
        "2011-12-30T10:00", "2011-12-30T16:00"
    )


def test_utc_has_no_transitions() -> None:
    assert runs("0 9 * * MON-FRI", ZoneInfo("UTC"), "2026-03-06T09:00", 3) == utcs(
        "2026-03-09T09:00", "2026-03-10T09:00", "2026-03-11T09:00"
    )


# --- The `after` argument and the result shape ---------------------------------------------------


def test_after_with_seconds_gives_the_next_whole_minute() -> None:
    after = datetime(2026, 5, 1, 12, 0, 30, 500, tzinfo=UTC)
    assert next_occurrence(parse_cron("* * * * *"), ZoneInfo("UTC"), after) == utc(
        "2026-05-01T12:01"
    )


def test_an_occurrence_at_after_itself_is_not_returned() -> None:
    assert runs("0 12 * * *", ZoneInfo("UTC"), "2026-05-01T12:00", 1) == utcs("2026-05-02T12:00")


def test_after_may_be_in_any_zone() -> None:
    after = datetime(2026, 3, 8, 16, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 07:00Z
    assert next_occurrences(parse_cron("*/30 * * * *"), NEW_YORK, after, 2) == utcs(
        "2026-03-08T07:30", "2026-03-08T08:00"
    )


def test_results_are_whole_minutes_in_utc() -> None:
    found = runs("*/7 3 * * *", BERLIN, "2026-06-01T00:00", 10)
    assert all(run.tzinfo is UTC and run.second == run.microsecond == 0 for run in found)


def test_naive_after_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_occurrences(parse_cron("* * * * *"), NEW_YORK, datetime(2026, 1, 1), 1)


@pytest.mark.parametrize(
    ("text", "zone", "after", "expected"),
    [
        ("0 12 * * *", "UTC", datetime.min.replace(tzinfo=UTC), ["0001-01-01T12:00"]),
        # Jan 1 00:00 of year 1 at +14:00 has no UTC instant: the first run is a year later.
        ("0 0 1 1 *", "Etc/GMT-14", datetime.min.replace(tzinfo=UTC), ["0001-12-31T10:00"]),
        # An `after` whose UTC instant would be before year 1 counts from the first instant.
        (
            "0 12 * * *",
            "UTC",
            datetime(1, 1, 1, 5, tzinfo=ZoneInfo("Asia/Tokyo")),
            ["0001-01-01T12:00"],
        ),
        ("0 12 * * *", "UTC", datetime.max.replace(tzinfo=UTC), []),
        ("0 12 * * *", "UTC", datetime(9999, 12, 31, 23, tzinfo=NEW_YORK), []),
        ("59 23 31 12 *", "Etc/GMT+12", datetime(9999, 1, 2, tzinfo=UTC), []),
    ],
)
def test_the_ends_of_the_calendar_give_what_datetime_can_hold(
    text: str, zone: str, after: datetime, expected: list[str]
) -> None:
    assert next_occurrences(parse_cron(text), ZoneInfo(zone), after, 1) == utcs(*expected)


def test_zero_count_gives_nothing() -> None:
    assert runs("* * * * *", NEW_YORK, "2026-01-01T00:00", 0) == []


# --- Properties against a minute-by-minute oracle ------------------------------------------------


@cache
def transitions(zone: str) -> list[datetime]:
    """Instants in 2020-2030 at which the zone's UTC offset changes."""
    tz = ZoneInfo(zone)
    found = []
    day = utc("2020-01-01T00:00")
    while day.year < 2031:
        following = day + timedelta(days=1)
        if day.astimezone(tz).utcoffset() != following.astimezone(tz).utcoffset():
            low, high = day, following
            while high - low > MINUTE:
                middle = low + (high - low) // 2
                if middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high)
        day = following
    return found


@dataclass(frozen=True)
class Start:
    tz: ZoneInfo
    after: datetime
    hot_hours: tuple[int, ...]  # wall hours a nearby transition skips or repeats, and either side


def transition_hours(tz: ZoneInfo, moment: datetime) -> tuple[int, ...]:
    first, last = sorted(m.astimezone(tz).replace(tzinfo=None) for m in (moment - MINUTE, moment))
    hours, wall = set(), first.replace(minute=0)
    while wall <= last:
        hours.add(wall.hour)
        wall += timedelta(hours=1)
    return tuple(sorted(hours))


@st.composite
def starts(draw: st.DrawFn) -> Start:
    """A zone and a start instant in 2020-2030, often up to a day and a half before a transition."""
    tz = ZoneInfo(draw(st.sampled_from(ZONES)))
    moments = transitions(tz.key)
    hot_hours: tuple[int, ...] = ()
    if moments and draw(st.integers(0, 3)) > 0:
        moment = draw(st.sampled_from(moments))
        start = moment - timedelta(seconds=draw(st.integers(-2 * 3600, 36 * 3600)))
        hot_hours = transition_hours(tz, moment)
    else:
        start = utc("2020-01-01T00:00") + timedelta(seconds=draw(st.integers(0, 11 * 365 * 86400)))
    if draw(st.booleans()):
        start += timedelta(seconds=draw(st.integers(0, 59)), microseconds=draw(st.integers(0, 999)))
    return Start(tz, start.astimezone(draw(st.sampled_from([UTC, tz]))), hot_hours)


@st.composite
def frequent_cases(draw: st.DrawFn, hot_hours: tuple[int, ...]) -> CronCase:
    """Expressions that run often; mostly in just the given hours, half of those at fixed times."""
    case = draw(cron_cases(time_star_chance=0.4, day_star_chance=0.75).filter(fires))
    if not hot_hours or draw(st.integers(0, 3)) == 0:
        return case
    hours = hot_hours
    minute, _, days = case.text.split(" ", 2)
    minutes = case.minutes
    if draw(st.booleans()):
        # Around the ends of 30- and 60-minute shifts (Lord Howe, Chatham at :45).
        minutes = frozenset(
            draw(st.sets(st.sampled_from([0, 1, 15, 29, 30, 44, 45, 59]), min_size=1))
        )
        minute = ",".join(map(str, sorted(minutes)))
    return replace(
        case,
        text=f"{minute} {','.join(map(str, hours))} {days}",
        minutes=minutes,
        hours=frozenset(hours),
        fixed_time="*" not in minute,
    )


def fires(case: CronCase) -> bool:
    try:
        parse_cron(case.text)
    except CronError:
        return False
    return True


def oracle(case: CronCase, tz: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """Runs in (after, until], found by walking UTC minute by minute and reading the wall clock."""

    def matches(wall: datetime) -> bool:
        return (
            case.matches_day(wall.date())
            and wall.hour in case.hours
            and wall.minute in case.minutes
        )

    fired = set()
    instant = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    previous_wall = (instant - MINUTE).astimezone(tz).replace(tzinfo=None, fold=0)
    while instant <= until:
        local = instant.astimezone(tz)
        wall = local.replace(tzinfo=None, fold=0)
        if matches(wall) and not (case.fixed_time and local.fold == 1):
            fired.add(instant)  # fixed-time runs on the first pass of a repeated hour only
        if case.fixed_time:
            skipped = previous_wall + MINUTE  # wall times a forward jump just skipped
            while skipped < wall:
                if matches(skipped):
                    fired.add(instant)
                skipped += MINUTE
        previous_wall = wall
        instant += MINUTE
    return sorted(fired)


@settings(max_examples=250, deadline=None)
@given(starts(), st.data())
def test_runs_match_minute_by_minute_oracle(start: Start, data: st.DataObject) -> None:
    case = data.draw(frequent_cases(start.hot_hours))
    until = start.after + timedelta(days=2)
    expected = oracle(case, start.tz, start.after, until)
    found = next_occurrences(parse_cron(case.text), start.tz, start.after, len(expected) + 1)
    assert found[: len(expected)] == expected
    assert found[len(expected)] > until


@settings(max_examples=200, deadline=None)
@given(cron_cases().filter(fires), starts(), st.integers(1, 40))
def test_runs_are_whole_minutes_strictly_after_start_and_increasing(
    case: CronCase, start: Start, count: int
) -> None:
    tz, after = start.tz, start.after
    expr = parse_cron(case.text)
    found = next_occurrences(expr, tz, after, count)
    assert len(found) == count
    assert found[0] > after
    assert all(earlier < later for earlier, later in pairwise(found))
    assert all(run.tzinfo is UTC and run.second == run.microsecond == 0 for run in found)
    assert next_occurrence(expr, tz, after) == found[0]


# --- Work: the search goes straight from one allowed day to the next -----------------------------


class CountingZone(ZoneInfo):
    """The zone of that name, counting how often the search reads its UTC offset."""

    readings: int

    def utcoffset(self, dt: datetime | None, /) -> timedelta | None:
        self.readings += 1
        return super().utcoffset(dt)


def counting_zone(name: str) -> CountingZone:
    zone = CountingZone.no_cache(name)
    zone.readings = 0
    return zone


@pytest.fixture
def examined_months(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(year, month) of every month the search looks into for an allowed day."""
    seen: list[tuple[int, int]] = []
    look_into = occurrences._first_day_in_month

    def counting(plan: Any, year: int, month: int, first: int) -> date | None:
        seen.append((year, month))
        return look_into(plan, year, month, first)

    monkeypatch.setattr(occurrences, "_first_day_in_month", counting)
    return seen


def test_an_expression_that_never_fires_gives_nothing_without_searching(
    examined_months: list[tuple[int, int]],
) -> None:
    # parse_cron rejects this; built by hand to show the search does not start.
    never = replace(parse_cron("0 0 1 2 *"), days_of_month=frozenset({30}))
    zone = counting_zone("America/New_York")
    assert next_occurrence(never, zone, utc("2026-01-01T00:00")) is None
    assert (examined_months, zone.readings) == ([], 0)


def test_leap_day_runs_look_only_into_leap_years_februaries(
    examined_months: list[tuple[int, int]],
) -> None:
    zone = counting_zone("America/New_York")
    found = next_occurrences(parse_cron("0 0 29 2 *"), zone, utc("2026-01-01T00:00"), 100)
    assert len(found) == 100
    assert all(run.astimezone(NEW_YORK).strftime("%m-%d %H:%M") == "02-29 00:00" for run in found)
    assert (found[17].year, found[18].year) == (2096, 2104)  # 2100 is not a leap year
    assert {month for _, month in examined_months} == {2}
    assert all(calendar.isleap(year) for year, _ in examined_months)
    assert len(examined_months) <= 2 * 100 + 2  # the month of a run, then past its end
    assert zone.readings <= 2 * 100 + 10  # one steady hour per run: two readings


def test_day_31_in_few_months_looks_only_into_the_listed_months(
    examined_months: list[tuple[int, int]],
) -> None:
    found = runs("0 0 31 2,4,6,7 *", ZoneInfo("UTC"), "2026-08-01T00:00", 10)
    assert found == [utc(f"{year}-07-31T00:00") for year in range(2027, 2037)]
    assert {month for _, month in examined_months} <= {2, 4, 6, 7}
    assert len(examined_months) <= 5 * (10 + 2)  # five a year, and the years at either end


def test_a_hundred_minutely_runs_across_a_repeated_hour_read_the_zone_little(
    examined_months: list[tuple[int, int]],
) -> None:
    zone = counting_zone("America/New_York")
    found = next_occurrences(parse_cron("* * * * *"), zone, utc("2026-11-01T05:30"), 100)
    assert found == [utc("2026-11-01T05:31") + n * MINUTE for n in range(100)]
    # The repeated hour costs two readings a minute; the other hours two each.
    assert zone.readings <= 2 * 60 + 2 * 5 + 10
    assert len(examined_months) <= 3


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_search_looks_into_a_bounded_number_of_months_per_run(data: st.DataObject) -> None:
    # Never stepping through impossible years: a run's month is at most 12 months past the
    # previous run's (day 31 in February, April, June, September, November and December only).
    case = data.draw(st.one_of(cron_cases(), rare_cases()).filter(fires))
    start = data.draw(starts())
    seen: list[int] = []
    look_into = occurrences._first_day_in_month

    def counting(plan: Any, year: int, month: int, first: int) -> date | None:
        seen.append(month)
        return look_into(plan, year, month, first)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(occurrences, "_first_day_in_month", counting)
        found = next_occurrences(parse_cron(case.text), start.tz, start.after, 30)
    assert len(found) == 30
    assert len(seen) <= 13 * (len(found) + 3)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(cron_cases(day_star_chance=0.2), rare_cases()).filter(fires),
    st.datetimes(datetime(1990, 1, 1), datetime(2110, 1, 1)),
)
def test_utc_runs_are_the_matching_minutes_of_a_day_by_day_walk(
    case: CronCase, start: datetime
) -> None:
    after = start.replace(tzinfo=UTC)
    found = next_occurrences(parse_cron(case.text), ZoneInfo("UTC"), after, 8)
    times = sorted((hour, minute) for hour in case.hours for minute in case.minutes)
    expected: list[datetime] = []
    day = after.date()
    while len(expected) < 8:
        if case.matches_day(day):
            for hour, minute in times:
                run = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
                if run > after and len(expected) < 8:
                    expected.append(run)
        day += timedelta(days=1)
    assert found == expected
