"""`scheduler-host serve --workers N`: N server processes on one port (SO_REUSEPORT), so that a
host's cores all answer calls. Each worker is a whole service (its share of the connection pool,
its own dispatcher; they coordinate through the database as separate hosts do). Worker i serves
metrics on the metrics port + i. This process starts the database once (the embedded one, when
no URL is set) and migrates it if asked, starts the workers, and on SIGTERM or SIGINT stops them
all; if one exits on its own, it stops the others and exits 1 (the supervisor above restarts).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace

from scheduler_host.config import Settings

log = logging.getLogger("scheduler_host.workers")

# Seconds a worker gets beyond the grace period to exit before it is killed.
_EXIT_MARGIN = 5.0


def worker_count(raw: str) -> int:
    """`auto` (one per core) or a whole number of at least 1."""
    if raw == "auto":
        return os.cpu_count() or 1
    count = int(raw)
    if count < 1:
        raise ValueError("at least one worker")
    return count


def worker_settings(settings: Settings, index: int, workers: int) -> dict[str, str]:
    """The variables that make worker `index` of `workers` out of the group's settings."""
    env = {
        # Each takes its share of the connections the operator gave the whole group.
        "SCHEDULER_HOST_DB_POOL_SIZE": str(max(2, math.ceil(settings.db_pool_size / workers))),
        "SCHEDULER_HOST_DISPATCH_CONNECTIONS": str(
            max(1, math.ceil(settings.dispatch_connections / workers))
        ),
    }
    if settings.metrics_listen:
        host, _, port = settings.metrics_listen.rpartition(":")
        env["SCHEDULER_HOST_METRICS_LISTEN"] = f"{host}:{int(port) + index}"
    return env


def _spawn(
    settings: Settings, database_url: str, index: int, workers: int
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **worker_settings(settings, index, workers),
        "SCHEDULER_HOST_DATABASE_URL": database_url,
    }
    command = [sys.executable, "-m", "scheduler_host.cli", "serve", "--group-member", str(index)]
    return subprocess.Popen(command, env=env)


async def run_group(settings: Settings, workers: int, *, migrate: bool) -> int:
    """Run `workers` workers until SIGTERM or SIGINT (exit 0) or until one dies (exit 1)."""
    from scheduler_host import app

    url, embedded = await app.database_url(settings)
    try:
        await app.prepare_database(url, migrate=migrate)
        return await _supervise(replace(settings, database_url=url), workers)
    finally:
        if embedded is not None:
            await embedded.stop()


async def _supervise(settings: Settings, workers: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    processes = [_spawn(settings, settings.database_url, i, workers) for i in range(workers)]
    log.info(
        "started %d workers on %s: pids %s",
        workers,
        settings.listen,
        ", ".join(str(p.pid) for p in processes),
    )
    waits = [asyncio.create_task(asyncio.to_thread(p.wait)) for p in processes]
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopped, *waits], return_when=asyncio.FIRST_COMPLETED)
    code = 0 if stopped in done else 1
    if code:
        died = next(p for p, w in zip(processes, waits, strict=True) if w in done)
        log.error("worker %d exited with %s; stopping the others", died.pid, died.returncode)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = settings.shutdown_grace_seconds + _EXIT_MARGIN
    _, late = await asyncio.wait(waits, timeout=deadline)
    for process, wait in zip(processes, waits, strict=True):
        if wait in late:
            log.error("worker %d did not stop within %.0f s; killing it", process.pid, deadline)
            process.kill()
    await asyncio.gather(*waits, return_exceptions=True)
    stopped.cancel()
    return code
