"""What /proc says about a process: CPU time used and peak resident memory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of `pid` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces; the fields after its closing parenthesis do not.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmHWM (peak resident set) or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(key)


def peak_rss_mib(pid: int) -> float:
    return status_kib(pid, "VmHWM") / 1024


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have been waited for (the load generators)."""
    times = os.times()
    return times.children_user + times.children_system


def total_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of several processes (a group of servers) so far."""
    return sum(cpu_seconds(pid) for pid in pids)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (e.g. the workers of `serve --workers N`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)
