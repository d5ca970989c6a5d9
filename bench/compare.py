"""Before and after: the bench at a git revision and at the work tree, one after the other.

    python -m bench.compare REV [--keep] [--output bench/RESULTS.md]

REV is checked out with `git worktree add` into a temporary directory and gets a venv of its own
(`make .venv/.installed` there, with this interpreter's Python, and py-spy as `make bench` adds
it); its own bench (`python -m bench` of that revision) measures its own code. Then the work
tree's bench measures the work tree. Both runs get the same environment (every BENCH_* setting
is passed to both; e.g. BENCH_ROWS=200000 to fit in time), share this machine and the same
PostgreSQL, and write their bench/out/results.json, kept as bench/out/compare/before.json and
after.json. Their tables go side by side into the "Before and after" section of `--output`
(bench/RESULTS.md), replacing the section if there is one; the rest of the file is left as it is
(a full run of the work tree, with the default settings, has just written it).

A figure is "worse" when it moved more than LIMIT in the wrong direction: throughput (req/s,
runs/s) down, latency, time and memory up. For rows with a ratio against their run's echo the
ratios are compared (each run's own baseline); other rows compare their values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import history, machine
from bench.report import _fmt, markdown_table

ROOT = machine.ROOT
OUT = ROOT / "bench" / "out" / "compare"
LIMIT = 0.10
# Units where a higher value is better; for every other unit lower is better.
HIGHER_IS_BETTER = frozenset({"req/s", "runs/s"})


def say(message: str) -> None:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    print(f"[compare {stamp}] {message}", file=sys.stderr, flush=True)


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def bench_settings() -> dict[str, str]:
    """The BENCH_* variables of this environment: what both runs get."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("BENCH_")}


def prepare(rev: str, where: Path) -> Path:
    """A worktree of `rev` under `where`, with its venv (and py-spy) installed."""
    tree = where / "tree"
    say(f"git worktree add {tree} {rev}")
    git("worktree", "add", "--detach", str(tree), rev)
    python = str(Path(sys.executable).resolve())  # the same Python as this venv
    say("make .venv/.installed in the worktree (its own dependencies)")
    subprocess.run(["make", "-C", str(tree), ".venv/.installed", f"PYTHON={python}"], check=True)
    venv_python = tree / ".venv" / "bin" / "python"
    if not (tree / ".venv" / "bin" / "py-spy").exists():
        subprocess.run([str(venv_python), "-m", "pip", "install", "--quiet", "py-spy"], check=False)
    return tree


def run_bench(tree: Path, python: Path, log: Path) -> dict[str, Any]:
    """`python -m bench` in `tree` (its own bench and code); its results.json."""
    results = tree / "bench" / "out" / "results.json"
    results.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    started = time.monotonic()
    say(f"python -m bench in {tree} (log: {log})")
    with log.open("w") as out:
        done = subprocess.run(
            [str(python), "-m", "bench"], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0 or not results.exists():
        raise RuntimeError(f"the bench in {tree} failed (exit {done.returncode}); see {log}")
    say(f"done in {(time.monotonic() - started) / 60:.1f} min")
    data: dict[str, Any] = json.loads(results.read_text())
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def change(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[str, str]:
    """(after / before, the verdict) of one row: ratios where both have one, else values."""
    if before is None or after is None:
        return "-", "-"
    key = "ratio" if _number(before.get("ratio")) and _number(after.get("ratio")) else "value"
    old, new = _number(before.get(key)), _number(after.get(key))
    if old is None or new is None or old == 0:
        same = before.get("value") == after.get("value")
        return "-", "-" if same or not isinstance(after.get("value"), str) else "changed"
    factor = new / old
    higher_better = after.get("unit") in HIGHER_IS_BETTER
    worse = factor < 1 - LIMIT if higher_better else factor > 1 + LIMIT
    better = factor > 1 + LIMIT if higher_better else factor < 1 - LIMIT
    verdict = f"WORSE ({key})" if worse else f"better ({key})" if better else "same"
    return f"{factor:.2f}", verdict


def _cells(row: dict[str, Any] | None) -> tuple[str, str]:
    if row is None:
        return "-", "-"
    ratio = row.get("ratio")
    return _fmt(row.get("value"), row.get("unit", "")), "-" if ratio is None else f"{ratio:.2f}"


def _run_line(name: str, rev: str, results: dict[str, Any], code: dict[str, Any]) -> str:
    m = results.get("machine", {})
    echo = next(
        (
            p
            for p in results.get("echo", [])
            if p["concurrency"] == 32 and p["generator"] == "h2load" and p.get("rps")
        ),
        None,
    )
    per_call = f"{echo['server_cpu'] / echo['rps'] * 1e6:,.0f} us" if echo else "?"
    landable = "" if code.get("landable") else ", NOT LANDABLE (uncommitted src/ changes)"
    return (
        f"- {name}: {rev} (commit `{code.get('commit', '?')[:12]}`, src/ digest "
        f"`{code.get('source_digest', '?')[:16]}`{landable}), started {results.get('started')} "
        f"UTC, took {results.get('duration_s', 0) / 60:.1f} min; load average "
        f"{m.get('load_average_at_start', '?')} at start, {results.get('load_average_at_end')} "
        f"at end; echo CPU per call at c=32: {per_call}"
    )


def section(
    rev: str,
    before: dict[str, Any],
    after: dict[str, Any],
    before_code: dict[str, Any],
    after_code: dict[str, Any],
    settings: dict[str, str],
) -> str:
    old = {r["metric"]: r for r in before.get("table", [])}
    new = {r["metric"]: r for r in after.get("table", [])}
    metrics = [*new, *(m for m in old if m not in new)]
    body = []
    worse_ratios = []
    compared = 0
    for metric in metrics:
        b, a = old.get(metric), new.get(metric)
        factor, verdict = change(b, a)
        if verdict.endswith("(ratio)"):
            compared += 1
            if verdict.startswith("WORSE"):
                worse_ratios.append(f"{metric} ({factor})")
        body.append([metric, *_cells(b), *_cells(a), factor, verdict])
    m = after.get("machine", {})
    configured = ", ".join(f"{k}={v}" for k, v in settings.items()) or "none (the defaults)"
    summary = (
        f"{len(worse_ratios)} of the {compared} ratios both runs have are more than "
        f"{LIMIT:.0%} worse after than before"
        + (": " + "; ".join(worse_ratios) if worse_ratios else "")
        + "."
    )
    lines = [
        history.BEFORE_AFTER,
        "",
        f"Written by `python -m bench.compare {rev}`: the bench of revision {rev} (its own bench "
        "code, in a git worktree with its own venv) and then the work tree's, one after the "
        f"other on this machine ({m.get('cpu_model', '?')}, {m.get('nproc', '?')} CPUs), with "
        f"the same settings: {configured}. Sizes below the defaults make both runs partial "
        "(same for both, so their figures compare; not the project's full figures). Each ratio "
        "is against its own run's echo; `after / before` divides the ratios where both rows have "
        f"one, else the values; WORSE marks a move of more than {LIMIT:.0%} the wrong way "
        "(throughput down; latency, time or memory up). The c=1 echo is bimodal between runs on "
        "this machine, so c=1 ratios compare with care.",
        "",
        _run_line("Before", rev, before, before_code),
        _run_line("After", "the work tree", after, after_code),
        f"- {summary}",
        "",
        markdown_table(
            [
                "metric",
                "before",
                "before ratio",
                "after",
                "after ratio",
                "after / before",
                "verdict",
            ],
            body,
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("rev", help="the revision measured before the work tree, e.g. 38a1680")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "RESULTS.md",
        help="the file whose 'Before and after' section is written (default: bench/RESULTS.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the worktree and its venv")
    arguments = parser.parse_args(argv)
    rev = git("rev-parse", "--short=12", f"{arguments.rev}^{{commit}}")
    settings = bench_settings()
    OUT.mkdir(parents=True, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    tree = where / "tree"
    try:
        prepare(rev, where)
        before_code = machine.code(tree)
        before = run_bench(tree, tree / ".venv" / "bin" / "python", OUT / "before.log")
        (OUT / "before.json").write_text(json.dumps(before, indent=2) + "\n")
        after_code = machine.code()
        after = run_bench(ROOT, Path(sys.executable), OUT / "after.log")
        (OUT / "after.json").write_text(json.dumps(after, indent=2) + "\n")
    finally:
        if arguments.keep:
            say(f"kept {tree}")
        else:
            if tree.exists():
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
                )
            shutil.rmtree(where, ignore_errors=True)
            git("worktree", "prune")
    text = section(rev, before, after, before_code, after_code, settings)
    output: Path = arguments.output
    current = output.read_text() if output.exists() else "# Benchmark results\n"
    output.write_text(history.replace_section(current, history.BEFORE_AFTER, text))
    print(text)
    say(f"wrote the 'Before and after' section of {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
