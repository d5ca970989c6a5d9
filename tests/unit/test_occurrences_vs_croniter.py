"""Next run times checked against croniter, an independent implementation of cron.

Where no daylight saving applies (UTC and the fixed-offset zones Etc/GMT±N) our next five runs
must equal croniter's for every valid expression: numbers, ranges, steps, lists, month and day
names in any case, 7 for Sunday, and macros. The generator keeps to what both accept alike:

- day-of-month and day-of-week are never both restricted (we refuse that; cron would run when
  either matches);
- expressions our parser refuses (such as `0 0 30 2 *`, which never fires) are left out;
- a range never starts and ends on the same value: croniter reads `22-22` as a range that wraps
  round the whole field (every hour), where we, like Debian cron, read it as 22; such a range is
  written as the single number instead.

Where daylight saving applies, our policy (Debian cron's) stands and croniter differs:
croniter runs a fixed time twice when the clock goes back over it, we run it once, on the first
pass. The examples at the end show that difference, and agreement on a skipped hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_host.domain.cron import CronError, parse_cron
from scheduler_host.domain.occurrences import next_occurrences

FIXED_OFFSET_ZONES = ("UTC", "Etc/GMT+5", "Etc/GMT-5", "Etc/GMT+12", "Etc/GMT-14", "Etc/GMT-9")
MACROS = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")


@dataclass(frozen=True)
class Field:
    low: int
    high: int  # highest number accepted (day-of-week takes 7 for Sunday)
    size: int  # values "*" spans; also the largest step
    names: tuple[str, ...] = ()  # names[i] stands for low + i


MINUTE = Field(0, 59, 60)
HOUR = Field(0, 23, 24)
DAY_OF_MONTH = Field(1, 31, 31)
MONTH = Field(
    1, 12, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
)
DAY_OF_WEEK = Field(0, 7, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))


@st.composite
def items(draw: st.DrawFn, field: Field) -> str:
    """A number, a range, a range with a step, or a step over *, with names now and then."""

    def token(value: int) -> str:
        if value - field.low < len(field.names) and draw(st.booleans()):
            name = field.names[value - field.low]
            return draw(st.sampled_from([name, name.lower(), name.title()]))
        return str(value)

    kind = draw(st.sampled_from(["number", "range", "range_step", "star_step"]))
    if kind == "star_step":
        return f"*/{draw(st.integers(1, field.size))}"
    first = draw(st.integers(field.low, field.high))
    last = draw(st.integers(first, field.high))
    if kind == "number" or last == first:  # `a-a` means the whole field to croniter
        return token(first)
    text = f"{token(first)}-{token(last)}"
    return text if kind == "range" else f"{text}/{draw(st.integers(1, field.size))}"


@st.composite
def fields(draw: st.DrawFn, field: Field, star_chance: float) -> str:
    if draw(st.floats(0, 1)) < star_chance:
        return "*"
    return ",".join(draw(st.lists(items(field), min_size=1, max_size=3)))


@st.composite
def expressions(draw: st.DrawFn) -> str:
    """Valid expressions: at most one day field restricted, and one that our parser accepts."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(MACROS))
    restricted = draw(st.sampled_from(["neither", "day-of-month", "day-of-week"]))
    dom = draw(fields(DAY_OF_MONTH, 0)) if restricted == "day-of-month" else "*"
    dow = draw(fields(DAY_OF_WEEK, 0)) if restricted == "day-of-week" else "*"
    minute, hour = draw(fields(MINUTE, 0.25)), draw(fields(HOUR, 0.25))
    return f"{minute} {hour} {dom} {draw(fields(MONTH, 0.5))} {dow}"


def accepted(text: str) -> bool:
    try:
        parse_cron(text)
    except CronError:
        return False
    return True


def croniter_runs(text: str, zone: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    runs = croniter(text, after.astimezone(zone))
    found: list[datetime] = []
    for _ in range(count):
        run: datetime = runs.get_next(datetime)
        found.append(run.astimezone(UTC))
    return found


def our_runs(text: str, zone: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    return next_occurrences(parse_cron(text), zone, after, count)


@settings(max_examples=400)
@given(
    expressions().filter(accepted),
    st.sampled_from(FIXED_OFFSET_ZONES),
    st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)),
)
def test_without_daylight_saving_our_next_runs_are_croniters(
    text: str, zone_name: str, after: datetime
) -> None:
    zone = ZoneInfo(zone_name)
    assert our_runs(text, zone, after, 5) == croniter_runs(text, zone, after, 5)


@pytest.mark.parametrize(
    ("text", "zone_name", "after"),
    [
        ("0 0 29 2 *", "UTC", "2097-01-01T00:00"),  # across 2100, not a leap year
        ("59 23 31 12 *", "Etc/GMT-14", "2026-12-31T09:59"),
        ("0 12 * 2 mon", "Etc/GMT+12", "2026-01-01T00:00"),
        ("*/7 1-23/11 */10 JAN-dec/5 *", "Etc/GMT+5", "2026-01-01T00:00"),
        ("0 0 * * 5-7", "UTC", "2026-01-01T00:00"),
        ("@weekly", "Etc/GMT-9", "2026-01-01T00:00"),
    ],
)
def test_worst_cases_agree_with_croniter(text: str, zone_name: str, after: str) -> None:
    zone, start = ZoneInfo(zone_name), datetime.fromisoformat(after).replace(tzinfo=UTC)
    assert our_runs(text, zone, start, 10) == croniter_runs(text, zone, start, 10)


def test_croniter_reads_a_range_of_one_value_as_the_whole_field() -> None:
    # Why the generator writes `a-a` as `a`.
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert our_runs("0 22-22 * * *", ZoneInfo("UTC"), start, 1) == [
        datetime(2026, 1, 1, 22, tzinfo=UTC)
    ]
    assert croniter_runs("0 22-22 * * *", ZoneInfo("UTC"), start, 1) == [
        datetime(2026, 1, 1, 1, tzinfo=UTC)
    ]


# --- Daylight saving: where croniter and our policy part ------------------------------------------


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "zone_name", "after", "ours", "croniters"),
    [
        # New York 2026-11-01: 02:00 EDT -> 01:00 EST, so 01:30 comes twice.
        (
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00",
            ["2026-11-01T05:30", "2026-11-02T06:30"],
            ["2026-11-01T05:30", "2026-11-01T06:30"],
        ),
        # Lord Howe 2026-04-05: 02:00 -> 01:30 (+11:00 -> +10:30), so 01:45 comes twice.
        (
            "45 1 * * *",
            "Australia/Lord_Howe",
            "2026-04-04T12:00",
            ["2026-04-04T14:45", "2026-04-05T15:15"],
            ["2026-04-04T14:45", "2026-04-04T15:15"],
        ),
    ],
)
def test_a_fixed_time_in_a_repeated_hour_runs_once_here_and_twice_in_croniter(
    text: str, zone_name: str, after: str, ours: list[str], croniters: list[str]
) -> None:
    zone = ZoneInfo(zone_name)
    assert our_runs(text, zone, utc(after), 2) == [utc(run) for run in ours]
    assert croniter_runs(text, zone, utc(after), 2) == [utc(run) for run in croniters]


@pytest.mark.parametrize(
    ("text", "zone_name", "after"),
    [
        ("0,30 2 * * *", "America/New_York", "2026-03-08T00:00"),  # skipped: both at the jump
        ("*/30 * * * *", "America/New_York", "2026-11-01T04:45"),  # not fixed: both passes
        ("30 0 * * *", "America/Santiago", "2026-09-05T00:00"),  # midnight skipped
    ],
)
def test_skipped_hours_and_repeated_wildcard_hours_agree(
    text: str, zone_name: str, after: str
) -> None:
    zone = ZoneInfo(zone_name)
    assert our_runs(text, zone, utc(after), 5) == croniter_runs(text, zone, utc(after), 5)
