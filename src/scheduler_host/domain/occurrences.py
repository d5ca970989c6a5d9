"""Next run times of a cron expression in a time zone, under Debian cron's daylight-saving policy.

Fixed-time expressions run a skipped wall time once at the jump and a repeated one on the first
pass only; others follow the wall clock (nothing in a skipped hour, a repeated hour twice).

Cost (no call may hold the event loop for more than about 1 ms). The search goes
straight from one allowed day to the next: a per-expression `_DayPlan` (cached) holds the next
allowed month for each month, the sorted days of the month or the days from each weekday to the
next allowed one, and whether only leap years can hold a run, so impossible months and years are
jumped over rather than stepped through. Each allowed hour then costs two readings of the zone's
offset, and only an hour a transition touches is mapped minute by minute. Microseconds per call,
before -> after, from `python -m bench.occurrence_speed` on the shared 2-core machine while it
was quiet (load average under 1; under a load of 3 they are about half as much again): median
over 40 starts in 2026-2029 for count 1 and 100, the slowest start for 100, and count 100 on a
newly parsed expression:

    expression        zone                   count 1     count 100       slowest           new
    0 0 29 2 *        UTC                   22 -> 6    1208 -> 241   1228 -> 247   1224 -> 258
    0 0 29 2 *        America/New_York      21 -> 6    1239 -> 245   1253 -> 252   1247 -> 246
    59 23 31 12 *     UTC                   15 -> 6     769 -> 209    780 -> 214    791 -> 218
    0 0 31 * *        UTC                   15 -> 6     825 -> 221    835 -> 227    833 -> 229
    0 0 31 2,4,6,7 *  UTC                   23 -> 7    1200 -> 286   1219 -> 302   1207 -> 295
    0 12 * 2 MON      UTC                   14 -> 6     751 -> 202    763 -> 214    752 -> 216
    30 2 * 3 SUN      America/New_York      14 -> 11   1057 -> 352   1073 -> 355   1065 -> 361
    30 1 1-7 11 *     America/New_York      11 -> 6     657 -> 234    678 -> 241    663 -> 247
    15 2 * 10 0       Australia/Lord_Howe   24 -> 11   1026 -> 333   1087 -> 337   1041 -> 342
    45 1 29 2 *       Australia/Lord_Howe   21 -> 6    1238 -> 247   1252 -> 253   1245 -> 259
    0 0 * * *         America/New_York      17 -> 10    559 -> 198    569 -> 204    570 -> 202
    0 * * * *         Australia/Lord_Howe   53 -> 14    294 -> 132    300 -> 137    299 -> 154
    * * * * *         America/New_York     138 -> 18    525 -> 38     629 -> 43     178 -> 40
    */5 * * * *       Australia/Lord_Howe   93 -> 15    127 -> 44     257 -> 48     133 -> 50

Count 100 from just before a transition (each minute of the hour it touches read twice):

    * * * * *         America/New_York     after 2026-03-08 06:30Z    740 -> 62
    * * * * *         America/New_York     after 2026-11-01 04:30Z    824 -> 67
    */5 * * * *       Australia/Lord_Howe  after 2026-04-04 13:00Z    230 -> 47
    * 2 * * *         Australia/Lord_Howe  after 2026-10-03 15:00Z    285 -> 60

shortest_interval of 93 expressions not seen before: median 175 -> 9, slowest 202 -> 36.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from scheduler_host.domain.cron import CronExpression

_MINUTE = timedelta(minutes=1)
_DAY = timedelta(days=1)
# Stop when this long passes without a run: no valid expression has a longer gap between allowed
# days (Feb 29 across 2100: 8 years), so only allowed days whose every wall time the zone skips
# (a non-fixed-time expression held inside a skipped hour) can run into it.
_SEARCH_HORIZON = timedelta(days=3653)
_LAST_DAY = date.max - timedelta(days=2)  # keeps wall-time arithmetic inside datetime's range
_LAST_YEAR = _LAST_DAY.year
_MONTH_LENGTHS = (
    (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31),  # common year; index 0 unused
    (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31),  # leap year
)
_NO_MONTH = 13  # "no allowed month later this year"
# An hour's offset is steady when its first minute read before a transition (fold=0) and its
# last read after one (fold=1) agree. A transition from offset a to b leaves the wall times from
# min(a, b) to max(a, b) past it skipped or repeated: those read a with fold=0 and b with fold=1,
# earlier ones a and later ones b; so if it touches any minute of the hour, the first reads a and
# the last b. (Zones change offset far less often than twice an hour.) ZoneInfo reads a naive
# wall time with its fold directly, which is much cheaper than making aware datetimes.
_HOUR_TOPS = tuple(time(h) for h in range(24))
_HOUR_TOPS_AFTER = tuple(time(h, fold=1) for h in range(24))
_HOUR_LASTS_AFTER = tuple(time(h, 59, fold=1) for h in range(24))
_HOURS = tuple(timedelta(hours=h) for h in range(24))
_MINUTES = tuple(timedelta(minutes=m) for m in range(60))
_UTC_MIDNIGHT = time(tzinfo=UTC)
_HOUR = timedelta(hours=1)
_LONGEST_JUMP_MINUTES = 2**12  # past any forward jump: offsets differ by under two days


def next_occurrence(expr: CronExpression, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The first run strictly after `after` (aware, any zone), in UTC; None if it never fires."""
    found = next_occurrences(expr, tz, after, 1)
    return found[0] if found else None


def next_occurrences(
    expr: CronExpression, tz: ZoneInfo, after: datetime, count: int
) -> list[datetime]:
    """Up to `count` runs strictly after `after` (aware, any zone), increasing, in UTC.

    Runs whose instant datetime cannot hold (at the ends of years 1 and 9999) are left out; an
    `after` before the first UTC instant datetime holds is taken as that instant.
    """
    if after.utcoffset() is None:
        raise ValueError("after must be a timezone-aware datetime")
    found: list[datetime] = []
    if count <= 0:
        return found
    try:
        after = after.astimezone(UTC)
    except OverflowError:  # a wall time in year 1 or 9999 whose UTC instant is outside them
        if after.year > 1:
            return found
        after = datetime.min.replace(tzinfo=UTC)
    for instant in _instants(_day_plan(expr), tz, after):
        # Several wall times skipped by one jump share its instant: run once.
        if not found or instant != found[-1]:
            found.append(instant)
            if len(found) == count:
                break
    return found


@dataclass(frozen=True)
class _DayPlan:
    """What the search needs of an expression, precomputed once: its days, hours and minutes."""

    next_month: tuple[int, ...]  # [m]: the first allowed month >= m (m in 1..12), else _NO_MONTH
    days_of_month: tuple[int, ...]  # sorted; every day 1..31 when day-of-month is unrestricted
    # [w]: days from a day of weekday w (Monday = 0) to the next allowed weekday, 0 if w is one;
    # None when day-of-week is unrestricted.
    weekday_gaps: tuple[int, ...] | None
    leap_years_only: bool  # only February 29th can hold a run
    fires: bool  # some allowed day exists (parse_cron refuses expressions where none does)
    hours: tuple[int, ...]
    minute_numbers: tuple[int, ...]  # sorted
    minutes: tuple[timedelta, ...]  # the same, as offsets from the top of the hour
    fixed_time: bool


@lru_cache(maxsize=4096)
def _day_plan(expr: CronExpression) -> _DayPlan:
    """The expression's plan; cached, as every dispatched run asks for the same few."""
    months = sorted(expr.months)
    next_month = tuple(
        next((allowed for allowed in months if allowed >= m), _NO_MONTH) for m in range(13)
    )
    days_of_month = tuple(sorted(expr.days_of_month))
    weekday_gaps = None
    if expr.dow_restricted:
        # Cron counts weekdays from Sunday = 0; date.weekday() from Monday = 0.
        allowed = {(cron_day - 1) % 7 for cron_day in expr.days_of_week}
        weekday_gaps = tuple(
            next((gap for gap in range(7) if (w + gap) % 7 in allowed), 7) for w in range(7)
        )
    fits = [
        leap
        for leap in (0, 1)
        for m in months
        if days_of_month and days_of_month[0] <= _MONTH_LENGTHS[leap][m]
    ]
    return _DayPlan(
        next_month=next_month,
        days_of_month=days_of_month,
        weekday_gaps=weekday_gaps,
        leap_years_only=0 not in fits,
        fires=bool(fits and expr.hours and expr.minutes and weekday_gaps != (7,) * 7),
        hours=tuple(sorted(expr.hours)),
        minute_numbers=tuple(sorted(expr.minutes)),
        minutes=tuple(_MINUTES[m] for m in sorted(expr.minutes)),
        fixed_time=expr.is_fixed_time,
    )


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _allowed_days(plan: _DayPlan, day: date) -> Iterator[date]:
    """Allowed days from `day` on (up to _LAST_DAY), in order, jumping over whole months."""
    if not plan.fires:
        return
    year, month, first = day.year, day.month, day.day
    while year <= _LAST_YEAR:
        if plan.leap_years_only and not _is_leap(year):
            # The next multiple of 4, which a century's common year sends round once more.
            year, month, first = year + 4 - year % 4, 1, 1
            continue
        allowed = plan.next_month[month] if month <= 12 else _NO_MONTH
        if allowed == _NO_MONTH:
            year, month, first = year + 1, 1, 1
            continue
        if allowed != month:
            month, first = allowed, 1
        found = _first_day_in_month(plan, year, month, first)
        if found is None:
            month, first = month + 1, 1
            continue
        if found > _LAST_DAY:
            return
        yield found
        first = found.day + 1  # may pass the month's end, which _first_day_in_month sees


def _first_day_in_month(plan: _DayPlan, year: int, month: int, first: int) -> date | None:
    """The first allowed day of an allowed month from day number `first` on, if any."""
    length = _MONTH_LENGTHS[_is_leap(year)][month]
    if first > length:
        return None
    if plan.weekday_gaps is not None:
        day = first + plan.weekday_gaps[date(year, month, first).weekday()]
    else:
        index = bisect_left(plan.days_of_month, first)
        day = plan.days_of_month[index] if index < len(plan.days_of_month) else length + 1
    return date(year, month, day) if day <= length else None


def _instants(plan: _DayPlan, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Run instants strictly after `after` (UTC), increasing; a shared jump instant may repeat."""
    # A repeated hour makes wall order differ from instant order, so hold instants (sorted)
    # until no later wall time can produce an earlier one: the runs of every wall time from W on
    # are no earlier than W's earlier reading (first passes are in wall order).
    pending: deque[datetime] = deque()
    # UTC offsets are under a day, so wall times of days before the one before `after`'s UTC
    # date run before `after`, and those of days after the one after it run after `after`.
    utc_day = after.date()
    first_day = utc_day - _DAY if utc_day > date.min else utc_day
    give_up = _horizon_from(first_day)
    # The last day that can run both before and after `after`.
    partly_past = utc_day + _DAY if utc_day < date.max else utc_day
    minutes, last_minute = plan.minutes, plan.minutes[-1]
    for day in _allowed_days(plan, first_day):
        if day > give_up:
            break
        hours = plan.hours
        if day <= partly_past:
            hours = hours[_first_hour_after(hours, day, tz, after) :]
        day_start = datetime.combine(day, _UTC_MIDNIGHT)
        for hour in hours:
            try:
                # Is the hour's offset steady (see _HOUR_TOPS)? Inlined: this is most of the work.
                offset = tz.utcoffset(datetime.combine(day, _HOUR_TOPS[hour]))
                if offset == tz.utcoffset(datetime.combine(day, _HOUR_LASTS_AFTER[hour])):
                    assert offset is not None  # ZoneInfo always knows its offset
                    floor = day_start + _HOURS[hour] - offset
                    instants = (
                        [instant for minute in minutes if (instant := floor + minute) > after]
                        if floor + last_minute > after
                        else []
                    )
                else:
                    floor, instants = _transition_hour_instants(plan, tz, day, hour, after)
            except OverflowError:
                continue  # wall times at the very ends of the calendar have no UTC instant
            while pending and pending[0] < floor:
                yield pending.popleft()
            if not instants:
                continue
            give_up = _horizon_from(day)
            if pending and instants[0] < pending[-1]:  # only around a repeated hour
                pending = deque(sorted([*pending, *instants]))
            else:
                pending.extend(instants)
    yield from pending


def _horizon_from(day: date) -> date:
    """The last day the search goes on to without finding a run after `day`."""
    return day + _SEARCH_HORIZON if day <= date.max - _SEARCH_HORIZON else date.max


def _first_hour_after(hours: tuple[int, ...], day: date, tz: ZoneInfo, after: datetime) -> int:
    """An index into `hours` before which no wall time of `day` runs after `after`."""
    # Every run of a wall time before M is at or before M's later reading. That bound need not
    # grow with M (a jump of over an hour), but the search only moves past an hour whose own
    # bound was checked, so it never skips an hour that runs after `after`. The day's last and
    # first hours are tried first: most days are wholly before or wholly after `after`.
    last = len(hours) - 1
    if _runs_before_end_of_hour_are_past(day, hours[last], tz, after):
        return last + 1
    if last == 0 or not _runs_before_end_of_hour_are_past(day, hours[0], tz, after):
        return 0
    low, high = 1, last
    while low < high:
        middle = (low + high) // 2
        if _runs_before_end_of_hour_are_past(day, hours[middle], tz, after):
            low = middle + 1
        else:
            high = middle
    return low


def _runs_before_end_of_hour_are_past(day: date, hour: int, tz: ZoneInfo, after: datetime) -> bool:
    """Whether every run of the wall times of `day` up to the end of `hour` is at or before
    `after` (False when that cannot be told at the end of the calendar)."""
    end = datetime.combine(day, _UTC_MIDNIGHT) + _HOURS[hour] + _HOUR
    try:
        return end - min(_wall_offsets(day, hour + 1, tz)) <= after
    except OverflowError:
        return False


def _transition_hour_instants(
    plan: _DayPlan, tz: ZoneInfo, day: date, hour: int, after: datetime
) -> tuple[datetime, list[datetime]]:
    """For a wall hour that a transition touches: its earliest instant, and its run instants
    after `after` (sorted), each wall time mapped by the daylight-saving policy."""
    top = datetime.combine(day, _UTC_MIDNIGHT) + _HOURS[hour]  # the wall time's digits, as UTC
    floor = top - max(_wall_offsets(day, hour, tz))
    wall_top = datetime.combine(day, _HOUR_TOPS[hour])
    instants: list[datetime] = []
    for minute, later_reading in zip(
        plan.minutes, _later_readings(hour, plan.minute_numbers), strict=True
    ):
        wall = wall_top + minute
        # fold=0 reads the offset from before a transition, fold=1 the one after (PEP 495).
        old, new = tz.utcoffset(wall), tz.utcoffset(datetime.combine(day, later_reading))
        # ZoneInfo always knows its offset.
        assert old is not None
        assert new is not None
        if old == new:
            instants.append(top + minute - old)
        elif new < old:  # the clock went back: this wall time comes twice
            instants.append(top + minute - old)
            if not plan.fixed_time:
                instants.append(top + minute - new)
        elif plan.fixed_time:  # skipped by a forward jump: run once, at the jump
            instants.append(top + minute + _minutes_to_jump(wall, old, tz) - new)
    return floor, sorted(instant for instant in instants if instant > after)


def _minutes_to_jump(wall: datetime, old_offset: timedelta, tz: ZoneInfo) -> timedelta:
    """From a wall time skipped by a forward jump to the first whole wall minute past the jump.

    Wall times from the skipped one on read the old offset (fold=0) until the jump's end; the
    first that does not is where the clock resumes.
    """
    low, high = 0, 1
    while high < _LONGEST_JUMP_MINUTES and tz.utcoffset(wall + high * _MINUTE) == old_offset:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if tz.utcoffset(wall + middle * _MINUTE) == old_offset:
            low = middle
        else:
            high = middle
    return high * _MINUTE


def _wall_offsets(day: date, hour: int, tz: ZoneInfo) -> tuple[timedelta, timedelta]:
    """The offsets of wall time `hour`:00 of `day` (hour 24 is the next midnight), read before
    and after a transition (fold 0 and 1)."""
    if hour == 24:
        day, hour = day + _DAY, 0
    before = tz.utcoffset(datetime.combine(day, _HOUR_TOPS[hour]))
    after = tz.utcoffset(datetime.combine(day, _HOUR_TOPS_AFTER[hour]))
    # ZoneInfo always knows its offset.
    assert before is not None
    assert after is not None
    return before, after


@lru_cache(maxsize=512)
def _later_readings(hour: int, minutes: tuple[int, ...]) -> tuple[time, ...]:
    """The expression's wall times in `hour`, marked to read the offset after a transition."""
    return tuple(time(hour, minute, fold=1) for minute in minutes)
