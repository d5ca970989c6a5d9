"""`make bench`: the echo baseline, the API, workers, scale, the dispatcher and memory, in one run.

Prints one table, writes bench/out/results.json and, for a full run (default sizes, every part),
bench/RESULTS.md, which keeps its history table (and its "Before and after" section) from the
previous RESULTS.md and adds a row when the measured src/ is committed and differs from the last
row's. Settings (environment): BENCH_SECONDS (per point, 6), BENCH_WARMUP (1), BENCH_ROWS
(1000000), BENCH_SMALL_ROWS (1000), BENCH_DUE (10000, the dispatcher's rate burst),
BENCH_DUE_SMALL (1000, its lateness burst), BENCH_PROFILE_SECONDS (10), BENCH_CHANGE (the "what
changed" text of a new history row; default: the subject of the last commit touching src/).
`python -m bench.compare REV` measures REV and the work tree one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schedulerhost.v1 import scheduler_host_pb2 as pb

from bench import (
    dispatch,
    load,
    machine,
    pg_info,
    procstat,
    profile,
    report,
    scale,
    service,
    statements,
    workers,
)
from bench.echo_server import PATH as ECHO_PATH
from tests.support.postgres import postgres_server, scratch_database
from tests.support.server import ServerProcess, free_port

OUT = machine.ROOT / "bench" / "out"
RESULTS_MD = machine.ROOT / "bench" / "RESULTS.md"
DEFAULTS = {
    "BENCH_SECONDS": 6.0,
    "BENCH_WARMUP": 1.0,
    "BENCH_ROWS": 1_000_000,
    "BENCH_SMALL_ROWS": 1_000,
    "BENCH_DUE": 10_000,
    "BENCH_DUE_SMALL": 1_000,
    "BENCH_PROFILE_SECONDS": 10.0,
}
CONCURRENCIES = (1, 32)
SCALE_ROUNDS = 3
# What `--only` can name; echo is measured in every run (each ratio is against it).
PARTS = {
    "echo": "the echo server: the gRPC ceiling of this machine (always measured)",
    "api": "every API call at c=1 and c=32 on the service, and a profile of GetSchedule",
    "workers": "GetSchedule and GetEndpoints at c=64 on serve --workers 2 and on one process, "
    "against the echo run twice on one port (SO_REUSEPORT) and once",
    "scale": "reads with BENCH_SMALL_ROWS vs BENCH_ROWS stored, statements per RPC, query plans",
    "dispatch": "the dispatcher's bursts (BENCH_DUE, BENCH_DUE_SMALL) on BENCH_ROWS stored",
}


def part_names(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - PARTS.keys())
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown part {', '.join(unknown) or '(none)'}; choose from {', '.join(PARTS)}"
        )
    return names


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="parts:\n" + "\n".join(f"  {name:9} {text}" for name, text in PARTS.items()),
    )
    parser.add_argument(
        "--only",
        type=part_names,
        metavar="NAME[,NAME]",
        help="measure only these parts (echo is always measured, for the ratios); a partial run "
        "writes bench/out/RESULTS.md, never bench/RESULTS.md",
    )
    return parser.parse_args(argv)


def setting(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else float(DEFAULTS[name])


_started = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _started:6.1f} s] {message}", file=sys.stderr, flush=True)


class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        say(f"{name} ...")
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)


def run_echo(seconds: float, warmup: float, workdir: Path) -> tuple[list[load.LoadResult], float]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo server did not start")
        address = f"127.0.0.1:{port}"
        # A request the size of a GetSchedule request, with the same metadata.
        body = pb.GetScheduleRequest(id=str(uuid.uuid4())).SerializeToString()
        metadata = (("x-runner-auth", "bench"), ("x-install-id", str(uuid.uuid4())))
        answer = service.expected_answer(address, ECHO_PATH, body, metadata)
        points = [
            load.h2load(
                "echo",
                address,
                ECHO_PATH,
                body,
                answer,
                metadata,
                c,
                seconds=seconds,
                warmup=warmup,
                server_pid=server.pid,
                workdir=workdir,
            )
            for c in CONCURRENCIES
        ]
        workload = load.PyWorkload(kind="echo", token="bench", path=ECHO_PATH, body=body)
        for c in CONCURRENCIES:
            by_label = load.py_client(
                "echo",
                address,
                workload,
                c,
                seconds=seconds,
                warmup=warmup,
                server_pid=server.pid,
            )
            points.append(by_label["echo"])
        return points, procstat.peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(10)


def measure_api(
    server: ServerProcess,
    fixture: service.Fixture,
    phase: Phases,
    seconds: float,
    warmup: float,
    profile_seconds: float,
    workdir: Path,
) -> tuple[list[load.LoadResult], profile.Profile]:
    """Every API workload at c=1 and c=32, and a profile of GetSchedule at c=32."""
    address, pid = server.target, server.process.pid
    api: list[load.LoadResult] = []
    calls = service.read_calls(fixture)
    for call in calls:
        with phase(f"{call.name} (h2load)"):
            api += service.measure_read(
                call,
                address,
                CONCURRENCIES,
                seconds=seconds,
                warmup=warmup,
                server_pid=pid,
                workdir=workdir,
            )
    with phase("profile GetSchedule c=32 (py-spy)"):
        get = calls[0]
        background = load.h2load_background(
            address, get.path, get.request, get.metadata, 32, profile_seconds + 3, workdir
        )
        time.sleep(1.5)
        prof = profile.record(pid, profile_seconds, OUT / "profile-getschedule.txt")
        background.wait()
    for name, workload in service.mutation_workloads(fixture).items():
        for c in CONCURRENCIES:
            with phase(f"{name} c={c} (py-client)"):
                by_label = load.py_client(
                    name, address, workload, c, seconds=seconds, warmup=warmup, server_pid=pid
                )
            api += by_label.values()
    return api, prof


def scale_reads(
    targets: dict[str, tuple[ServerProcess, service.Fixture]], seconds: float, workdir: Path
) -> list[load.LoadResult]:
    """GetSchedule and ListSchedules at c=1 on each target, alternating for SCALE_ROUNDS rounds."""
    points: list[load.LoadResult] = []
    for _ in range(SCALE_ROUNDS):
        for label, (server, fixture) in targets.items():
            for call in service.read_calls(fixture)[:2]:
                points += service.measure_read(
                    call,
                    server.target,
                    (1,),
                    seconds=max(2.0, seconds / 2),
                    warmup=1.0,
                    server_pid=server.process.pid,
                    workdir=workdir,
                    label=f"{call.name} @{label}",
                )
    return points


def h2load_version() -> str:
    done = subprocess.run([load.H2LOAD, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().split("/")[-1]


def main(argv: list[str] | None = None) -> int:
    only: frozenset[str] | None = parse_arguments(argv).only
    parts = (only or frozenset(PARTS)) | {"echo"}
    if not load.h2load_available():
        print(
            "bench: h2load is not installed. `make bench` installs it as root on Debian/Ubuntu "
            "(apt-get install nghttp2-client); otherwise install nghttp2-client yourself.",
            file=sys.stderr,
        )
        return 2
    seconds, warmup = setting("BENCH_SECONDS"), setting("BENCH_WARMUP")
    big, small = int(setting("BENCH_ROWS")), int(setting("BENCH_SMALL_ROWS"))
    due, profile_seconds = int(setting("BENCH_DUE")), setting("BENCH_PROFILE_SECONDS")
    due_small = int(setting("BENCH_DUE_SMALL"))
    full_run = only is None and all(
        setting(k) >= v for k, v in DEFAULTS.items() if k not in {"BENCH_WARMUP"}
    )
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = OUT / "h2load"
    connections, streams = load.layout(32)
    code = machine.code()
    results: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "commit": code["commit"],
        "source_digest": code["source_digest"],
        "code": code,
        "full_run": full_run,
        "machine": machine.describe(),
        "h2load_version": h2load_version(),
        "config": {
            "seconds": seconds,
            "warmup": warmup,
            "big_rows": big,
            "small_rows": small,
            "due": due,
            "due_small": due_small,
            "layout_32": f"{connections} connections x {streams} streams (h2load) or "
            f"{connections} processes x {streams} tasks (py-client)",
        },
        "memory": {},
        "parts": sorted(parts),
    }
    phase = Phases()

    with phase("echo baseline"):
        echo, echo_peak = run_echo(seconds, warmup, workdir)
    results["echo"] = [p.to_json() for p in echo]
    results["memory"]["echo_server_peak_mib"] = echo_peak
    results["machine"]["echo_cpu_per_call_us"] = report.echo_cpu_per_call_us(results)
    if parts == {"echo"}:
        return finish(results, phase, full_run)

    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres_server())
        db_small = stack.enter_context(scratch_database(pg, prefix="scheduler_host_bench"))
        db_big = stack.enter_context(scratch_database(pg, prefix="scheduler_host_bench"))
        url, dsn = pg.url(db_small), pg.dsn(db_small)
        url_big, dsn_big = pg.url(db_big), pg.dsn(db_big)
        results["postgres"] = asyncio.run(pg_info.probe(dsn))
        results["postgres_version"] = results["postgres"]["version"]

        # The API part, the workers part's one process and the scale part's small side run on
        # the first service.
        if parts & {"api", "scale", "workers"}:
            with phase("service start and set-up"):
                server = service.start_server(url, OUT / "service.log")
                stack.callback(server.stop)
                fixture = asyncio.run(service.prepare(server.target))
        if "api" in parts:
            api, prof = measure_api(
                server, fixture, phase, seconds, warmup, profile_seconds, workdir
            )
            results["api"] = [p.to_json() for p in api]
            results["profile"] = prof.to_json()
            results["memory"]["api_server_peak_mib"] = procstat.peak_rss_mib(server.process.pid)
        if "workers" in parts:
            with phase(f"workers: c={workers.CONCURRENCY}, 1 and {workers.WORKERS} processes"):
                results["workers"] = workers.measure(
                    server,
                    fixture,
                    url,
                    OUT / "service-workers.log",
                    seconds=seconds,
                    warmup=warmup,
                    workdir=workdir,
                ).to_json()

        # Scale: a second server on a second database holding `big` rows; the first database is
        # topped up to `small`. Reads alternate between the two, so drift on the machine hits both.
        # The dispatcher's bursts pick their schedules from the same `big` rows.
        if parts & {"scale", "dispatch"}:
            with phase(f"second service, bulk load to {big:,} schedules"):
                server_big = service.start_server(url_big, OUT / "service-big.log")
                stack.callback(server_big.stop)
                fixture_big = asyncio.run(service.prepare(server_big.target))
                loads = [asyncio.run(scale.bulk_load(dsn_big, big)).to_json()]
        if "scale" in parts:
            with phase(f"bulk load to {small:,} schedules"):
                loads.insert(0, asyncio.run(scale.bulk_load(dsn, small)).to_json())
            with phase("scale reads, alternating"):
                points = scale_reads(
                    {"small": (server, fixture), "big": (server_big, fixture_big)},
                    seconds,
                    workdir,
                )
            results["scale"] = {
                "small_rows": small,
                "big_rows": big,
                "rounds": SCALE_ROUNDS,
                "loads": loads,
                "points": [p.to_json() for p in points],
            }
            with phase(f"SQL statements per RPC and read plans at {big:,}"):
                counts, samples = asyncio.run(statements.count_per_rpc(dsn_big, fixture_big))
                results["statements"] = [c.to_json() for c in counts]
                results["read_plans"] = {
                    rpc: [
                        {"statement": sql, "plan": asyncio.run(scale.explain(dsn_big, sql, params))}
                        for sql, params in samples.get(rpc, [])
                        if sql.lstrip().upper().startswith("SELECT")
                    ]
                    for rpc in ("GetSchedule", "ListSchedules")
                }
            with phase("due query plan"):
                results["due_plan"] = asyncio.run(scale.explain_due_query(dsn_big)).to_json()
            big_pid = server_big.process.pid
            results["memory"]["big_api_server_peak_mib"] = procstat.peak_rss_mib(big_pid)

        if "dispatch" in parts:
            if dispatch.dispatcher_present() and due > 0:
                with phase(f"dispatcher: {due:,} due at once"):
                    burst = asyncio.run(
                        dispatch.measure(
                            dsn_big,
                            url_big,
                            due,
                            OUT / "dispatch-service.log",
                            OUT / "profile-dispatcher.txt",
                        )
                    )
                results["dispatch"] = burst.to_json()
                if due_small > 0:
                    with phase(f"dispatcher: {due_small:,} due at once"):
                        small_burst = asyncio.run(
                            dispatch.measure(
                                dsn_big,
                                url_big,
                                due_small,
                                OUT / "dispatch-small-service.log",
                                None,
                            )
                        )
                    results["dispatch_small"] = small_burst.to_json()
                with phase("due query plan after the burst"):
                    results["due_plan_after_burst"] = asyncio.run(
                        scale.explain_due_query(dsn_big)
                    ).to_json()
            else:
                print("dispatcher: not measured: dispatcher not present", file=sys.stderr)
                results["dispatch"] = "not measured: dispatcher not present"

    return finish(results, phase, full_run)


def finish(results: dict[str, Any], phase: Phases, full_run: bool) -> int:
    """Prints the table and writes the results of what was measured."""
    results["phases"] = phase.seconds
    results["duration_s"] = round(time.monotonic() - _started, 1)
    results["machine"]["load_average_at_end"] = machine.load_average()
    results["load_average_at_end"] = machine.load_average()
    rows = report.build_rows(results)
    results["table"] = [r.to_json() for r in rows]
    print(report.text_table(rows))
    report.write_json(OUT / "results.json", results)
    target = RESULTS_MD if full_run else OUT / "RESULTS.md"
    report.write_results_md(target, results, rows, previous=RESULTS_MD)
    say(f"wrote {OUT / 'results.json'} and {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
