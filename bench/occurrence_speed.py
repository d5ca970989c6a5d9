"""`python -m bench.occurrence_speed`: CPU time of `next_occurrences` on its worst cases.

No call may hold the event loop for more than about 1 ms. For each case this prints the
microseconds per call for count 1 and count 100, over starts spread across 2026-2029: the median
and the slowest start (each start timed as the best of several runs, so that a busy machine
inflates the figures less), and a "new" column: count 100 on an expression parsed just before,
so that nothing cached for it is reused. Then count 100 of frequent expressions from just before
a daylight-saving transition (every minute of the hour it touches takes the slow path),
`timing.next_fire` with a jitter (what the dispatcher asks after each fire) next to a plain
`next_occurrence`, and `shortest_interval` of expressions not seen before.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

from scheduler_host.domain.cron import CronExpression, parse_cron, shortest_interval
from scheduler_host.domain.occurrences import next_occurrence, next_occurrences
from scheduler_host.domain.timing import Timing, next_fire

CASES = (
    ("0 0 29 2 *", "UTC"),
    ("0 0 29 2 *", "America/New_York"),
    ("59 23 31 12 *", "UTC"),
    ("0 0 31 * *", "UTC"),
    ("0 0 31 2,4,6,7 *", "UTC"),
    ("0 12 * 2 MON", "UTC"),
    ("30 2 * 3 SUN", "America/New_York"),
    ("30 1 1-7 11 *", "America/New_York"),
    ("15 2 * 10 0", "Australia/Lord_Howe"),
    ("45 1 29 2 *", "Australia/Lord_Howe"),
    ("0 0 * * *", "America/New_York"),
    ("0 * * * *", "Australia/Lord_Howe"),
    ("* * * * *", "America/New_York"),
    ("*/5 * * * *", "Australia/Lord_Howe"),
)
ACROSS_TRANSITIONS = (
    ("* * * * *", "America/New_York", datetime(2026, 3, 8, 6, 30, tzinfo=UTC)),
    ("* * * * *", "America/New_York", datetime(2026, 11, 1, 4, 30, tzinfo=UTC)),
    ("*/5 * * * *", "Australia/Lord_Howe", datetime(2026, 4, 4, 13, 0, tzinfo=UTC)),
    ("* 2 * * *", "Australia/Lord_Howe", datetime(2026, 10, 3, 15, 0, tzinfo=UTC)),
)
# Day fields that make shortest_interval compare runs across years (its slowest kind).
NEW_INTERVALS = tuple(
    f"0 0 {day} {month},{month + 1} *" for day in range(1, 32) for month in (1, 6, 11)
)
STARTS = tuple(
    datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=37 * k, minutes=11 * k) for k in range(40)
)
REPEATS = 5
JITTER_ID = uuid.UUID("6f1c1d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f")


def best_of(call: Callable[[], object], repeats: int = REPEATS) -> float:
    """Fewest seconds that one call took over `repeats` runs."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def per_start(expr: CronExpression, tz: ZoneInfo, count: int) -> list[float]:
    return [best_of(partial(next_occurrences, expr, tz, after, count)) for after in STARTS]


def spellings(text: str) -> Iterator[str]:
    """The same expression with other whitespace between its fields: a new parse each time."""
    fields = text.split()
    for gaps in itertools.product((" ", "  ", "\t", " \t"), repeat=len(fields) - 1):
        yield fields[0] + "".join(gap + field for gap, field in zip(gaps, fields[1:], strict=True))


def first_call(text: str, tz: ZoneInfo) -> float:
    """Seconds of count 100 on a freshly parsed expression (parse itself not timed); best of 5."""
    best = float("inf")
    for spelling in itertools.islice(spellings(text), REPEATS):
        expr = parse_cron(spelling)
        started = time.perf_counter()
        next_occurrences(expr, tz, STARTS[0], 100)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    header = f"{'expression':<18} {'zone':<20} {'count 1':>15} {'count 100':>15} {'new':>6}"
    print(header)
    print(f"{'':<18} {'':<20} {'median':>7} {'max':>7} {'median':>7} {'max':>7} {'':>6}")
    for text, zone in CASES:
        expr, tz = parse_cron(text), ZoneInfo(zone)
        one, hundred = per_start(expr, tz, 1), per_start(expr, tz, 100)
        figures = [statistics.median(one), max(one), statistics.median(hundred), max(hundred)]
        cells = " ".join(f"{seconds * 1e6:7.0f}" for seconds in figures)
        print(f"{text:<18} {zone:<20} {cells} {first_call(text, tz) * 1e6:6.0f}", flush=True)
    print("\nacross a transition, count 100")
    for text, zone, after in ACROSS_TRANSITIONS:
        expr, tz = parse_cron(text), ZoneInfo(zone)
        seconds = best_of(partial(next_occurrences, expr, tz, after, 100))
        print(f"{text:<18} {zone:<20} {after:%Y-%m-%d %H:%M}Z {seconds * 1e6:7.0f}", flush=True)
    print("\nnext_fire with a jitter, after one of its fires, against next_occurrence")
    for text, zone in (("0 0 29 2 *", "America/New_York"), ("*/5 * * * *", "Australia/Lord_Howe")):
        expr, tz = parse_cron(text), ZoneInfo(zone)
        timing = Timing.recurring(JITTER_ID, expr, tz, jitter=shortest_interval(expr) / 2)
        fires = [next_fire(timing, after) for after in STARTS]
        jittered = [best_of(partial(next_fire, timing, fire)) for fire in fires if fire]
        plain = [best_of(partial(next_occurrence, expr, tz, after)) for after in STARTS]
        print(
            f"{text:<18} {zone:<20} next_fire {statistics.median(jittered) * 1e6:5.0f}, "
            f"next_occurrence {statistics.median(plain) * 1e6:5.0f}",
            flush=True,
        )
    # Its results are cached by expression and by day fields: time each distinct one once.
    timings = []
    for text in NEW_INTERVALS:
        expr = parse_cron(text)
        started = time.perf_counter()
        shortest_interval(expr)
        timings.append(time.perf_counter() - started)
    print(
        f"\nshortest_interval of {len(timings)} new expressions ({NEW_INTERVALS[0]} ...): "
        f"median {statistics.median(timings) * 1e6:.0f}, max {max(timings) * 1e6:.0f}"
    )
    print("microseconds per call", file=sys.stderr)


if __name__ == "__main__":
    main()
