"""The dispatcher under a burst: N schedules due at the same instant, a fast local Runner.

A `scheduler-host serve` with the dispatcher on (default poll, batch and in-flight settings)
calls a stand-in Runner (scheduler_host.runner_standin, answering success at once) in this
process. The burst is made by one UPDATE that sets `next_run_time` of N bulk-loaded schedules to
the same instant T, LEAD_SECONDS ahead (as a cron occurrence is known ahead of its time; the
dispatcher learns of it at its next poll and wakes at T). Measured: runs per second (the
stand-in's receipt times, N / (last receipt - T)), and lateness p50/p99 from the run records
(`start_time - scheduled_time` in schedule_runs).

At R runs/s the run of rank k starts at least k/R after T, so the p99 of a burst of N cannot be
below 0.99 N / R: a 1 s p99 needs 0.99 N runs/s. `make bench` measures a burst of 10,000 for the
rate and one of 1,000 for the lateness.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from bench import procstat, profile
from bench.load import percentile
from bench.service import start_server

TIMEOUT_SECONDS = 240.0
PROFILE_SECONDS = 10.0
LEAD_SECONDS = 2.0


def dispatcher_present() -> bool:
    try:
        import scheduler_host.runner_standin
        import scheduler_host.service.dispatch  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class DispatchResult:
    due: int
    buckets: int  # distinct buckets the burst's schedules are in (a claim is per bucket)
    runs_recorded: int
    runs_succeeded: int
    receipts: int
    runs_per_second: float  # receipts / (last receipt - T)
    finish_runs_per_second: float  # finished runs / (last finish_time - T)
    lateness_p50_s: float
    lateness_p99_s: float
    lateness_max_s: float
    receipt_lateness_p99_s: float  # the stand-in's receipt time - T
    standin_cpu: float  # cores the bench process (the stand-in Runner) used during the burst
    other_receipts: int  # Runner calls for schedules outside the burst
    server_peak_mib: float
    server_cpu: float  # cores, averaged over the burst
    seconds: float
    lead_s: float = LEAD_SECONDS  # how long before T the burst was set up
    # The least p99 lateness any dispatcher at this burst's rate could have: 0.99 N / R.
    lateness_p99_floor_s: float = 0.0
    note: str = ""
    statuses: dict[str, int] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def _pick(conn: Any, count: int) -> tuple[list[int], list[Any]]:
    """`count` bulk schedules spread over as many installs (and so buckets) as possible: their
    buckets and ids."""
    rows = await conn.fetch(
        "SELECT bucket, id FROM (SELECT bucket, id, row_number() OVER "
        "(PARTITION BY bucket, install_id ORDER BY id) AS k "
        "FROM schedules WHERE name LIKE 'bulk-%' AND enabled) s ORDER BY k, id LIMIT $1",
        count,
    )
    return [r["bucket"] for r in rows], [r["id"] for r in rows]


# The chosen schedules by their keys (bucket, id), as the service addresses them.
_CHOSEN = "(SELECT * FROM unnest($2::smallint[], $3::uuid[]) AS c(bucket, id))"
_SET_DUE = f"""UPDATE schedules AS s SET next_run_time = $1
FROM {_CHOSEN} AS c WHERE s.bucket = c.bucket AND s.id = c.id"""
_FINISHED = f"""SELECT count(*) FROM schedule_runs r JOIN {_CHOSEN} AS c
    ON r.bucket = c.bucket AND r.schedule_id = c.id
WHERE r.scheduled_time >= $1 AND r.status NOT IN ('pending', 'running')"""
_RUNS = f"""SELECT r.status, EXTRACT(EPOCH FROM r.start_time - r.scheduled_time)::float8 AS late,
    EXTRACT(EPOCH FROM r.finish_time - r.scheduled_time)::float8 AS done
FROM schedule_runs r JOIN {_CHOSEN} AS c ON r.bucket = c.bucket AND r.schedule_id = c.id
WHERE r.scheduled_time >= $1 AND r.trigger = 'schedule'"""


async def measure(
    dsn: str,
    database_url: str,
    due: int,
    log_path: Path,
    profile_path: Path | None,
    *,
    lead_seconds: float = LEAD_SECONDS,
) -> DispatchResult:
    """One burst of `due` schedules at T = now + `lead_seconds`; `profile_path` None: no py-spy."""
    from scheduler_host.runner_standin import Execution, Reply, StandInRunner

    receipts: list[float] = []
    chosen: set[str] = set()
    others = 0

    async def respond(execution: Execution) -> Reply:
        nonlocal others
        if execution.schedule_id in chosen:
            receipts.append(time.time())
        else:
            others += 1  # a schedule of the API fixtures that fell due meanwhile
        return Reply()

    runner = StandInRunner(respond)
    await runner.start()
    conn = await asyncpg.connect(dsn, command_timeout=600)
    server = None
    try:
        buckets, ids = await _pick(conn, due)
        chosen.update(str(i) for i in ids)
        # What autovacuum would have done between bursts minutes apart (the test server may run
        # without it): the dead index entries of an earlier burst are not this one's cost.
        await conn.execute("VACUUM ANALYZE schedules")
        await conn.execute("VACUUM ANALYZE schedule_runs")
        # Flush what the vacuums dirtied (at 1,000,000 rows, much), so that no checkpoint shares
        # the disk with the burst.
        await conn.execute("CHECKPOINT")
        server = await asyncio.to_thread(
            start_server,
            database_url,
            log_path,
            SCHEDULER_HOST_DISPATCHER="true",
            SCHEDULER_HOST_RUNNER_BASE_URL=runner.url,
        )
        await asyncio.sleep(2)  # the dispatcher loop is polling
        at = datetime.fromtimestamp(time.time() + lead_seconds, UTC)
        await conn.execute(_SET_DUE, at, buckets, ids)
        await asyncio.sleep(max(0.0, at.timestamp() - time.time()))
        cpu = procstat.cpu_seconds(server.process.pid)
        bench_cpu = time.process_time()
        started = time.monotonic()
        sampling = None
        if profile_path is not None:
            # Sampled without pausing the server, so the burst is not slowed by the profiler.
            sampling = asyncio.create_task(
                asyncio.to_thread(
                    profile.record,
                    server.process.pid,
                    PROFILE_SECONDS,
                    profile_path,
                    nonblocking=True,
                )
            )
        finished = 0
        while time.monotonic() - started < TIMEOUT_SECONDS:
            await asyncio.sleep(0.5)
            finished = int(await conn.fetchval(_FINISHED, at, buckets, ids))
            if finished >= len(ids):
                break
        elapsed = time.monotonic() - started
        bench_cpu = (time.process_time() - bench_cpu) / elapsed
        cpu = (procstat.cpu_seconds(server.process.pid) - cpu) / elapsed
        peak = procstat.peak_rss_mib(server.process.pid)
        sampled = await sampling if sampling is not None else None
        rows = await conn.fetch(_RUNS, at, buckets, ids)
    finally:
        await conn.close()
        if server is not None:
            await asyncio.to_thread(server.stop)
        await runner.stop()
    t0 = at.timestamp()
    lateness = [r["late"] for r in rows if r["late"] is not None]
    finishes = [r["done"] for r in rows if r["done"] is not None]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    receipt_lateness = [t - t0 for t in receipts]
    last_receipt = max(receipt_lateness, default=0.0)
    note = "" if finished >= len(ids) else f"timed out after {TIMEOUT_SECONDS:.0f} s"
    rate = len(receipts) / last_receipt if last_receipt > 0 else 0.0
    return DispatchResult(
        due=len(ids),
        buckets=len(set(buckets)),
        runs_recorded=len(rows),
        runs_succeeded=statuses.get("success", 0),
        receipts=len(receipts),
        runs_per_second=rate,
        finish_runs_per_second=len(finishes) / max(finishes) if finishes else 0.0,
        lateness_p50_s=percentile(lateness, 50),
        lateness_p99_s=percentile(lateness, 99),
        lateness_max_s=max(lateness, default=float("nan")),
        receipt_lateness_p99_s=percentile(receipt_lateness, 99),
        standin_cpu=bench_cpu,
        other_receipts=others,
        server_peak_mib=peak,
        server_cpu=cpu,
        seconds=elapsed,
        lead_s=lead_seconds,
        lateness_p99_floor_s=0.99 * len(ids) / rate if rate else float("nan"),
        note=note,
        statuses=statuses,
        profile=sampled.to_json() if sampled is not None else {},
    )
