"""Cron parsing, validation and shortest interval, checked against examples and a brute force."""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, replace
from datetime import date, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_host.domain.cron import (
    MAX_CRON_LENGTH,
    CronError,
    parse_cron,
    shortest_interval,
    validate_cron,
)

ALL_MINUTES = frozenset(range(60))
ALL_HOURS = frozenset(range(24))
ALL_DAYS = frozenset(range(1, 32))
ALL_MONTHS = frozenset(range(1, 13))
ALL_WEEKDAYS = frozenset(range(7))


# --- Strategy: cron texts built from parts, with the value sets they must mean -------------------


@dataclass(frozen=True)
class FieldSpec:
    low: int
    high: int  # highest number accepted on input
    size: int  # values "*" spans
    names: tuple[str, ...] = ()
    favourites: tuple[int, ...] = ()  # values drawn more often (e.g. hours of DST transitions)


MINUTE = FieldSpec(0, 59, 60, favourites=(0, 30, 45, 59))
HOUR = FieldSpec(0, 23, 24, favourites=(0, 1, 2, 3, 23))
DAY_OF_MONTH = FieldSpec(1, 31, 31, favourites=(1, 28, 29, 30, 31))
MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
MONTH = FieldSpec(1, 12, 12, MONTH_NAMES, favourites=(2, 4, 12))
DAY_OF_WEEK = FieldSpec(0, 7, 7, DAY_NAMES, favourites=(0, 7))


@dataclass(frozen=True)
class CronCase:
    """A generated expression and what it must mean, known independently of the parser."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]
    dom_star: bool
    dow_star: bool
    fixed_time: bool

    def matches_day(self, day: date) -> bool:
        return (
            day.month in self.months
            and (self.dom_star or day.day in self.days_of_month)
            and (self.dow_star or day.isoweekday() % 7 in self.days_of_week)
        )


@st.composite
def field_items(draw: st.DrawFn, spec: FieldSpec) -> tuple[str, set[int]]:
    def number() -> int:
        if draw(st.booleans()) and spec.favourites:
            return draw(st.sampled_from(spec.favourites))
        return draw(st.integers(spec.low, spec.high))

    def token(value: int) -> str:
        if value - spec.low < len(spec.names) and draw(st.booleans()):
            name = spec.names[value - spec.low]
            return draw(st.sampled_from([name, name.lower(), name.title()]))
        return str(value)

    kind = draw(st.sampled_from(["number", "number", "range", "range_step", "star_step"]))
    step = draw(st.integers(1, spec.size))
    if kind == "star_step":
        return f"*/{step}", set(range(spec.low, spec.low + spec.size, step))
    first = number()
    if kind == "number":
        return token(first), {first}
    last = draw(st.integers(first, spec.high))
    text = f"{token(first)}-{token(last)}"
    if kind == "range":
        return text, set(range(first, last + 1))
    return f"{text}/{step}", set(range(first, last + 1, step))


@st.composite
def fields(
    draw: st.DrawFn, spec: FieldSpec, star_chance: float = 0.5
) -> tuple[str, frozenset[int]]:
    if draw(st.floats(0, 1)) < star_chance:
        return "*", frozenset(range(spec.low, spec.low + spec.size))
    items = draw(st.lists(field_items(spec), min_size=1, max_size=3))
    values = set().union(*(values for _, values in items))
    # Day-of-week 7 is Sunday.
    wrapped = {v - spec.size if v >= spec.low + spec.size else v for v in values}
    return ",".join(text for text, _ in items), frozenset(wrapped)


@st.composite
def cron_cases(
    draw: st.DrawFn, time_star_chance: float = 0.25, day_star_chance: float = 0.5
) -> CronCase:
    """Valid-syntax expressions, some never firing (Feb 30); at most one day field restricted."""
    minute, minutes = draw(fields(MINUTE, time_star_chance))
    hour, hours = draw(fields(HOUR, time_star_chance))
    month, months = draw(fields(MONTH, day_star_chance))
    dom, days_of_month = "*", ALL_DAYS
    dow, days_of_week = "*", ALL_WEEKDAYS
    if draw(st.floats(0, 1)) >= day_star_chance:
        if draw(st.booleans()):
            dom, days_of_month = draw(fields(DAY_OF_MONTH, star_chance=0))
        else:
            dow, days_of_week = draw(fields(DAY_OF_WEEK, star_chance=0))
    return CronCase(
        text=f"{minute} {hour} {dom} {month} {dow}",
        minutes=minutes,
        hours=hours,
        days_of_month=days_of_month,
        months=months,
        days_of_week=days_of_week,
        dom_star=dom == "*",
        dow_star=dow == "*",
        fixed_time="*" not in minute and "*" not in hour,
    )


def brute_force_shortest_gap(case: CronCase, first_year: int, years: int) -> int | None:
    """Shortest gap in minutes between consecutive runs over whole years; None if none fire."""
    # Every allowed day runs at the same times: find them minute by minute once, then walk the
    # calendar day by day, joining each allowed day to the previous one.
    times = [m for m in range(24 * 60) if m // 60 in case.hours and m % 60 in case.minutes]
    gaps = [b - a for a, b in pairwise(times)]
    day, end = date(first_year, 1, 1), date(first_year + years, 1, 1)
    previous_last: int | None = None
    while day < end:
        if case.matches_day(day):
            start = day.toordinal() * 24 * 60
            if previous_last is not None:
                gaps.append(start + times[0] - previous_last)
            previous_last = start + times[-1]
        day += timedelta(days=1)
    return min(gaps) if previous_last is not None else None


# --- Accepted syntax -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minutes", "hours", "days_of_month", "months", "days_of_week"),
    [
        ("* * * * *", ALL_MINUTES, ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
        ("5 4 * * *", {5}, {4}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
        ("0,15,30 1-3 * * *", {0, 15, 30}, {1, 2, 3}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
        ("*/20 */6 * * *", {0, 20, 40}, {0, 6, 12, 18}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
        ("10-30/10 0 1,15 * *", {10, 20, 30}, {0}, {1, 15}, ALL_MONTHS, ALL_WEEKDAYS),
        ("0 0 * 1-12/3 *", {0}, {0}, ALL_DAYS, {1, 4, 7, 10}, ALL_WEEKDAYS),
        ("0 0 * * 1-5", {0}, {0}, ALL_DAYS, ALL_MONTHS, {1, 2, 3, 4, 5}),
        ("59 23 31 12 *", {59}, {23}, {31}, {12}, ALL_WEEKDAYS),
        ("05 007 * * *", {5}, {7}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
        ("0 0 * * 0-7/2", {0}, {0}, ALL_DAYS, ALL_MONTHS, {0, 2, 4, 6}),
        ("*/60 */24 */31 */12 *", {0}, {0}, {1}, {1}, ALL_WEEKDAYS),
    ],
)
def test_parses_fields_into_value_sets(
    text: str,
    minutes: Set[int],
    hours: Set[int],
    days_of_month: Set[int],
    months: Set[int],
    days_of_week: Set[int],
) -> None:
    expr = parse_cron(text)
    assert (expr.minutes, expr.hours, expr.days_of_month, expr.months, expr.days_of_week) == (
        minutes,
        hours,
        days_of_month,
        months,
        days_of_week,
    )


def test_trims_surrounding_whitespace_and_keeps_the_trimmed_source() -> None:
    expr = parse_cron("  \t0  12\t* *   1-5 \n")
    assert expr.source == "0  12\t* *   1-5"
    assert expr.hours == {12}


def test_accepts_exactly_max_length_after_trimming() -> None:
    text = "0" + " " * (MAX_CRON_LENGTH - 8) + "0 * * *"
    assert len(text) == MAX_CRON_LENGTH
    assert parse_cron(f"   {text}   ").source == text


@pytest.mark.parametrize(
    ("text", "months", "days_of_week"),
    [
        ("0 0 * JAN,jun,Dec *", {1, 6, 12}, ALL_WEEKDAYS),
        ("0 0 * jan-MAR *", {1, 2, 3}, ALL_WEEKDAYS),
        ("0 0 * FEB-dec/5 *", {2, 7, 12}, ALL_WEEKDAYS),
        ("0 0 * * MON-FRI", ALL_MONTHS, {1, 2, 3, 4, 5}),
        ("0 0 * * sun,Sat", ALL_MONTHS, {0, 6}),
        ("0 0 * * MON-6", ALL_MONTHS, {1, 2, 3, 4, 5, 6}),
    ],
)
def test_accepts_month_and_day_names_in_any_case(
    text: str, months: Set[int], days_of_week: Set[int]
) -> None:
    expr = parse_cron(text)
    assert (expr.months, expr.days_of_week) == (months, days_of_week)


@pytest.mark.parametrize(
    ("text", "days_of_week"),
    [("0 0 * * 7", {0}), ("0 0 * * 5-7", {5, 6, 0}), ("0 0 * * 0,7", {0}), ("0 0 * * */7", {0})],
)
def test_day_of_week_seven_means_sunday(text: str, days_of_week: set[int]) -> None:
    assert parse_cron(text).days_of_week == days_of_week


@pytest.mark.parametrize(
    ("macro", "equivalent"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
        ("  @Weekly ", "0 0 * * 0"),
    ],
)
def test_macros_mean_their_five_field_form_and_keep_their_source(
    macro: str, equivalent: str
) -> None:
    expr, expected = parse_cron(macro), parse_cron(equivalent)
    assert expr.source == macro.strip()
    assert expr == replace(expected, source=macro.strip())


@pytest.mark.parametrize(
    ("text", "fixed_time"),
    [
        ("30 2 * * *", True),
        ("0,30 1-3 * * *", True),
        ("0-59 0-23 * * *", True),
        ("@daily", True),
        ("* 2 * * *", False),
        ("30 * * * *", False),
        ("*/15 2 * * *", False),
        ("0 */2 * * *", False),
        ("@hourly", False),
    ],
)
def test_fixed_time_means_no_star_in_minute_or_hour(text: str, fixed_time: bool) -> None:
    assert parse_cron(text).is_fixed_time is fixed_time


@pytest.mark.parametrize(
    ("text", "dom_restricted", "dow_restricted"),
    [
        ("0 0 * * *", False, False),
        ("0 0 1 * *", True, False),
        ("0 0 */1 * *", True, False),
        ("0 0 * * MON", False, True),
        ("0 0 * * 0-6", False, True),
        ("@monthly", True, False),
        ("@weekly", False, True),
    ],
)
def test_a_day_field_is_restricted_unless_it_is_a_lone_star(
    text: str, dom_restricted: bool, dow_restricted: bool
) -> None:
    expr = parse_cron(text)
    assert (expr.dom_restricted, expr.dow_restricted) == (dom_restricted, dow_restricted)


@pytest.mark.parametrize(
    ("text", "day", "matches"),
    [
        ("0 0 * * *", date(2026, 3, 8), True),
        ("0 0 13 * *", date(2026, 3, 13), True),
        ("0 0 13 * *", date(2026, 3, 14), False),
        ("0 0 * * FRI", date(2026, 3, 13), True),  # a Friday
        ("0 0 * * FRI", date(2026, 3, 14), False),
        ("0 0 * * 7", date(2026, 3, 8), True),  # a Sunday
        ("0 0 * MAR *", date(2026, 4, 8), False),
        ("0 0 29 2 *", date(2028, 2, 29), True),
    ],
)
def test_matches_day_checks_month_and_the_restricted_day_field(
    text: str, day: date, matches: bool
) -> None:
    assert parse_cron(text).matches_day(day) is matches


# --- Rejected syntax, one rule per test ----------------------------------------------------------


def assert_rejected(text: str, reason: str, message_part: str = "") -> None:
    with pytest.raises(CronError) as caught:
        parse_cron(text)
    assert isinstance(caught.value, ValueError)
    assert caught.value.reason == reason
    assert message_part in str(caught.value)


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_rejects_empty_expression(text: str) -> None:
    assert_rejected(text, "CRON_INVALID", "empty")


def test_rejects_expression_longer_than_max_length() -> None:
    text = "0" + " " * (MAX_CRON_LENGTH - 7) + "0 * * *"
    assert_rejected(text, "CRON_INVALID", "maximum is 128")


@pytest.mark.parametrize("text", ["* * * *", "* * * * * *", "0 0 * * * 2026", "0"])
def test_rejects_anything_but_five_fields(text: str) -> None:
    assert_rejected(text, "CRON_INVALID", "expected 5 fields")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("61 * * * *", "minute value 61 is out of range 0-59"),
        ("60 * * * *", "minute value 60 is out of range 0-59"),
        ("0 24 * * *", "hour value 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month value 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month value 32 is out of range 1-31"),
        ("0 0 * 0 *", "month value 0 is out of range 1-12"),
        ("0 0 * 13 *", "month value 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week value 8 is out of range 0-7"),
        ("0-60 * * * *", "minute value 60 is out of range 0-59"),
        ("0 0 * * 1-8/2", "day-of-week value 8 is out of range 0-7"),
    ],
)
def test_rejects_numbers_outside_the_field_range(text: str, message: str) -> None:
    assert_rejected(text, "CRON_INVALID", message)


@pytest.mark.parametrize("text", ["5-3 * * * *", "0 0 * DEC-JAN *", "0 0 * * FRI-MON"])
def test_rejects_reversed_ranges(text: str) -> None:
    assert_rejected(text, "CRON_INVALID", "runs backwards")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*/0 * * * *", "minute step 0 is out of range 1-60"),
        ("*/61 * * * *", "minute step 61 is out of range 1-60"),
        ("0 */25 * * *", "hour step 25 is out of range 1-24"),
        ("0 0 * * */8", "day-of-week step 8 is out of range 1-7"),
        ("0 0 1-5/32 * *", "day-of-month step 32 is out of range 1-31"),
        ("5/15 * * * *", "needs a range or *"),
        ("0 0 * JAN/2 *", "needs a range or *"),
        ("*/ * * * *", "is not a number, range or step"),
        ("/5 * * * *", "is not a number, range or step"),
        ("*/x * * * *", "is not a number, range or step"),
        ("*/5/5 * * * *", "is not a number, range or step"),
    ],
)
def test_rejects_steps_that_are_missing_out_of_bounds_or_without_range(
    text: str, message: str
) -> None:
    assert_rejected(text, "CRON_INVALID", message)


@pytest.mark.parametrize(
    "text",
    [
        "? * * * *",
        "0 0 L * *",
        "0 0 15W * *",
        "0 0 * * 5#3",
        "0 0 * * 5L",
        "1,,2 * * * *",
        "1, * * * *",
        ",1 * * * *",
        "+5 * * * *",
        "-5 * * * *",
        "1.5 * * * *",
        "*,5 * * * *",
        "0 0 * * 1-5,*",
        "** * * * *",
        "1--3 * * * *",
        "MON * * * *",
        "0 JAN * * *",
        "0 0 MON * *",
        "0 0 * MON *",
        "0 0 * * JAN",
        "0 0 * * SUNDAY",
        "0 0 * JANUARY *",
        "\u0663 * * * *",  # an Arabic-Indic digit
        "0 0 * * \uff11",  # a full-width digit
    ],
)
def test_rejects_other_syntax(text: str) -> None:
    assert_rejected(text, "CRON_INVALID")


@pytest.mark.parametrize("text", ["@reboot", "@every 5m", "@", "@daily 5", "@ daily", "@week"])
def test_rejects_unknown_macros(text: str) -> None:
    assert_rejected(text, "CRON_INVALID", "unknown macro")


@pytest.mark.parametrize(
    "text", ["0 0 1 * 1", "0 0 */2 * 1", "0 0 1-31 * 0-6", "0 0 15 * MON-FRI", "0 0 */1 * */1"]
)
def test_rejects_both_day_fields_restricted(text: str) -> None:
    assert_rejected(text, "CRON_DOM_AND_DOW", "both restricted")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0 30 2 *", "never fires: day-of-month 30 does not exist in month 2"),
        ("0 0 30,31 FEB *", "never fires: day-of-month 30,31 does not exist in month 2"),
        ("0 0 31 4,6,9,11 *", "never fires: day-of-month 31 does not exist in month 4,6,9,11"),
    ],
)
def test_rejects_expressions_that_never_fire(text: str, message: str) -> None:
    assert_rejected(text, "CRON_INVALID", message)


def test_accepts_february_29th_which_fires_in_leap_years() -> None:
    assert parse_cron("0 0 29 2 *").days_of_month == {29}


# --- Shortest interval ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("*/5 * * * *", timedelta(minutes=5)),
        ("*/4 * * * *", timedelta(minutes=4)),
        ("0-59 * * * *", timedelta(minutes=1)),
        ("0,1 * * * *", timedelta(minutes=1)),
        ("59,0 * * * *", timedelta(minutes=1)),  # 59 then 0 of the next hour
        ("*/7 * * * *", timedelta(minutes=4)),  # 56 then 0 of the next hour
        ("1-59/5 * * * *", timedelta(minutes=5)),
        ("0 * * * *", timedelta(hours=1)),
        ("0 0,23 * * *", timedelta(hours=1)),  # 23:00 then 00:00 the next day
        ("30 23 * * *", timedelta(days=1)),
        ("0 0 * * *", timedelta(days=1)),
        ("0 0 * * 1-5", timedelta(days=1)),
        ("0 22 * * MON,FRI", timedelta(days=3)),
        ("@weekly", timedelta(days=7)),
        ("0 0 1 * *", timedelta(days=28)),
        ("0 0 29 * *", timedelta(days=29)),  # Feb 29 to Mar 29 in a leap year
        ("0 0 31 * *", timedelta(days=31)),
        ("0 0 31 1,3 *", timedelta(days=59)),  # across a common-year February
        ("0 0 1,31 * *", timedelta(days=1)),
        ("0 0 1 2,8 *", timedelta(days=181)),
        ("0 0 1 1 *", timedelta(days=365)),
        ("0 0 29 2 *", timedelta(days=1461)),  # leap years only
        ("0 0 29-31 2 *", timedelta(days=1461)),
        ("0 0,12 29 2 *", timedelta(hours=12)),
        ("0 0 * 2 *", timedelta(days=1)),
    ],
)
def test_shortest_interval_is_the_smallest_gap_between_runs(text: str, interval: timedelta) -> None:
    assert shortest_interval(parse_cron(text)) == interval


@st.composite
def rare_cases(draw: st.DrawFn) -> CronCase:
    """One time of day, so that gaps between days decide the interval; often one day of a month."""
    case = draw(cron_cases(day_star_chance=0.2))
    minute, hour = draw(st.integers(0, 59)), draw(st.integers(0, 23))
    case = replace(case, minutes=frozenset({minute}), hours=frozenset({hour}), fixed_time=True)
    day_fields = case.text.split(" ", 2)[2]
    if draw(st.booleans()):
        day, month = draw(st.sampled_from([1, 28, 29, 30, 31])), draw(st.integers(1, 12))
        day_fields = f"{day} {month} *"
        case = replace(
            case,
            days_of_month=frozenset({day}),
            months=frozenset({month}),
            days_of_week=ALL_WEEKDAYS,
            dom_star=False,
            dow_star=True,
        )
    return replace(case, text=f"{minute} {hour} {day_fields}")


@settings(max_examples=250, deadline=None)
@given(st.one_of(cron_cases(), rare_cases()))
def test_parse_and_shortest_interval_agree_with_brute_force(case: CronCase) -> None:
    # Six years from 2023 hold every pattern of common and leap years next to each other,
    # and two Feb 29ths.
    gap = brute_force_shortest_gap(case, first_year=2023, years=6)
    if gap is None:
        with pytest.raises(CronError) as caught:
            parse_cron(case.text)
        assert caught.value.reason == "CRON_INVALID"
        return
    expr = parse_cron(case.text)
    assert (expr.minutes, expr.hours, expr.months) == (case.minutes, case.hours, case.months)
    assert (expr.days_of_month, expr.days_of_week) == (case.days_of_month, case.days_of_week)
    assert (expr.dom_restricted, expr.dow_restricted) == (not case.dom_star, not case.dow_star)
    assert expr.is_fixed_time is case.fixed_time
    assert shortest_interval(expr) == timedelta(minutes=gap)


# --- Validation ----------------------------------------------------------------------------------


def test_validate_accepts_an_interval_equal_to_the_minimum() -> None:
    assert validate_cron("*/5 * * * *", 300).minutes == set(range(0, 60, 5))


@pytest.mark.parametrize("text", ["*/4 * * * *", "0-59 * * * *", "0,1 * * * *", "59,0 * * * *"])
def test_validate_rejects_expressions_that_run_too_often(text: str) -> None:
    with pytest.raises(CronError) as caught:
        validate_cron(text, 300)
    assert caught.value.reason == "CRON_TOO_FREQUENT"
    assert "minimum interval is 300 seconds" in str(caught.value)


def test_validate_reports_syntax_problems_before_frequency() -> None:
    with pytest.raises(CronError) as caught:
        validate_cron("* * 1 * 1", 300)
    assert caught.value.reason == "CRON_DOM_AND_DOW"


def test_cron_error_message_is_its_text() -> None:
    error = CronError("CRON_INVALID", "minute value 61 is out of range 0-59")
    assert (error.reason, str(error)) == ("CRON_INVALID", "minute value 61 is out of range 0-59")
