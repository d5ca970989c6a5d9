"""What one Runner client costs: N calls at a fixed concurrency against the stand-in Runner.

The stand-in Runner (scheduler_host.runner_standin, answering success at once) runs in a child
process, so that its work is not counted; this process drives the calls through one client, as
the dispatcher does (the same RunnerCall, one client, `max_connections` = the concurrency), and
prints calls per second and this process's CPU time per call. Both run on uvloop, as `serve` does.

    python -m bench.runner_client [--calls 20000] [--concurrency 500] [--rounds 3]
        [--client scheduler_host.adapters.runner_http:HttpRunnerClient]

`--client module:Class` names any class built as `Class(base_url, max_connections)` with the
RunnerClient methods, so that two implementations can be measured in the same conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scheduler_host.domain.install import InstallContext
from scheduler_host.domain.runs import RunTrigger
from scheduler_host.domain.schedule import Schedule
from scheduler_host.runner_standin import StandInRunner
from scheduler_host.service.ports import RunnerCall, RunTarget
from scheduler_host.transport.event_loop import run

WARMUP_CALLS = 1000
DEFAULT_CLIENT = "scheduler_host.adapters.runner_http:HttpRunnerClient"


@dataclass(frozen=True)
class Round:
    calls: int
    failures: int
    seconds: float
    cpu_seconds: float

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.calls * 1e6


def sample_call() -> RunnerCall:
    """A call as the dispatcher makes it: a POST endpoint with a small JSON payload."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    install_id = uuid.uuid4()
    schedule = Schedule(
        id=uuid.uuid4(),
        install_id=install_id,
        tenant_id="tenant-bench",
        endpoint_id=uuid.uuid4(),
        endpoint_method="POST",
        endpoint_path="/jobs/sync",
        name="nightly sync",
        cron="*/5 * * * *",
        timezone="UTC",
        enabled=True,
        payload={"full": False, "since": "2026-01-01T00:00:00Z"},
        next_run_time=now,
        last_run_time=None,
        last_run_status=None,
        last_error=None,
        create_time=now,
        update_time=now,
        revision=1,
    )
    install = InstallContext(
        install_id=install_id,
        tenant_id="tenant-bench",
        registry_id="com.example.bench",
        version_id="1.0.0",
        content_hash="sha256:" + "0" * 64,
        enabled=True,
        capabilities=frozenset({"cap:scheduler.manage", "cap:http.fetch"}),
    )
    target = RunTarget(schedule, install, endpoint_found=True, run_in_flight=False)
    return RunnerCall(target, RunTrigger.SCHEDULE, str(uuid.uuid4()), str(uuid.uuid4()), 30.0)


async def drive(client: Any, calls: int, concurrency: int) -> tuple[int, float, float]:
    """`calls` calls from `concurrency` workers; failures, wall seconds, CPU seconds."""
    call = sample_call()
    remaining = calls
    failures = 0

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            outcome = await client.execute(call)
            if not outcome.ok:
                failures += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures, time.perf_counter() - wall, time.process_time() - cpu


async def measure(url: str, client_path: str, calls: int, concurrency: int, rounds: int) -> None:
    module_name, _, class_name = client_path.partition(":")
    client_class = getattr(importlib.import_module(module_name), class_name)
    client = client_class(url, concurrency)
    try:
        # Opens the connections, as a running dispatcher has them.
        await drive(client, WARMUP_CALLS, concurrency)
        results = []
        for _ in range(rounds):
            failures, seconds, cpu = await drive(client, calls, concurrency)
            results.append(Round(calls, failures, seconds, cpu))
            print(
                f"{client_path}: {calls} calls at concurrency {concurrency}: "
                f"{results[-1].calls_per_second:,.0f} calls/s, "
                f"{results[-1].cpu_us_per_call:.0f} us CPU/call, {failures} failed",
                flush=True,
            )
    finally:
        await client.close()
    print(
        f"{client_path}: median of {rounds}: "
        f"{statistics.median(r.calls_per_second for r in results):,.0f} calls/s, "
        f"{statistics.median(r.cpu_us_per_call for r in results):.0f} us CPU/call",
        flush=True,
    )


async def serve() -> None:
    """The child: the stand-in Runner until stdin closes; its port on the first line."""
    runner = StandInRunner()
    await runner.start()
    print(runner.port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await runner.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", default=DEFAULT_CLIENT)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run(serve())
        return
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.runner_client", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        run(measure(url, args.client, args.calls, args.concurrency, args.rounds))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


if __name__ == "__main__":
    main()
