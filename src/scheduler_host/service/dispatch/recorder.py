"""The outcome recorder: finished runs are written together, a batch every few milliseconds,
instead of a write each (the store splits a batch by bucket, one statement each)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from scheduler_host.domain.runs import ScheduleRun
from scheduler_host.service.ports import DispatchStore, RunOutcome

# The first outcome of a batch waits this long for others; those that come while a batch is
# being written go in the next one.
GATHER_SECONDS = 0.005
BATCH_LIMIT = 500


class OutcomeRecorder:
    def __init__(self, store: DispatchStore, on_written: Callable[[], None]) -> None:
        """`on_written` is told when an outcome has been handed over (its run's Runner slot is
        free for claiming again while the write goes on)."""
        self._store = store
        self._on_written = on_written
        self._pending: list[tuple[RunOutcome, asyncio.Future[ScheduleRun | None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.waiting = 0  # outcomes handed over and not yet written

    async def record(self, outcome: RunOutcome) -> ScheduleRun | None:
        """The finished run as written, or None when its claim was lost; raises what the store
        raised for its batch (an outage, say)."""
        future: asyncio.Future[ScheduleRun | None] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="scheduler-host-run-recorder")
        self.waiting += 1
        self._on_written()
        try:
            return await future
        finally:
            self.waiting -= 1

    async def _write(self) -> None:
        await asyncio.sleep(GATHER_SECONDS)
        while self._pending:
            group = self._pending[:BATCH_LIMIT]
            del self._pending[:BATCH_LIMIT]
            try:
                results = await self._store.finish_runs([outcome for outcome, _ in group])
            except Exception as exc:
                # Each run of the group handles it as its own failure.
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def abandon(self) -> None:
        """Stop writing: what is still pending belongs to runs being released (a stop)."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.wait([self._writer])
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
