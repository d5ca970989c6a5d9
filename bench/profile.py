"""Where the server's time goes under load: py-spy samples, summarised by function and area."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RATE = 100  # samples per second
_ROOT = str(Path(__file__).resolve().parent.parent) + "/"
_SHORT = re.compile(rf"^.*(?:site-packages/|/src/|/lib/python3\.\d+/|{re.escape(_ROOT)})")
# Frames every sample passes through (the loop, the command): left out of the inclusive list.
_FRAMEWORK = (
    "/asyncio/",
    "<frozen runpy>",
    "/scheduler_host/cli/",
    "/click/",
    "/threading.py",
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Areas by the path of a frame's file, first match wins.
_AREAS = (
    ("scheduler_host", "/scheduler_host/"),
    ("generated protobuf", "/schedulerhost/"),
    ("grpc", "/grpc/"),
    ("grpc", "grpc/_cython"),
    ("sqlalchemy", "/sqlalchemy/"),
    ("asyncpg", "/asyncpg/"),
    ("aiohttp (the Runner client)", "/aiohttp/"),
    ("aiohttp (the Runner client)", "/yarl/"),
    ("aiohttp (the Runner client)", "/multidict/"),
    ("protobuf", "/google/protobuf/"),
    ("opentelemetry", "/opentelemetry/"),
    ("prometheus_client", "/prometheus_client/"),
    ("logging", "/logging/"),
    ("uvloop", "/uvloop/"),
    ("json", "/json/"),
    ("asyncio", "/asyncio/"),
    ("event loop wait (epoll)", "/selectors.py"),
    ("zoneinfo", "/zoneinfo/"),
)


_NATIVE = "grpc.aio and event loop native code (self time of Handle._run / Runner.run)"


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    samples: int
    seconds: float
    busy: float  # share of the samples' wall time the main thread was running Python
    self_top: list[tuple[str, float]] = field(default_factory=list)  # function, % of samples
    inclusive_top: list[tuple[str, float]] = field(default_factory=list)
    areas: list[tuple[str, float]] = field(default_factory=list)  # self time by library
    scheduler_host: list[tuple[str, float]] = field(default_factory=list)  # inclusive, own code
    other_threads: dict[str, float] = field(default_factory=dict)  # thread: samples per tick
    raw_file: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _area(file: str) -> str:
    for area, marker in _AREAS:
        if marker in file:
            return area
    return "other"


def _label(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    file = match["file"]
    return f"{match['func']} ({_SHORT.sub('', file)})", file


def summarise(raw: str, seconds: float, top: int = 12) -> Profile:
    """Summarise py-spy's raw output (`thread (id): name;frame;... count` lines, recorded with
    --threads): shares are of the main thread's samples, where the event loop runs. grpc.aio's
    poller thread waits in native code without the GIL and is reported on its own."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    own: Counter[str] = Counter()
    others: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, _, rest = stack.partition(";")
        if not thread.endswith(": MainThread"):
            others[thread.split(": ", 1)[-1]] += count
            continue
        frames = [_label(f) for f in rest.split(";") if f]
        if not frames:
            continue
        total += count
        leaf, leaf_file = frames[-1]
        self_counts[leaf] += count
        # Cython code (grpc.aio's callbacks and, on uvloop, the loop itself) has no Python
        # frame: its time shows as the self time of the innermost Python frame below it, which is
        # Handle._run on the standard loop and Runner.run on uvloop.
        native = leaf.startswith(("Handle._run ", "Runner.run "))
        areas[_NATIVE if native else _area(leaf_file)] += count
        for name in {n for n, file in frames if not any(f in file for f in _FRAMEWORK)}:
            inclusive[name] += count
        for name in {n for n, file in frames if "/scheduler_host/" in file and "/cli/" not in file}:
            own[name] += count

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)] if total else []

    return Profile(
        samples=total,
        seconds=seconds,
        busy=round(total / (seconds * RATE), 3) if seconds else 0.0,
        self_top=share(self_counts, top),
        inclusive_top=share(inclusive, top),
        areas=share(areas, len(areas)),
        scheduler_host=share(own, top),
        other_threads={k: round(v / (seconds * RATE), 3) for k, v in others.items()},
    )


def record(pid: int, seconds: float, out: Path, *, nonblocking: bool = False) -> Profile:
    """Sample `pid` for `seconds`; the call blocks, the caller runs the load meanwhile.

    `nonblocking` samples without pausing the process (less exact stacks, no slow-down), for a
    profile taken during a measurement."""
    tool = py_spy()
    if tool is None:
        return Profile(0, seconds, 0.0, error="py-spy is not installed")
    argv = [
        tool,
        "record",
        "--pid",
        str(pid),
        "--duration",
        f"{max(1, round(seconds))}",
        "--rate",
        str(RATE),
        "--format",
        "raw",
        "--threads",
        "--full-filenames",
        "--output",
        str(out),
        *(["--nonblocking"] if nonblocking else []),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.exists():
        return Profile(0, seconds, 0.0, error=(done.stderr or done.stdout).strip()[-500:])
    profile = summarise(out.read_text(), seconds)
    profile.raw_file = str(out)
    return profile
