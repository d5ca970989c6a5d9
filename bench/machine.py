"""What the run ran on, and which code it measured."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _process_ticks() -> dict[int, tuple[str, int]]:
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = cmdline.strip()[:80] or stat.split("(", 1)[1].rsplit(")", 1)[0]
        ticks[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def busy_processes(seconds: float = 1.0, threshold: float = 0.1) -> list[str]:
    """Other processes using more than `threshold` cores right now (noise for the run)."""
    before = _process_ticks()
    time.sleep(seconds)
    after = _process_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, ticks) in after.items():
        if pid in before and pid != os.getpid():
            cores = (ticks - before[pid][1]) / hz / seconds
            if cores >= threshold:
                busy.append(f"{name} ({cores:.2f} cores)")
    return busy


def describe() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
        "busy_processes_at_start": busy_processes(),
    }


def commit() -> str:
    """HEAD's commit, read from .git (what `git rev-parse HEAD` prints)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.exists():
            return loose.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return "unknown"


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def source_digest(root: Path = ROOT) -> str:
    """sha256 over the files of `git ls-files src` (path NUL content NUL, in path order), read
    from the work tree: with a clean src/ (see `source_changes`), the committed src/ tree."""
    digest = hashlib.sha256()
    for name in sorted(_git(root, "ls-files", "-z", "src").split("\0")):
        if not name:
            continue
        path = root / name
        content = path.read_bytes() if path.is_file() else b"(deleted)"
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def source_changes(root: Path = ROOT) -> list[str]:
    """`git status --porcelain src`: uncommitted changes (and untracked files) under src/. A run
    with any is not landable: its digest names no commit."""
    return [line for line in _git(root, "status", "--porcelain", "src").splitlines() if line]


def commit_subject(root: Path = ROOT, path: str = "src") -> str:
    """The subject of the last commit that touched `path`."""
    return _git(root, "log", "-1", "--format=%s", "--", path).strip()


def code(root: Path = ROOT) -> dict[str, Any]:
    """What was measured: HEAD, the src/ digest, and whether src/ had uncommitted changes."""
    changes = source_changes(root)
    return {
        "commit": _git(root, "rev-parse", "HEAD").strip(),
        "source_digest": source_digest(root),
        "source_changes": changes,
        "landable": not changes,
        "src_subject": commit_subject(root),
    }
