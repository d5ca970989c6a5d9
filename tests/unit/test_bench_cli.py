"""`python -m bench` arguments: help returns at once instead of starting a run; `--only` names
known parts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    # The timeout only guards against a benchmark starting by mistake (minutes long).
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_help_prints_usage_and_exits_0() -> None:
    done = bench("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m bench")
    assert "--only NAME[,NAME]" in done.stdout
    for part in ("echo", "api", "scale", "dispatch"):
        assert f"  {part} " in done.stdout, part
    assert done.stderr == "", "nothing was measured"


def test_only_refuses_an_unknown_part() -> None:
    done = bench("--only", "api,warp")
    assert done.returncode == 2
    assert "unknown part warp" in done.stderr
