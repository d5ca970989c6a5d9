"""SQL statements per RPC, counted in-process: the app from `start_application`, with a query
logger on its one asyncpg pool (`app.pool`, `DatabasePool.add_query_logger`), called through real
stubs."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, struct_pb2
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_host_pb2 as pb

from bench.service import (
    PAGE_SIZE,
    RATE_LIMIT_PER_MINUTE,
    READ_LIMIT_PER_MINUTE,
    Fixture,
    new_schedule,
)
from scheduler_host.app import start_application
from scheduler_host.config import Settings
from tests.support.server import ADMIN_TOKEN, RUNNER_TOKEN, Stubs

WARM_CALLS = 5
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+([A-Za-z_][\w.]*)", re.IGNORECASE)
_WRITE = re.compile(
    r"(?<!DO )\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+([A-Za-z_][\w.]*)", re.IGNORECASE
)


def shape(statement: str) -> str:
    """ "SELECT schedules", "INSERT rate_limit_hits", "SELECT pg_advisory_xact_lock", ..."""
    text = " ".join(statement.split())
    verb = text.split(" ", 1)[0].upper()
    if "pg_advisory_xact_lock" in text:
        return "SELECT pg_advisory_xact_lock"
    for function in ("rate_limit_hit", "create_schedule", "finish_runs", "dispatch_poll"):
        if f"{function}(" in text:
            return f"SELECT {function}()"
    if verb == "WITH":
        # A data-modifying CTE: named by what it writes.
        writes = _WRITE.findall(text)
        if writes:
            return "WITH " + " + ".join(f"{v.split()[0].upper()} {t}" for v, t in writes)
    if verb in {"SAVEPOINT", "RELEASE", "ROLLBACK"}:
        return verb
    match = _TABLE.search(text)
    return f"{verb} {match.group(1)}" if match else verb


@dataclass
class Tally:
    statements: list[str] = field(default_factory=list)
    parameters: list[Any] = field(default_factory=list)
    transactions: int = 0
    elapsed: float = 0.0  # seconds the statements took, as asyncpg timed them (client side)

    def reset(self) -> None:
        self.statements.clear()
        self.parameters.clear()
        self.transactions = 0
        self.elapsed = 0.0


@dataclass
class StatementCount:
    rpc: str
    statements: float  # SQL statements per call, install context cached
    transactions: float  # each one a BEGIN and a COMMIT or ROLLBACK round trip
    round_trips: float  # statements + BEGIN and COMMIT/ROLLBACK
    cold_statements: int  # the first call after the install context cache was emptied
    shapes: dict[str, float]
    # Milliseconds per call in the statements, BEGIN and COMMIT included (asyncpg's timing of
    # each, from sending it to its answer): the database's share of the call's latency at c=1.
    database_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_TRANSACTION_END = frozenset({"COMMIT", "ROLLBACK", "END"})


async def _listen(pool: Any, tally: Tally) -> None:
    """The pool's statements (asyncpg's pool pings nothing: a checkout is no round trip). BEGIN
    opens a transaction; COMMIT and ROLLBACK are its second round trip, not statements."""

    def on_query(record: Any) -> None:
        verb = record.query.lstrip().split(None, 1)[0].upper().rstrip(";")
        tally.elapsed += record.elapsed or 0.0
        if verb == "BEGIN":
            tally.transactions += 1
        elif verb not in _TRANSACTION_END:
            tally.statements.append(record.query)
            tally.parameters.append(record.args)

    await pool.add_query_logger(on_query)


# The SQL (statement, parameters) of one warm call per RPC, to EXPLAIN.
Samples = dict[str, list[tuple[str, Any]]]


async def count_per_rpc(
    database_url: str, fixture: Fixture
) -> tuple[list[StatementCount], Samples]:
    settings = Settings(
        database_url=database_url,
        listen="127.0.0.1:0",
        runner_tokens=(RUNNER_TOKEN,),
        admin_tokens=(ADMIN_TOKEN,),
        environment="test",
        rate_limit_per_minute=int(RATE_LIMIT_PER_MINUTE),
        read_limit_per_minute=int(READ_LIMIT_PER_MINUTE),
        dispatcher_enabled=False,
        health_check_seconds=3600,  # no health probes among the counted statements
    )
    app = await start_application(settings)
    tally = Tally()
    await _listen(app.pool, tally)
    results = []
    samples: Samples = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            host: Any = Stubs(channel).host  # aio stubs; the generated types are the sync API
            reader = fixture.reader.metadata
            install_id, schedule_id = fixture.update_targets[0]
            writer = (("x-runner-auth", RUNNER_TOKEN), ("x-install-id", install_id))
            creator = (
                ("x-runner-auth", RUNNER_TOKEN),
                ("x-install-id", fixture.create_installs[0]),
            )
            counter = iter(range(1_000_000))
            made: list[schedule_pb2.Schedule] = []

            async def create() -> None:
                reply = await host.CreateSchedule(
                    pb.CreateScheduleRequest(
                        schedule=new_schedule(900 + next(counter) % 99),
                        request_id=str(uuid.uuid4()),
                    ),
                    metadata=creator,
                )
                made.append(reply.schedule)

            async def delete() -> None:
                victim = made.pop() if made else None
                if victim is None:
                    await create()
                    victim = made.pop()
                    await asyncio.sleep(0)
                    tally.reset()
                await host.DeleteSchedule(
                    pb.DeleteScheduleRequest(id=victim.id, etag=victim.etag), metadata=creator
                )

            async def update() -> None:
                payload = struct_pb2.Value()
                payload.struct_value.update({"n": next(counter)})
                await host.UpdateSchedule(
                    pb.UpdateScheduleRequest(
                        schedule=schedule_pb2.Schedule(id=schedule_id, payload=payload),
                        update_mask=field_mask_pb2.FieldMask(paths=["payload"]),
                    ),
                    metadata=writer,
                )

            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "GetSchedule": lambda: host.GetSchedule(
                    pb.GetScheduleRequest(id=fixture.read_schedule_id), metadata=reader
                ),
                "ListSchedules": lambda: host.ListSchedules(
                    pb.ListSchedulesRequest(page_size=PAGE_SIZE), metadata=reader
                ),
                "GetEndpoints": lambda: host.GetEndpoints(
                    pb.GetEndpointsRequest(), metadata=reader
                ),
                "PreviewSchedule": lambda: host.PreviewSchedule(
                    pb.PreviewScheduleRequest(cron="30 2 * * *", timezone="America/New_York"),
                    metadata=reader,
                ),
                "CreateSchedule": create,
                "UpdateSchedule": update,
                "DeleteSchedule": delete,
            }
            for rpc, call in calls.items():
                await call()  # compiled-statement caches, pool connections
                cache = getattr(app.deps, "install_cache", None)
                for install in (fixture.reader.install_id, install_id, fixture.create_installs[0]):
                    if cache is not None:
                        cache.invalidate(uuid.UUID(install))
                await asyncio.sleep(0)  # asyncpg calls its query loggers soon after
                tally.reset()
                await call()
                await asyncio.sleep(0)
                cold = len(tally.statements)
                shapes: Counter[str] = Counter()
                statements = transactions = 0
                elapsed = 0.0
                for _ in range(WARM_CALLS):
                    tally.reset()
                    await call()
                    await asyncio.sleep(0)
                    shapes.update(shape(s) for s in tally.statements)
                    statements += len(tally.statements)
                    samples[rpc] = list(zip(tally.statements, tally.parameters, strict=True))
                    transactions += tally.transactions
                    elapsed += tally.elapsed
                n = WARM_CALLS
                results.append(
                    StatementCount(
                        rpc=rpc,
                        statements=statements / n,
                        transactions=transactions / n,
                        round_trips=(statements + 2 * transactions) / n,
                        cold_statements=cold,
                        shapes={k: v / n for k, v in sorted(shapes.items())},
                        database_ms=round(elapsed / n * 1000, 3),
                    )
                )
    finally:
        await app.stop()
    return results, samples
