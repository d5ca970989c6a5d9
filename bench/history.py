"""bench/RESULTS.md across runs: its history table and its "Before and after" section.

The history has one row per landed change that moved a figure: the throughput ratios at c=32
(against the same run's echo), the dispatcher's rate and lateness, and the echo's CPU per call
(what the machine is, so that rows from two machines can be told apart). Each full run reads the
table from the previous RESULTS.md and writes it back (cells edited by hand are kept), adding a
row when the measured src/ is committed (landable), differs from the last row's and moved a
figure by MOVED or more (or when BENCH_CHANGE names the change). A previous RESULTS.md without
the table seeds it with the one run it records.

"Before and after" is written by `python -m bench.compare` and carried over unchanged by a run.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path
from typing import Any

HISTORY = "## History"
BEFORE_AFTER = "## Before and after"
HEADER = [
    "date",
    "commit",
    "src digest",
    "what changed",
    "GetSchedule",
    "ListSchedules",
    "Create+Delete",
    "Update",
    "dispatcher runs/s",
    "lateness p99 (big / small burst)",
    "echo CPU per call",
]
# The history's ratio columns: the c=32 throughput rows of the results table.
RATIO_METRICS = {
    "GetSchedule": "GetSchedule c=32 req/s",
    "ListSchedules": "ListSchedules c=32 req/s",
    "Create+Delete": "CreateSchedule+DeleteSchedule c=32 req/s",
    "Update": "UpdateSchedule c=32 req/s",
}
# The figures compared to decide whether a change moved one.
MOVING = (*RATIO_METRICS, "dispatcher runs/s", "lateness p99 (big / small burst)")
MOVED = 0.10
_RUNS = re.compile(r"^dispatcher: (\d+) due at once, runs/s$")
_LATENESS = re.compile(r"^dispatcher: (\d+) due at once, lateness p99$")

Cells = dict[str, tuple[str, str]]  # results-table metric: (value, ratio), as printed


def section(text: str, heading: str) -> str | None:
    """The section of `text` from `heading` to the next heading of its level (or the end)."""
    lines = text.splitlines(keepends=True)
    for first, line in enumerate(lines):
        if line.rstrip("\n") == heading:
            end = first + 1
            while end < len(lines) and not lines[end].startswith("## "):
                end += 1
            return "".join(lines[first:end])
    return None


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` with its section `heading` replaced by `body` (which starts with the heading), or
    with `body` added at the end."""
    old = section(text, heading)
    if old is None:
        return text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    return text.replace(old, body.rstrip("\n") + "\n\n", 1)


def table(text: str) -> list[list[str]]:
    """The first markdown table in `text`, header row first, cells stripped and unescaped."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if not all(set(c) <= {"-", ":"} for c in cells):
                rows.append(cells)
        elif rows:
            break
    return rows


def results_cells(text: str) -> Cells:
    """The metric, value and ratio cells of a RESULTS.md's results table."""
    body = section(text, "## Results") or ""
    return {row[0]: (row[1], row[3]) for row in table(body)[1:] if len(row) >= 4}


def cells_of(rows: list[Any]) -> Cells:
    """The same cells from this run's rows (report.Row)."""
    from bench.report import _cells

    return {r.metric: (c[1], c[3]) for r in rows for c in [_cells(r)]}


def number(cell: str) -> float | None:
    """The first number of a cell ("2,441 runs/s" -> 2441.0); None when there is none."""
    match = re.search(r"-?\d[\d,]*(?:\.\d+)?", cell)
    return float(match.group().replace(",", "")) if match else None


def _bursts(cells: Cells) -> tuple[str, str]:
    """(runs/s of the biggest burst, "p99 big / p99 small") from a results table."""
    runs = {int(m[1]): value for k, (value, _) in cells.items() if (m := _RUNS.match(k))}
    late = {int(m[1]): value for k, (value, _) in cells.items() if (m := _LATENESS.match(k))}
    rate = runs[max(runs)].removesuffix(" runs/s") if runs else "-"
    lateness = " / ".join(late[n] for n in sorted(late, reverse=True)) if late else "-"
    return rate, lateness


def figures(cells: Cells, echo_cpu_us: str) -> dict[str, str]:
    """A history row's figure columns from a results table."""
    row = {column: cells.get(metric, ("", "-"))[1] for column, metric in RATIO_METRICS.items()}
    row["dispatcher runs/s"], row["lateness p99 (big / small burst)"] = _bursts(cells)
    row["echo CPU per call"] = echo_cpu_us
    return row


def _subject(commit: str, root: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), "log", "-1", "--format=%s", commit],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def seed(text: str, root: Path) -> list[dict[str, str]]:
    """The one row a RESULTS.md without a history table records: its run."""
    cells = results_cells(text)
    date = re.search(r"^- Date: (\d{4}-\d{2}-\d{2})", text, re.MULTILINE)
    commit = re.search(r"^- Commit: `([0-9a-f]+)`", text, re.MULTILINE)
    digest = re.search(r"src/ digest `([0-9a-f]+)`", text)
    if not cells or not date or not commit:
        return []
    points = text.find("| point |")
    echo = next(
        (
            row[4]
            for row in (table(text[points:]) if points >= 0 else [])
            if row[:2] == ["echo c=32", "h2load"] and len(row) > 4
        ),
        "-",
    )
    subject = _subject(commit[1], root)
    row = {
        "date": date[1],
        "commit": commit[1][:7],
        "src digest": (digest[1][:12] + " (older digest: src/**/*.py)") if digest else "-",
        "what changed": short(
            "seed, from the RESULTS.md of this run (before the history table)"
            + (f": {subject}" if subject else ""),
            160,
        ),
        **figures(cells, echo),
    }
    return [row]


def read(path: Path, root: Path) -> list[dict[str, str]]:
    """The history of the RESULTS.md at `path` (seeded if it has no table; empty if no file)."""
    if not path.exists():
        return []
    text = path.read_text()
    body = section(text, HISTORY)
    if body is None:
        return seed(text, root)
    rows = table(body)
    if not rows:
        return []
    header, *entries = rows
    return [dict(zip(header, entry, strict=False)) for entry in entries]


def moved(last: dict[str, str], new: dict[str, str]) -> list[str]:
    """The figures of `new` that differ from `last` by MOVED or more."""
    out = []
    for column in MOVING:
        for old_cell, new_cell in zip(
            last.get(column, "").split(" / "), new.get(column, "").split(" / "), strict=False
        ):
            a, b = number(old_cell), number(new_cell)
            if a is None or b is None or math.isclose(a, 0.0):
                continue
            if abs(b / a - 1) >= MOVED:
                out.append(f"{column} {old_cell} -> {new_cell}")
                break
    return out


def update(
    history: list[dict[str, str]],
    results: dict[str, Any],
    cells: Cells,
    change: str,
    *,
    full_run: bool,
) -> tuple[list[dict[str, str]], str]:
    """The history with this run's row added where it belongs, and a sentence saying what
    happened to it."""
    code = results.get("code", {})
    echo = results["machine"].get("echo_cpu_per_call_us")
    row = {
        "date": results["started"][:10],
        "commit": results["commit"][:7],
        "src digest": results["source_digest"][:12],
        "what changed": short(change or code.get("src_subject", "")),
        **figures(cells, f"{echo:,.0f} us" if isinstance(echo, int | float) else "-"),
    }
    if not full_run:
        return history, "This run is partial: it adds no row."
    if not code.get("landable", False):
        return history, "This run measured uncommitted src/ changes (not landable): no row."
    last = history[-1] if history else None
    if last is not None and last.get("src digest", "").startswith(row["src digest"]):
        return history, "This run measured the src/ of the last row: no row added."
    movement = moved(last, row) if last is not None else ["first row"]
    if not movement and not change:
        return history, (
            f"This run's src/ differs from the last row's but moved no figure by "
            f"{MOVED:.0%} or more: no row added (BENCH_CHANGE=... adds one)."
        )
    return [*history, row], "This run added the last row (" + "; ".join(movement) + ")."


def markdown(history: list[dict[str, str]], note: str) -> list[str]:
    from bench.report import markdown_table

    return [
        HISTORY,
        "",
        "One row per landed change that moved a figure (by "
        f"{MOVED:.0%} or more against the row before, or named by BENCH_CHANGE): the c=32 "
        "throughput ratios against the same run's echo, the dispatcher's runs/s (the big burst) "
        "and lateness p99 (big / small burst), and the echo server's CPU per call at c=32, which "
        "tells machines apart (rows measured on different machines compare by their ratios "
        "only). Kept from the previous RESULTS.md by each full run; cells may be edited by hand. "
        + note,
        "",
        markdown_table(HEADER, ([row.get(column, "-") for column in HEADER] for row in history)),
        "",
    ]
