"""Next run times of a cron expression in a time zone, under Debian cron's daylight-saving policy.

Fixed-time expressions run a skipped wall time once at the jump and a repeated one on the first
pass only; others follow the wall clock (nothing in a skipped hour, a repeated hour twice).
"""

from __future__ import annotations

import calendar
import heapq
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from scheduler_host.domain.cron import CronExpression

_MINUTE = timedelta(minutes=1)
_DAY = timedelta(days=1)
# Longer than any gap between allowed days of a valid expression (Feb 29 across 2100: 8 years).
_SEARCH_HORIZON = timedelta(days=3653)
_LAST_DAY = date.max - timedelta(days=2)  # keeps wall-time arithmetic inside datetime's range
# The first and last minute of each wall-clock hour, read before (fold=0) and after (fold=1) a
# transition: combined with a day they give the four readings that tell whether the hour is steady.
_HOUR_EDGES = tuple((time(h), time(h, 59), time(h, fold=1), time(h, 59, fold=1)) for h in range(24))
_UTC_HOURS = tuple(time(h, tzinfo=UTC) for h in range(24))
_MIDNIGHTS = (time(), time(fold=1))


def next_occurrence(expr: CronExpression, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The first run strictly after `after` (aware, any zone), in UTC; None if it never fires."""
    found = next_occurrences(expr, tz, after, 1)
    return found[0] if found else None


def next_occurrences(
    expr: CronExpression, tz: ZoneInfo, after: datetime, count: int
) -> list[datetime]:
    """Up to `count` runs strictly after `after` (aware, any zone), increasing, in UTC."""
    if after.utcoffset() is None:
        raise ValueError("after must be a timezone-aware datetime")
    found: list[datetime] = []
    if count <= 0:
        return found
    for instant in _instants(expr, tz, after.astimezone(UTC)):
        # Several wall times skipped by one jump share its instant: run once.
        if not found or instant != found[-1]:
            found.append(instant)
            if len(found) == count:
                break
    return found


def _instants(expr: CronExpression, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Run instants strictly after `after`, increasing; a shared jump instant may repeat."""
    # A repeated hour makes wall order differ from instant order, so hold instants in a heap until
    # no later day can produce an earlier one.
    pending: list[datetime] = []
    hours, minutes = sorted(expr.hours), sorted(expr.minutes)
    first_day = after.astimezone(tz).date() - _DAY
    last_progress = first_day
    for day in _allowed_days(expr, first_day):
        if day - last_progress > _SEARCH_HORIZON:
            break
        if max(_midnight_readings(day + _DAY, tz)) <= after:
            continue  # every run of this day is at or before `after` (usually the day before)
        floor = min(_midnight_readings(day, tz))
        while pending and pending[0] < floor:
            yield heapq.heappop(pending)
        for instant in _day_instants(day, hours, minutes, tz, expr.is_fixed_time, after):
            heapq.heappush(pending, instant)
            last_progress = day
    yield from sorted(pending)


def _allowed_days(expr: CronExpression, day: date) -> Iterator[date]:
    """Allowed days from `day` on, in order; gives up after a horizon without one."""
    months, days_of_month = sorted(expr.months), sorted(expr.days_of_month)
    last_hit = day
    while months and day <= _LAST_DAY and day - last_hit <= _SEARCH_HORIZON:
        if day.month not in expr.months:
            day = _next_month_start(day, months)
        elif expr.matches_day(day):
            yield day
            last_hit = day
            day += _DAY
        elif expr.dom_restricted:
            # Jump straight to the next listed day of this month, or on to the next month.
            length = calendar.monthrange(day.year, day.month)[1]
            later = [d for d in days_of_month if day.day < d <= length]
            day = day.replace(day=later[0]) if later else _next_month_start(day, months)
        else:
            day += _DAY


def _next_month_start(day: date, months: list[int]) -> date:
    later = [month for month in months if month > day.month]
    if later:
        return date(day.year, later[0], 1)
    return date(day.year + 1, months[0], 1) if day.year < date.max.year else date.max


def _day_instants(
    day: date,
    hours: list[int],
    minutes: list[int],
    tz: ZoneInfo,
    fixed_time: bool,
    after: datetime,
) -> list[datetime]:
    """Run instants (after `after`) for the wall-clock times of `day`."""
    instants: list[datetime] = []
    for hour in hours:
        offset = _steady_offset(day, hour, tz)
        if offset is None:  # a transition falls in this hour: map each wall time by the policy
            top = datetime.combine(day, time(hour))
            for minute in minutes:
                wall = top + minute * _MINUTE
                instants.extend(i for i in _wall_instants(wall, tz, fixed_time) if i > after)
            continue
        base = datetime.combine(day, _UTC_HOURS[hour]) - offset
        if base + minutes[-1] * _MINUTE > after:
            instants.extend(i for minute in minutes if (i := base + minute * _MINUTE) > after)
    return instants


def _steady_offset(day: date, hour: int, tz: ZoneInfo) -> timedelta | None:
    """The UTC offset of every minute of the wall-clock hour, or None if it changes."""
    # ZoneInfo reads a naive wall time (with its fold) directly; setting tzinfo on each of the
    # four readings instead cost most of next_occurrence's time.
    offsets = {tz.utcoffset(datetime.combine(day, edge)) for edge in _HOUR_EDGES[hour]}
    return offsets.pop() if len(offsets) == 1 else None


def _wall_instants(wall: datetime, tz: ZoneInfo, fixed_time: bool) -> list[datetime]:
    """The instants at which a matching wall time runs: none, one, or two (a repeated hour)."""
    # fold=0 takes the offset from before a transition, fold=1 the one after (PEP 495).
    old_offset, new_offset = _offset(wall, tz, 0), _offset(wall, tz, 1)
    first = wall.replace(tzinfo=UTC) - old_offset
    if old_offset == new_offset:
        return [first]
    if first.astimezone(tz).replace(tzinfo=None) == wall:  # exists twice: the clock went back
        return [first] if fixed_time else [first, wall.replace(tzinfo=UTC) - new_offset]
    # Skipped by a forward jump, which happens between these two instants.
    return [_jump_instant(wall.replace(tzinfo=UTC) - new_offset, first, tz)] if fixed_time else []


def _jump_instant(before_jump: datetime, after_jump: datetime, tz: ZoneInfo) -> datetime:
    """The first whole-minute instant in (before_jump, after_jump] past a forward jump."""
    old_offset = before_jump.astimezone(tz).utcoffset()
    low, high = 0, (after_jump - before_jump) // _MINUTE
    while high - low > 1:
        middle = (low + high) // 2
        if (before_jump + middle * _MINUTE).astimezone(tz).utcoffset() == old_offset:
            low = middle
        else:
            high = middle
    return before_jump + high * _MINUTE


def _midnight_readings(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The instants of wall time 00:00 of `day` read before and after a transition.

    The earlier bounds from below the runs of every wall time from that midnight on (first
    passes are in wall order); the later bounds from above the runs of every wall time before it
    (a wall time's later reading never decreases as the wall time grows).
    """
    utc_midnight = datetime.combine(day, _UTC_HOURS[0])
    before, after = (tz.utcoffset(datetime.combine(day, m)) for m in _MIDNIGHTS)
    assert before is not None and after is not None  # ZoneInfo always knows its offset
    return utc_midnight - before, utc_midnight - after


def _offset(wall: datetime, tz: ZoneInfo, fold: int) -> timedelta:
    """The offset of naive wall time `wall` read with `fold` (PEP 495)."""
    offset = tz.utcoffset(wall if wall.fold == fold else wall.replace(fold=fold))
    assert offset is not None  # ZoneInfo always knows its offset
    return offset
