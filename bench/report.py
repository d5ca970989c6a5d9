"""The run's one table (metric, value, baseline, ratio, target, met?), its JSON and RESULTS.md."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

READS = ("GetSchedule", "ListSchedules", "GetEndpoints")
WRITES = ("CreateSchedule+DeleteSchedule", "UpdateSchedule")
API = (*READS, "PreviewSchedule", *WRITES)
# The c=32 throughput targets, as a share of the same run's h2load echo.
RPS_TARGETS = {
    "GetSchedule": 0.5,
    "GetEndpoints": 0.6,
    "ListSchedules": 0.25,
    "CreateSchedule+DeleteSchedule": 0.25,
    "UpdateSchedule": 0.25,
}
DISPATCH_RATE_TARGET = 2500  # runs/s for the big burst
SMALL_BURST_P99_TARGET = 0.5  # s of lateness for the 1,000 burst
CONCURRENCIES = (1, 32)


@dataclass
class Row:
    metric: str
    value: float | str | None
    unit: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or not baseline or math.isnan(value):
        return None
    return value / baseline


def _find(points: Iterable[dict[str, Any]], name: str, c: int) -> dict[str, Any] | None:
    for p in points:
        if p["name"] == name and p["concurrency"] == c:
            return p
    return None


def echo_point(results: dict[str, Any], c: int = 32) -> dict[str, Any] | None:
    """The h2load echo point at concurrency `c`."""
    return next(
        (
            p
            for p in results.get("echo", [])
            if p["concurrency"] == c and p["generator"] == "h2load" and p.get("rps")
        ),
        None,
    )


def echo_cpu_per_call_us(results: dict[str, Any]) -> float | None:
    """The echo server's CPU per call at c=32 (h2load): what a call costs this machine's gRPC
    at the least, to compare machines by."""
    echo = echo_point(results)
    return round(echo["server_cpu"] / echo["rps"] * 1e6, 1) if echo else None


def median_p50(points: Iterable[dict[str, Any]], name: str) -> float | None:
    """The median over the alternating rounds of one scale point's p50."""
    values = sorted(p["p50_ms"] for p in points if p["name"] == name)
    return values[len(values) // 2] if values else None


def build_rows(results: dict[str, Any]) -> list[Row]:
    big = results.get("scale", {}).get("big_rows")
    return [
        *_echo_rows(results.get("echo", [])),
        *_api_rows(results.get("api", []), results.get("echo", [])),
        *_workers_rows(results.get("workers")),
        *_dispatch_rows(results),
        *_scale_rows(results.get("scale", {})),
        *_plan_rows(results.get("due_plan"), big),
        *_memory_rows(results.get("memory", {}), big),
    ]


def _echo_rows(echo: list[dict[str, Any]]) -> list[Row]:
    """The echo baseline by load generator and concurrency."""
    rows: list[Row] = []
    for c in CONCURRENCIES:
        for gen in ("h2load", "py-client"):
            e = next((p for p in echo if p["concurrency"] == c and gen in p["generator"]), None)
            if e is None:
                continue
            label = f"echo ({gen}) c={c}"
            rows.append(Row(f"{label} req/s", e["rps"], "req/s"))
            rows.append(Row(f"{label} p50", e["p50_ms"], "ms"))
            rows.append(Row(f"{label} p99", e["p99_ms"], "ms"))
    return rows


Judge = Callable[[float | None], bool | None]


def _check(limit: float, le: bool) -> Judge:
    def met(ratio: float | None) -> bool | None:
        if ratio is None:
            return None
        return ratio <= limit if le else ratio >= limit

    return met


def _api_targets(name: str, c: int) -> tuple[str, Judge | None, str, Judge | None]:
    """The targets of one API point: req/s and p99 against the echo, at c=32 only."""
    share = RPS_TARGETS.get(name) if c == 32 else None
    if share is None:
        return "", None, "", None
    rps = f">= {share:g} x echo", _check(share, le=False)
    if name in READS:
        return *rps, "<= 3 x echo", _check(3.0, le=True)
    return *rps, "", None


def _api_rows(api: list[dict[str, Any]], echo: list[dict[str, Any]]) -> list[Row]:
    """Each RPC at each concurrency against the h2load echo, the server's own ceiling."""
    rows: list[Row] = []
    for name in API:
        for c in CONCURRENCIES:
            point = _find(api, name, c)
            base = _find(echo, "echo", c)
            if point is None:
                continue
            suffix = f" ({point['errors']} errors)" if point["errors"] else ""
            rps_target, rps_check, p99_target, p99_check = _api_targets(name, c)
            for metric, key, unit, target, judge in (
                ("req/s", "rps", "req/s", rps_target, rps_check),
                ("p50", "p50_ms", "ms", "", None),
                ("p99", "p99_ms", "ms", p99_target, p99_check),
            ):
                value = point[key]
                baseline = base[key] if base else None
                ratio = _ratio(value, baseline)
                met = judge(ratio) if judge else None
                if met is not None and point["errors"]:
                    met = False
                rows.append(
                    Row(f"{name} c={c} {metric}{suffix}", value, unit, baseline, ratio, target, met)
                )
    return rows


def _dispatch_rows(results: dict[str, Any]) -> list[Row]:
    """The dispatcher's burst (runs/s, lateness), the small burst's lateness, and its memory."""
    rows: list[Row] = []
    dispatch = results.get("dispatch")
    if isinstance(dispatch, dict):
        rows += _burst_rows(dispatch)
    small = results.get("dispatch_small")
    if isinstance(small, dict):
        n = small["due"]
        rows.append(Row(f"dispatcher: {n} due at once, lateness p50", small["lateness_p50_s"], "s"))
        rows.append(
            Row(
                f"dispatcher: {n} due at once, lateness p99",
                small["lateness_p99_s"],
                "s",
                target=f"<= {SMALL_BURST_P99_TARGET:g} s",
                met=small["lateness_p99_s"] <= SMALL_BURST_P99_TARGET
                and small["runs_succeeded"] == n,
            )
        )
    if isinstance(dispatch, dict):
        rows.append(
            Row(
                f"dispatcher server peak RSS ({results['config']['big_rows']:,} stored)",
                dispatch["server_peak_mib"],
                "MiB",
                target="<= 200 MiB",
                met=dispatch["server_peak_mib"] <= 200,
            )
        )
    elif dispatch is not None:
        rows.append(Row("dispatcher", str(dispatch), target=f">= {DISPATCH_RATE_TARGET} runs/s"))
    return rows


def _burst_rows(dispatch: dict[str, Any]) -> list[Row]:
    n = dispatch["due"]
    # The run of rank k starts at least k/R late: no 1 s target at this size.
    floor = dispatch.get("lateness_p99_floor_s")
    return [
        Row(
            f"dispatcher: {n} due at once, runs/s",
            dispatch["runs_per_second"],
            "runs/s",
            target=f">= {DISPATCH_RATE_TARGET:,}",
            met=dispatch["runs_per_second"] >= DISPATCH_RATE_TARGET
            and dispatch["runs_succeeded"] == n,
        ),
        Row(f"dispatcher: {n} due at once, lateness p50", dispatch["lateness_p50_s"], "s"),
        Row(
            f"dispatcher: {n} due at once, lateness p99",
            dispatch["lateness_p99_s"],
            "s",
            target=f"none: >= {floor:.1f} s at this rate (0.99 N / R)"
            if isinstance(floor, float) and not math.isnan(floor)
            else "none: >= 0.99 N / R",
        ),
    ]


def _scale_rows(scale: dict[str, Any]) -> list[Row]:
    """Reads at the big number of rows against the small one."""
    rows: list[Row] = []
    small, big = scale.get("small_rows"), scale.get("big_rows")
    for name in ("GetSchedule", "ListSchedules"):
        a = median_p50(scale.get("points", []), f"{name} @small")
        b = median_p50(scale.get("points", []), f"{name} @big")
        if a is None or b is None:
            continue
        ratio = _ratio(b, a)
        rows.append(
            Row(
                f"{name} p50 c=1 at {big:,} rows (baseline: {small:,})",
                b,
                "ms",
                a,
                ratio,
                "<= 1.2 x",
                ratio is not None and ratio <= 1.2,
            )
        )
    return rows


def _plan_rows(plan: dict[str, Any] | None, big: int | None) -> list[Row]:
    """The dispatcher's due query and poll as PostgreSQL plans them at the big number of rows."""
    if not plan:
        return []
    rows = [
        Row(
            f"due query at {big:,} rows uses ix_schedules_due",
            "yes" if plan["uses_index"] else "no",
            target="index",
            met=plan["uses_index"],
        )
    ]
    if plan.get("execution_ms") is not None:
        rows.append(Row("due query execution time", plan["execution_ms"], "ms"))
    if plan.get("poll_execution_ms") is not None:
        rows.append(
            Row("dispatcher poll (every bucket) execution time", plan["poll_execution_ms"], "ms")
        )
    return rows


def _memory_rows(memory: dict[str, Any], big: int | None) -> list[Row]:
    """Peak RSS of the API server (after the scale reads and after the load) and of the echo."""
    rows: list[Row] = []
    if "big_api_server_peak_mib" in memory:
        rows.append(
            Row(
                f"API server peak RSS ({big:,} stored, after scale reads)",
                memory["big_api_server_peak_mib"],
                "MiB",
                target="<= 200 MiB",
                met=memory["big_api_server_peak_mib"] <= 200,
            )
        )
    if "api_server_peak_mib" in memory:
        rows.append(
            Row(
                "API server peak RSS (after the API load points)",
                memory["api_server_peak_mib"],
                "MiB",
                target="<= 200 MiB",
                met=memory["api_server_peak_mib"] <= 200,
            )
        )
    if "echo_server_peak_mib" in memory:
        rows.append(Row("echo server peak RSS", memory["echo_server_peak_mib"], "MiB"))
    return rows


def _workers_rows(workers: dict[str, Any] | None) -> list[Row]:
    """Each service at c=64 against the echo of as many processes, and what a second process
    gave each of them."""
    if not workers:
        return []
    n, c = workers["workers"], workers["concurrency"]
    points = {p["name"]: p for p in workers["points"]}
    rows: list[Row] = []
    for processes in (1, n):
        echo = points.get(f"echo x{processes}")
        what = f"{processes} processes (SO_REUSEPORT)" if processes > 1 else "1 process"
        if echo:
            rows.append(Row(f"echo c={c}, {what} req/s", echo["rps"], "req/s"))
        for name in ("GetSchedule", "GetEndpoints"):
            point = points.get(f"{name} x{processes}")
            if point is None:
                continue
            suffix = f" ({point['errors']} errors)" if point["errors"] else ""
            kind = f"serve --workers {n}" if processes > 1 else "serve, 1 process"
            for metric, key, unit in (("req/s", "rps", "req/s"), ("p99", "p99_ms", "ms")):
                base = echo[key] if echo else None
                rows.append(
                    Row(
                        f"{name} c={c}, {kind} {metric}{suffix}",
                        point[key],
                        unit,
                        base,
                        _ratio(point[key], base),
                    )
                )
    for name in ("echo", "GetSchedule", "GetEndpoints"):
        one, many = points.get(f"{name} x1"), points.get(f"{name} x{n}")
        if one and many:
            rows.append(
                Row(
                    f"{name} c={c}: {n} processes / 1, req/s",
                    many["rps"],
                    "req/s",
                    one["rps"],
                    _ratio(many["rps"], one["rps"]),
                )
            )
    return rows


def _fmt(value: float | str | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "n/a"
    if unit in {"req/s", "runs/s"} or abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _cells(row: Row) -> list[str]:
    return [
        row.metric,
        _fmt(row.value, row.unit),
        _fmt(row.baseline, row.unit),
        "-" if row.ratio is None else f"{row.ratio:.2f}",
        row.target or "-",
        {True: "yes", False: "NO", None: "-"}[row.met],
    ]


HEADER = ["metric", "value", "baseline", "ratio", "target", "met?"]


def text_table(rows: list[Row]) -> str:
    cells = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = []
    for n, line in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], body: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(value: Any) -> Any:
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(results), indent=2) + "\n")


def _profile_md(profile: dict[str, Any], what: str) -> list[str]:
    if not profile or profile.get("error"):
        return [f"Not profiled: {profile.get('error', 'no profile') if profile else 'no profile'}."]
    out = [
        f"py-spy, {profile['samples']} samples at 100 Hz over {profile['seconds']:.0f} s of "
        f"{what}. The main thread (the event loop) was active in "
        f"{profile['busy'] * 100:.0f}% of the sampling ticks; "
        "shares below are of its samples. Other threads, active share of ticks: "
        + (
            ", ".join(f"{k} {v * 100:.0f}%" for k, v in profile.get("other_threads", {}).items())
            or "none"
        )
        + " (grpc.aio's poller thread waits in native code without the GIL).",
        "",
        "Self time by library (the frame on top of the stack):",
        "",
        markdown_table(["area", "% of samples"], ([a, f"{p:.1f}"] for a, p in profile["areas"])),
        "",
        "Top functions, self time:",
        "",
        markdown_table(["function", "%"], ([f, f"{p:.1f}"] for f, p in profile["self_top"])),
        "",
        "Top functions, inclusive (on the stack):",
        "",
        markdown_table(["function", "%"], ([f, f"{p:.1f}"] for f, p in profile["inclusive_top"])),
        "",
        "scheduler_host code, inclusive:",
        "",
        markdown_table(["function", "%"], ([f, f"{p:.1f}"] for f, p in profile["scheduler_host"])),
    ]
    return out


def _statements_md(counts: list[dict[str, Any]]) -> list[str]:
    if not counts:
        return ["Not counted."]
    body = [
        [
            c["rpc"],
            f"{c['statements']:g}",
            f"{c['transactions']:g}",
            f"{c['round_trips']:g}",
            f"{c.get('database_ms', float('nan')):.2f}",
            f"{c['cold_statements']}",
            ", ".join(f"{k} x{v:g}" for k, v in c["shapes"].items()),
        ]
        for c in counts
    ]
    return [
        "Counted in-process (`start_application`, real stubs): every PostgreSQL statement through "
        "a query logger on the service's one asyncpg pool (`app.pool.add_query_logger`); "
        'averaged over 5 calls with the install context cached; "cold" is the first call after '
        "the install cache was emptied. Round trips = statements + BEGIN and COMMIT/ROLLBACK per "
        "transaction (asyncpg's pool sends nothing on checkout or release). Database ms: the "
        "time asyncpg measured from sending each statement (BEGIN and COMMIT included) to its "
        "answer, per call at c=1: the database's share of the call's latency.",
        "",
        markdown_table(
            [
                "RPC",
                "SQL statements",
                "transactions",
                "round trips",
                "database ms",
                "cold",
                "statements",
            ],
            body,
        ),
    ]


def _read_plans_md(plans: dict[str, list[dict[str, str]]]) -> list[str]:
    out: list[str] = []
    for rpc, entries in plans.items():
        for n, entry in enumerate(entries, 1):
            first = " ".join(entry["statement"].split())[:90]
            out += [f"{rpc}, SELECT {n} of {len(entries)} (`{first}...`):", ""]
            out += ["```", entry["plan"], "```", ""]
    return out or ["Not captured.", ""]


def _burst_md(burst: dict[str, Any]) -> list[str]:
    spread = (
        f" (in {burst['buckets']} buckets: the dispatcher claims per bucket)"
        if "buckets" in burst
        else ""
    )
    lines = [
        f"{burst['due']:,} due at once{spread}:",
        "",
        f"- Runs recorded: {burst['runs_recorded']:,} ("
        + ", ".join(f"{k} {v:,}" for k, v in burst["statuses"].items())
        + f"); Runner calls received: {burst['receipts']:,}; burst cleared in "
        f"{burst['seconds']:.1f} s",
        f"- Runs/s (receipts / (last receipt - T)): {burst['runs_per_second']:.0f}; "
        f"finished runs / (last finish - T): {burst['finish_runs_per_second']:.0f}",
        f"- Lateness (start_time - scheduled_time): p50 {burst['lateness_p50_s']:.2f} s, "
        f"p99 {burst['lateness_p99_s']:.2f} s, max {burst['lateness_max_s']:.2f} s; "
        f"Runner receipt - T p99 {burst['receipt_lateness_p99_s']:.2f} s; the least p99 at "
        f"this rate (0.99 N / R): {burst.get('lateness_p99_floor_s', float('nan')):.2f} s",
        f"- Server CPU during the burst: {burst['server_cpu']:.2f} cores; peak RSS "
        f"{burst['server_peak_mib']:.0f} MiB; the bench process (stand-in Runner) used "
        f"{burst['standin_cpu']:.2f} cores; {burst['other_receipts']} Runner calls came "
        "for schedules outside the burst (API fixtures falling due) and are not counted",
    ]
    if burst.get("note"):
        lines.append(f"- Note: {burst['note']}")
    return lines


def _per_call(point: dict[str, Any]) -> str:
    rps = point.get("rps") or 0
    return f"{point['server_cpu'] / rps * 1e6:,.0f} us" if rps else "-"


def _bounds_md(results: dict[str, Any]) -> list[str]:
    """What bounds each target ratio: the server's CPU per call against echo's. If the server
    were the only limit, with echo's cores, the ratio could reach echo's CPU per call over the
    RPC's; a measured ratio below that bound means the server was not saturated (the database
    and the load generator share the machine's cores)."""
    echo = echo_point(results)
    api = {p["name"]: p for p in results.get("api", []) if p["concurrency"] == 32}
    if echo is None or not api:
        return []
    echo_call = echo["server_cpu"] / echo["rps"]
    body = []
    for name in RPS_TARGETS:
        p = api.get(name)
        if p is None or not p.get("rps") or not p.get("server_cpu"):
            continue
        call = p["server_cpu"] / p["rps"]
        body.append(
            [
                name,
                f"{call * 1e6:,.0f} us",
                f"{echo_call * 1e6:,.0f} us",
                f"{echo_call / call:.2f}",
                f"{p['rps'] / echo['rps']:.2f}",
                f"{p['server_cpu']:.2f} / {echo['server_cpu']:.2f}",
            ]
        )
    return [
        "What bounds the ratios at c=32: if the server's CPU were the only limit and it got "
        "echo's cores, an RPC's throughput ratio could reach echo's CPU per call divided by the "
        "RPC's. A measured ratio near that bound means the server's own work per call is the "
        "limit; one well below it means the server was not saturated and the machine was (the "
        "PostgreSQL backends and the load generator share its two cores).",
        "",
        markdown_table(
            [
                "RPC (c=32)",
                "server CPU per call",
                "echo's",
                "bound on the ratio",
                "measured ratio",
                "server cores / echo's",
            ],
            body,
        ),
        "",
    ]


def _workers_md(workers: dict[str, Any] | None) -> list[str]:
    if not workers:
        return ["Not measured."]
    n = workers["workers"]
    body = []
    for p in workers["points"]:
        split = p.get("server_cpu_split") or []
        body.append(
            [
                p["name"],
                f"{p['rps']:,.0f}",
                f"{p['p50_ms']:.2f}",
                f"{p['p99_ms']:.2f}",
                f"{p['server_cpu']:.2f}",
                " / ".join(f"{c:.2f}" for c in split) or "-",
                _per_call(p),
                f"{p['generator_cpu']:.2f}",
                f"{p['errors']}",
            ]
        )
    peaks = "; ".join(
        f"{k}: {' / '.join(f'{v:.0f}' for v in values)} MiB"
        for k, values in workers.get("peak_mib", {}).items()
    )
    return [
        f"`scheduler-host serve --workers {n}` ({n} processes on one port, SO_REUSEPORT, each with "
        "its share of the pool; the dispatcher off) against the echo server run "
        f"{n} times on one port (`bench/echo_server.py --reuseport`); for comparison one "
        "`scheduler-host serve` process (the API part's) against one echo process. GetSchedule "
        f"and GetEndpoints of the API part's fixture, h2load at c={workers['concurrency']} as "
        f"{workers['connections']} connections x {workers['streams']} streams (the kernel gives "
        "each connection to one process; the per-process CPU shows how evenly), each server "
        "measured while the others idle. The ratios are in the results table above (each "
        "service against the echo of as many processes). Server CPU adds up the processes.",
        "",
        markdown_table(
            [
                "point (x processes)",
                "req/s",
                "p50 ms",
                "p99 ms",
                "server cores",
                "cores per process",
                "CPU per call",
                "h2load cores",
                "errors",
            ],
            body,
        ),
        "",
        f"Peak RSS per process: {peaks or 'not read'}.",
    ]


def _due_plan_md(plan: dict[str, Any], label: str) -> list[str]:
    if not plan:
        return []
    out = [
        f"{label}: {plan.get('query', '?')}, EXPLAIN (ANALYZE, BUFFERS), rolled back; "
        f"parameters: {plan.get('parameters') or 'none'}; returned {plan.get('rows', '?')} rows:",
        "",
        "```",
        plan.get("plan", ""),
        "```",
        "",
    ]
    if plan.get("empty_plan"):
        out += [
            "The same claim in the same bucket at the current time (nothing due there):",
            "",
            "```",
            plan["empty_plan"],
            "```",
            "",
        ]
    if plan.get("poll_plan"):
        out += [
            f"The lock-free poll (`{' '.join(plan.get('poll_statement', '').split())}`, "
            f"buckets with work: {plan.get('poll_buckets', '?')}):",
            "",
            "```",
            plan["poll_plan"],
            "```",
            "",
        ]
    return out


def _code_line(results: dict[str, Any]) -> str:
    code = results.get("code") or {}
    digest = results["source_digest"]
    line = (
        f"- Commit: `{results['commit']}`; src/ digest `{digest}` (sha256 over the files of "
        "`git ls-files src`, path and content)"
    )
    changes = code.get("source_changes") or []
    if changes:
        line += (
            f". **NOT LANDABLE: src/ had {len(changes)} uncommitted change(s) when measured** "
            f"(`git status --porcelain src`: {', '.join(changes[:5])}"
            + (", ..." if len(changes) > 5 else "")
            + "); the digest names the files as measured, not a commit"
        )
    elif code:
        line += "; src/ was committed (clean), so the digest is that commit's src/ tree"
    return line


def _echo_line(results: dict[str, Any]) -> str:
    per_call = results.get("machine", {}).get("echo_cpu_per_call_us")
    if per_call is None:
        return "- Echo CPU per call: not measured"
    return (
        f"- Echo CPU per call (this machine's gRPC floor): {per_call:,.0f} us, the echo server's "
        "CPU seconds per call at c=32 (h2load), from its process's CPU time over the window; "
        "compare two machines' figures by it"
    )


def write_results_md(
    path: Path, results: dict[str, Any], rows: list[Row], previous: Path | None = None
) -> None:
    """RESULTS.md for this run; the history and "Before and after" of `previous` are kept (a
    full run adds its row to the history: see bench/history.py)."""
    from bench import history

    root = Path(__file__).resolve().parent.parent
    earlier = history.read(previous, root) if previous is not None else []
    kept_text = previous.read_text() if previous is not None and previous.exists() else ""
    rows_history, note = history.update(
        earlier,
        results,
        history.cells_of(rows),
        os.environ.get("BENCH_CHANGE", "").strip(),
        full_run=bool(results.get("full_run")) and path == previous,
    )
    before_after = history.section(kept_text, history.BEFORE_AFTER)
    m = results["machine"]
    cfg = results["config"]
    echo = [p for p in results.get("echo", [])]
    plan = results.get("due_plan") or {}
    pg = results.get("postgres") or {}
    after = results.get("due_plan_after_burst") or {}
    dispatch = results.get("dispatch")
    small = results.get("dispatch_small")
    kind = (
        "The last full `make bench` run"
        if results.get("full_run")
        else "A partial run (`python -m bench` with --only or smaller settings; parts: "
        + ", ".join(results.get("parts", []))
        + "), not the project's figures"
    )
    lines = [
        "# Benchmark results",
        "",
        f"{kind} (written by `bench/report.py`; raw numbers in `bench/out/results.json`).",
        "",
        f"- Date: {results['started']} (UTC); `make bench` (python -m bench) took "
        f"{results['duration_s'] / 60:.1f} min",
        _code_line(results),
        _echo_line(results),
        f"- Machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['memory_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}; load average {m['load_average_at_start']} at "
        f"start, {results.get('load_average_at_end')} at end (other work on the machine shows "
        "up as noise)",
        "- Other processes busy at the start: "
        + ("; ".join(m.get("busy_processes_at_start", [])) or "none")
        + ". The machine is shared: single runs vary by 10-30%, and the c=1 echo point is "
        "bimodal between runs (about 2,300 or 5,000 req/s, depending on where the scheduler "
        "puts the client and server threads), so compare c=1 ratios with care; the targets are "
        "at c=32.",
        f"- PostgreSQL: {pg.get('version', '?')} on the same machine ("
        + ", ".join(f"{k}={v}" for k, v in pg.get("settings", {}).items())
        + f"); from a client here one round trip (`SELECT 1`) takes "
        f"{pg.get('round_trip_ms', float('nan')):.2f} ms and one INSERT transaction with its "
        f"durable commit {pg.get('insert_transaction_ms', float('nan')):.2f} ms",
        f"- Windows: {cfg['seconds']:g} s per point after a {cfg['warmup']:g} s warm-up; "
        f"c=32 is {cfg['layout_32']}; {cfg['big_rows']:,} and {cfg['small_rows']:,} rows stored "
        f"for scale, bursts of {cfg['due']:,} and {cfg['due_small']:,} due",
        "- Generators: h2load (nghttp2 "
        f"{results.get('h2load_version', '?')}, one thread, pre-serialised gRPC frames) for the "
        "echo baseline, GetSchedule, ListSchedules, GetEndpoints, PreviewSchedule and the scale "
        "points; a multi-process grpc.aio client (`py-client`) for CreateSchedule+DeleteSchedule "
        "and UpdateSchedule, which h2load cannot drive (a create's id feeds its delete; an update "
        "must change something each time). Ratios compare with the h2load echo at the same "
        "concurrency, the server's own ceiling; the py-client echo rows show that client's "
        "ceiling.",
        "",
        "## Results",
        "",
        markdown_table(HEADER, (_cells(r) for r in rows)),
        "",
        "Generator and server CPU during each point (cores, averaged over the window; server "
        "CPU per call = server cores / req/s):",
        "",
        markdown_table(
            [
                "point",
                "generator",
                "generator CPU",
                "server CPU",
                "server CPU per call",
                "requests",
                "errors",
            ],
            (
                [
                    f"{p['name']} c={p['concurrency']}",
                    p["generator"],
                    f"{p['generator_cpu']:.2f}",
                    f"{p['server_cpu']:.2f}",
                    _per_call(p),
                    f"{p['requests']}",
                    f"{p['errors']}",
                ]
                for p in [
                    *echo,
                    *results.get("api", []),
                    *results.get("scale", {}).get("points", []),
                ]
            ),
        ),
        "",
        *_bounds_md(results),
        "## Workers",
        "",
        *_workers_md(results.get("workers")),
        "",
        "## How it is measured",
        "",
        "- Echo baseline: `bench/echo_server.py`, a grpc.aio server in its own process with the "
        "service's server options and one unary method that returns its request bytes.",
        "- Service: `scheduler-host serve --migrate` in its own process on a scratch PostgreSQL "
        "database, `SCHEDULER_HOST_DISPATCHER=false`, `SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE="
        "1000000` (the limiter's SQL still runs on every mutation) and "
        "`SCHEDULER_HOST_READ_LIMIT_PER_MINUTE=100000000` (the per-process read limiter still "
        "counts every read, without refusing). Installs are registered "
        "through SchedulerAdmin; reads go to one install holding 50 schedules (ListSchedules "
        "returns a full page of 50). CreateSchedule+DeleteSchedule pairs rotate over 128 installs "
        "(valid payloads, a fresh request_id each); UpdateSchedule changes the payload of 256 "
        "schedules in 128 installs (each worker task owns its schedules). The create+delete "
        "req/s counts both calls.",
        "- Every h2load point is checked for gRPC errors: h2load counts HTTP 200 for a gRPC "
        "error, so the DATA bytes received must equal requests x the length of the OK answer a "
        "grpc stub got for the same bytes; p50/p99 come from h2load's per-request log.",
        f"- Scale: a second server on a second database whose table was brought to "
        f"{cfg['big_rows']:,} rows by `INSERT ... SELECT generate_series` from installs staged "
        "by COPY (50 schedules per install, each install its own tenant with its bucket computed "
        "by `bucket_of` and its install_directory entry, endpoints, daily crons 3 to 23 hours "
        "ahead so none falls due during the run, next run times, payloads as JSONB and as their "
        "google.protobuf.Value bytes), then `VACUUM ANALYZE` and `CHECKPOINT`; the first "
        f"database is topped up the same way to {cfg['small_rows']:,} rows. GetSchedule and "
        "ListSchedules of a "
        "50-schedule install are measured at c=1 on both, alternating for "
        f"{results.get('scale', {}).get('rounds', '?')} rounds; the table shows the median "
        "p50 of the rounds.",
        "- Memory: VmHWM (peak resident set) from /proc/<pid>/status of each server process.",
        "",
        "## Due query plan",
        "",
        f"The dispatcher's statements at {cfg['big_rows']:,} rows, as `PgDispatchStore` sends "
        "them: the claim of one bucket (the one holding the most schedules, at a `now` that makes "
        "a full batch due there, so nothing is written and the plan shows the batch's cost), the "
        "same claim with nothing due, and the poll over every bucket.",
        "",
        *(_due_plan_md(plan, "Before the dispatcher bursts") or ["Not run.", ""]),
        *_due_plan_md(after, "After the dispatcher bursts, with their runs stored"),
        "## Read query plans",
        "",
        f"The SQL of a warm GetSchedule and ListSchedules call (captured in-process), "
        f"EXPLAIN (ANALYZE, BUFFERS) at {cfg['big_rows']:,} rows:",
        "",
        *_read_plans_md(results.get("read_plans") or {}),
        "## Dispatcher",
        "",
    ]
    if isinstance(dispatch, dict):
        lines += [
            "Bulk schedules (spread over the installs) set due at the same instant T by one "
            f"UPDATE, among {cfg['big_rows']:,} stored, {dispatch.get('lead_s', 0):g} s before T "
            "(a cron occurrence is known ahead; the dispatcher wakes for it); a `scheduler-host "
            "serve` with the dispatcher on (default poll 1 s, batch 100, 500 runs in flight) "
            "calls the stand-in Runner (`scheduler_host.runner_standin`, answering success at "
            "once, in the bench process). Two bursts, each with a server of its own: "
            f"{dispatch['due']:,} schedules for the rate, "
            + (
                f"{small['due']:,} for the lateness. "
                if isinstance(small, dict)
                else "and no lateness burst. "
            )
            + "At R runs/s the run of rank k starts at least k/R after T, so the p99 lateness "
            "of a burst of N is at least 0.99 N / R: a 1 s p99 at 10,000 would need 9,900 runs/s, "
            "and the lateness target is judged on the smaller burst.",
            "",
            *_burst_md(dispatch),
        ]
        if isinstance(small, dict):
            lines += ["", *_burst_md(small)]
    else:
        lines.append(str(dispatch or "not measured"))
    lines += [
        "",
        "## Profile: GetSchedule at c=32",
        "",
        *_profile_md(
            results.get("profile") or {},
            "GetSchedule at c=32 (a separate pass, not one of the measured points)",
        ),
        "",
        "## Profile: the dispatcher during the burst",
        "",
        *_profile_md(
            dispatch.get("profile", {}) if isinstance(dispatch, dict) else {},
            "the dispatcher server from T on (sampled without pausing it, during the measured "
            "burst of " + (f"{dispatch['due']:,}" if isinstance(dispatch, dict) else "N") + ")",
        ),
        "",
        "## SQL statements per RPC",
        "",
        *_statements_md(results.get("statements") or []),
        "",
        "## Phases",
        "",
        markdown_table(
            ["phase", "seconds"], ([k, f"{v:.0f}"] for k, v in results.get("phases", {}).items())
        ),
        "",
        *history.markdown(rows_history, note),
    ]
    if before_after:
        lines += [before_after.rstrip("\n"), ""]
    path.write_text("\n".join(lines))
