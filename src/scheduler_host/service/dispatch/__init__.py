"""The dispatcher: claims due occurrences, calls the Runner, records each run.

planning.py     what a due schedule does now; leases, backoff, idempotency keys (no I/O)
claim_loop.py   the loop: poll buckets, claim, take over, start runs, stop
executor.py     one run: the Runner call with its retries, then its outcome
recorder.py     outcomes written in batches
manual.py       RunScheduleNow
"""

from scheduler_host.service.dispatch.claim_loop import Dispatcher
from scheduler_host.service.dispatch.manual import run_schedule_now
from scheduler_host.service.dispatch.planning import (
    RUN_HISTORY_LIMIT,
    idempotency_key,
    lease_length,
    plan_claim,
)

__all__ = [
    "RUN_HISTORY_LIMIT",
    "Dispatcher",
    "idempotency_key",
    "lease_length",
    "plan_claim",
    "run_schedule_now",
]
