"""Cron expressions: the accepted 5-field syntax, its validation, and the shortest interval.

Evaluation in a time zone (and the daylight-saving policy) lives in `occurrences`.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

CRON_INVALID = "CRON_INVALID"
CRON_DOM_AND_DOW = "CRON_DOM_AND_DOW"
CRON_TOO_FREQUENT = "CRON_TOO_FREQUENT"

MAX_CRON_LENGTH = 128


class CronError(ValueError):
    """A cron expression that cannot be accepted. `reason` is a machine code."""

    reason: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CronExpression:
    """A parsed cron expression: the values each field allows and the flags cron semantics need."""

    source: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday
    dom_restricted: bool
    dow_restricted: bool
    is_fixed_time: bool

    def matches_day(self, d: datetime.date) -> bool:
        """Whether the expression fires on calendar day `d` (at some time of that day)."""
        # An unrestricted day field holds every value, so requiring both fields is cron's
        # "either restricted field" rule whenever at most one is restricted (as parse_cron ensures).
        return (
            d.month in self.months
            and d.day in self.days_of_month
            and d.isoweekday() % 7 in self.days_of_week
        )


@dataclass(frozen=True)
class _Field:
    label: str
    low: int
    high: int  # highest number accepted on input (day-of-week takes 7 for Sunday)
    size: int  # how many values "*" spans; also the largest step
    names: tuple[str, ...] = ()  # names[i] stands for low + i


_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_FIELDS = (
    _Field("minute", 0, 59, 60),
    _Field("hour", 0, 23, 24),
    _Field("day-of-month", 1, 31, 31),
    _Field("month", 1, 12, 12, _MONTH_NAMES),
    _Field("day-of-week", 0, 7, 7, _DAY_NAMES),
)

_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

# ASCII classes on purpose: \d and str.isdigit would let other scripts' digits through.
_ITEM = re.compile(
    r"(?:(?P<star>\*)|(?P<first>[0-9]+|[A-Za-z]+)(?:-(?P<last>[0-9]+|[A-Za-z]+))?)"
    r"(?:/(?P<step>[0-9]+))?"
)
_LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MINUTES_PER_DAY = 24 * 60
_FOUR_YEARS = 3 * 365 + 366  # days from a leap year's day to the same day of the next


# Parsed expressions are immutable and few distinct ones are in use, while every create, update
# and dispatched run parses one: keep the recent ones (refusals are not cached).
@lru_cache(maxsize=4096)
def parse_cron(text: str) -> CronExpression:
    """Parse a 5-field expression or macro; raises CronError CRON_INVALID or CRON_DOM_AND_DOW."""
    source = text.strip()
    if not source:
        raise CronError(CRON_INVALID, "cron expression is empty")
    if len(source) > MAX_CRON_LENGTH:
        raise CronError(
            CRON_INVALID,
            f"cron expression is {len(source)} characters long; the maximum is {MAX_CRON_LENGTH}",
        )
    body = source
    if source.startswith("@"):
        if source.lower() not in _MACROS:
            raise CronError(
                CRON_INVALID, f"unknown macro {source!r}; expected one of {', '.join(_MACROS)}"
            )
        body = _MACROS[source.lower()]
    texts = body.split()
    if len(texts) != len(_FIELDS):
        raise CronError(
            CRON_INVALID,
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(texts)}",
        )
    minutes, hours, days_of_month, months, days_of_week = (
        _parse_field(field_text, field) for field_text, field in zip(texts, _FIELDS, strict=True)
    )
    dom_restricted, dow_restricted = texts[2] != "*", texts[4] != "*"
    if dom_restricted and dow_restricted:
        raise CronError(
            CRON_DOM_AND_DOW,
            "day-of-month and day-of-week are both restricted (cron would run when either "
            "matches); set one of them to *",
        )
    if not any(day <= _LONGEST_MONTH[month - 1] for day in days_of_month for month in months):
        raise CronError(
            CRON_INVALID,
            f"expression never fires: day-of-month {_listing(days_of_month)} does not exist "
            f"in month {_listing(months)}",
        )
    return CronExpression(
        source=source,
        minutes=minutes,
        hours=hours,
        days_of_month=days_of_month,
        months=months,
        days_of_week=days_of_week,
        dom_restricted=dom_restricted,
        dow_restricted=dow_restricted,
        is_fixed_time="*" not in texts[0] and "*" not in texts[1],
    )


def validate_cron(text: str, min_interval_seconds: int) -> CronExpression:
    """Parse `text` and reject it (CRON_TOO_FREQUENT) if two runs can be closer than the minimum."""
    expr = parse_cron(text)
    interval = shortest_interval(expr)
    if interval < datetime.timedelta(seconds=min_interval_seconds):
        raise CronError(
            CRON_TOO_FREQUENT,
            f"expression can run every {int(interval.total_seconds())} seconds; "
            f"the minimum interval is {min_interval_seconds} seconds",
        )
    return expr


@lru_cache(maxsize=4096)
def shortest_interval(expr: CronExpression) -> datetime.timedelta:
    """Shortest wall-clock gap between two consecutive occurrences (daylight saving ignored)."""
    times = sorted(hour * 60 + minute for hour in expr.hours for minute in expr.minutes)
    day_gap = _shortest_day_gap(expr.days_of_month, expr.months, expr.days_of_week)
    # Every allowed day has the same times, so across days the shortest gap is from the last
    # time of a day to the first time of the nearest next allowed day.
    across_days = day_gap * _MINUTES_PER_DAY - (times[-1] - times[0])
    within_day = min((later - earlier for earlier, later in pairwise(times)), default=across_days)
    return datetime.timedelta(minutes=min(within_day, across_days))


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    if text == "*":
        return frozenset(range(field.low, field.low + field.size))
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise CronError(
                CRON_INVALID, f"{field.label} field: {item!r} is not a number, range or step"
            )
        star, first, last, step = match.group("star", "first", "last", "step")
        if star is not None and step is None:
            raise CronError(CRON_INVALID, f"{field.label} field: * cannot be part of a list")
        if first is not None and last is None and step is not None:
            raise CronError(
                CRON_INVALID,
                f"{field.label} field: step {item!r} needs a range or *, e.g. "
                f"{first}-{field.low + field.size - 1}/{step}",
            )
        if star is not None:
            start, stop = field.low, field.low + field.size - 1
        else:
            start = _value(first, field)
            stop = start if last is None else _value(last, field)
            if start > stop:
                raise CronError(CRON_INVALID, f"{field.label} range {first}-{last} runs backwards")
        stride = 1 if step is None else int(step)
        if not 1 <= stride <= field.size:
            raise CronError(
                CRON_INVALID,
                f"{field.label} step {stride} is out of range 1-{field.size}",
            )
        values.update(range(start, stop + 1, stride))
    # Day-of-week 7 is a second number for Sunday (0).
    return frozenset(
        value - field.size if value >= field.low + field.size else value for value in values
    )


def _value(token: str, field: _Field) -> int:
    if not token.isdigit():
        if token.upper() not in field.names:
            named = f" or a name {field.names[0]}-{field.names[-1]}" if field.names else ""
            raise CronError(CRON_INVALID, f"{field.label} value {token!r} is not a number{named}")
        return field.low + field.names.index(token.upper())
    value = int(token)
    if not field.low <= value <= field.high:
        raise CronError(
            CRON_INVALID, f"{field.label} value {value} is out of range {field.low}-{field.high}"
        )
    return value


def _listing(values: frozenset[int]) -> str:
    return ",".join(str(value) for value in sorted(values))


@lru_cache(maxsize=1024)
def _shortest_day_gap(
    days_of_month: frozenset[int], months: frozenset[int], days_of_week: frozenset[int]
) -> int:
    """Fewest days between two consecutive allowed days; at most one day field may be restricted."""
    if len(days_of_month) == 31:
        # Any month holds four whole weeks, so the closest pair of allowed weekdays (wrapping
        # into the next week) occurs inside every allowed month.
        weekdays = sorted(days_of_week)
        return min(b - a for a, b in pairwise([*weekdays, weekdays[0] + 7]))
    # A year's allowed days depend only on whether it is a leap year. The Gregorian calendar
    # puts a common year after a common one, a leap year after a common one and a common year
    # after a leap one; if only leap years hold a run (February 29th), the closest two are four
    # years apart.
    common, leap = (
        _allowed_day_offsets(days_of_month, months, is_leap) for is_leap in (False, True)
    )
    if not leap:
        raise CronError(CRON_INVALID, "expression never fires")
    gaps = [b - a for offsets in (common, leap) for a, b in pairwise(offsets)]
    if common:
        # From the last run of one year to the first of the next: common-common, common-leap,
        # leap-common.
        gaps += [
            365 + common[0] - common[-1],
            365 + leap[0] - common[-1],
            366 + common[0] - leap[-1],
        ]
    else:
        gaps.append(_FOUR_YEARS + leap[0] - leap[-1])
    return min(gaps)


def _allowed_day_offsets(
    days_of_month: frozenset[int], months: frozenset[int], leap: bool
) -> list[int]:
    """Sorted 0-based day-of-year numbers allowed in a (leap or common) year."""
    offsets: list[int] = []
    month_start = 0
    for month in range(1, 13):
        length = _LONGEST_MONTH[month - 1] - (month == 2 and not leap)
        if month in months:
            offsets.extend(month_start + day - 1 for day in sorted(days_of_month) if day <= length)
        month_start += length
    return offsets
