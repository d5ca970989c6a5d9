"""The stand-in Runner for tests: records every execution and answers from a per-schedule script."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from scheduler_host.runner_standin import Execution, Reply, StandInRunner

# A scripted step: a fixed reply, or a coroutine (to delay, hang, or decide from the request).
Step = Reply | Callable[[Execution], Awaitable[Reply]]


def json_reply(text: str, status: int = 200) -> Reply:
    return Reply(status=status, body=text.encode())


def hold_until(event: asyncio.Event, reply: Reply | None = None) -> Step:
    """Answer only once `event` is set (a run kept in flight)."""

    async def step(_execution: Execution) -> Reply:
        await event.wait()
        return reply or Reply()

    return step


def slow(seconds: float, reply: Reply | None = None) -> Step:
    async def step(_execution: Execution) -> Reply:
        await asyncio.sleep(seconds)
        return reply or Reply()

    return step


@dataclass
class RecordingRunner:
    """Every call in arrival order; `script[schedule_id]` is consumed one step per call."""

    executions: list[Execution] = field(default_factory=list)
    script: dict[str, list[Step]] = field(default_factory=lambda: defaultdict(list))
    default: Step = field(default_factory=Reply)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: StandInRunner = field(init=False)

    def __post_init__(self) -> None:
        self.server = StandInRunner(self._respond)

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def of(self, schedule_id: str) -> list[Execution]:
        return [e for e in self.executions if e.schedule_id == schedule_id]

    def deliveries_per_key(self) -> Counter[str]:
        return Counter(e.idempotency_key for e in self.executions)

    def keys_per_schedule(self) -> dict[str, set[str]]:
        keys: dict[str, set[str]] = defaultdict(set)
        for e in self.executions:
            keys[e.schedule_id].add(e.idempotency_key)
        return keys

    async def wait_for(self, count: int, within: float = 10) -> None:
        """Until at least `count` executions arrived."""
        async with asyncio.timeout(within):
            while len(self.executions) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def _respond(self, execution: Execution) -> Reply:
        self.executions.append(execution)
        self.arrived.set()
        steps = self.script.get(execution.schedule_id)
        step = steps.pop(0) if steps else self.default
        return step if isinstance(step, Reply) else await step(execution)
