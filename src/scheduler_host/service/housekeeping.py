"""Housekeeping: rows past their use are deleted now and then, so no table grows without end."""

from __future__ import annotations

import asyncio
import logging
import random

from scheduler_host.service.access import RATE_WINDOW
from scheduler_host.service.ports import Clock, UnitOfWorkFactory
from scheduler_host.service.schedules import IDEMPOTENCY_WINDOW

log = logging.getLogger("scheduler_host.housekeeping")

PRUNE_INTERVAL_SECONDS = 600.0


async def prune_expired(*, uow_factory: UnitOfWorkFactory, clock: Clock) -> int:
    """Delete idempotency keys past their 24 h and rate-limit hits past every window (those of
    installs that no longer call, or no longer exist, included); how many rows went."""
    now = clock()
    async with uow_factory(autocommit=True) as uow:
        return await uow.housekeeping.prune(now - IDEMPOTENCY_WINDOW, now - RATE_WINDOW)


async def prune_periodically(
    *, uow_factory: UnitOfWorkFactory, clock: Clock, interval: float = PRUNE_INTERVAL_SECONDS
) -> None:
    """prune_expired every `interval` seconds (the first after a random part of it, so the
    processes of a deployment do not all prune at once) until cancelled."""
    await asyncio.sleep(random.uniform(0.1, 1.0) * interval)
    while True:
        try:
            removed = await prune_expired(uow_factory=uow_factory, clock=clock)
            if removed:
                log.info("pruned %d expired rows", removed)
        except Exception as exc:
            log.warning("prune failed; trying again in %.0f s: %s", interval, exc)
        await asyncio.sleep(interval)
