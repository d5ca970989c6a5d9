"""The dispatcher in one server process, driven step by step with a test clock, against a real
PostgreSQL and the stand-in Runner over loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb
from sqlalchemy.ext.asyncio import create_async_engine

from scheduler_host.adapters.db.buckets import bucket_of
from scheduler_host.app import Application, start_application
from scheduler_host.domain.runs import RunTrigger
from scheduler_host.runner_standin import Execution, Reply
from scheduler_host.service.dispatch.planning import (
    ENDPOINT_MISSING,
    SKIPPED_IN_FLIGHT,
    SKIPPED_MISSED,
    idempotency_key,
)
from tests.e2e.conftest import e2e_settings
from tests.support.grpc_status_details import rpc_failure
from tests.support.postgres import PostgresServer, scratch_database
from tests.support.runner_standin import RecordingRunner, hold_until, json_reply, slow
from tests.support.server import (
    InstallHandle,
    Stubs,
    admin_metadata,
    install_message,
    register_install,
)

RUNNER_TIMEOUT = 0.3
RUN_SCHEDULE = schedule_pb2.RUN_TRIGGER_SCHEDULE
START = datetime(2026, 3, 7, 17, 0, tzinfo=UTC)  # 12:00 EST


class SteppedClock:
    """The application's clock; tests move it, so runs happen exactly when a test says."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Harness:
    app: Application
    stubs: Stubs
    runner: RecordingRunner
    clock: SteppedClock
    install: InstallHandle
    database_url: str

    async def create(
        self,
        cron: str,
        endpoint: str = "POST /sync",
        timezone: str = "UTC",
        payload: dict[str, Any] | None = None,
    ) -> schedule_pb2.Schedule:
        schedule = schedule_pb2.Schedule(endpoint=endpoint, cron=cron, timezone=timezone)
        if payload is not None:
            schedule.payload.struct_value.update(payload)
        reply = await self.stubs.host.CreateSchedule(
            pb.CreateScheduleRequest(schedule=schedule), metadata=self.install.metadata
        )
        return reply.schedule

    async def get(self, schedule_id: str) -> schedule_pb2.Schedule:
        reply = await self.stubs.host.GetSchedule(
            pb.GetScheduleRequest(id=schedule_id), metadata=self.install.metadata
        )
        return reply.schedule

    async def runs(self, schedule_id: str) -> list[schedule_pb2.ScheduleRun]:
        """Newest first, every page."""
        found: list[schedule_pb2.ScheduleRun] = []
        token = ""
        while True:
            reply = await self.stubs.admin.ListScheduleRuns(
                admin_pb.ListScheduleRunsRequest(
                    install_id=self.install.install_id,
                    schedule_id=schedule_id,
                    page_size=100,
                    page_token=token,
                ),
                metadata=admin_metadata(),
            )
            found.extend(reply.runs)
            token = reply.next_page_token
            if not token:
                return found

    async def run_at(self, when: datetime) -> None:
        self.clock.now = when
        await self.app.dispatcher.run_once()

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        engine = create_async_engine(self.database_url)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(sa.text(statement), params)
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()


def at(ts: Any) -> datetime:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC)


@pytest.fixture
async def runner() -> AsyncIterator[RecordingRunner]:
    stand_in = RecordingRunner()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@asynccontextmanager
async def harness_on(url: str, runner: RecordingRunner) -> AsyncIterator[Harness]:
    """A server of its own (test clock, dispatcher driven by the test) with one install."""
    clock = SteppedClock(START)
    settings = e2e_settings(
        url,
        runner_base_url=runner.url,
        runner_timeout_seconds=RUNNER_TIMEOUT,
        runner_retry_base_seconds=0.01,
        dispatch_lease_margin_seconds=0.5,
        shutdown_grace_seconds=0.5,
    )
    app = await start_application(settings, migrate=True, clock=clock)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stubs = Stubs(channel)
            install = await register_install(stubs.admin)
            yield Harness(app, stubs, runner, clock, install, url)
    finally:
        await app.stop()


@pytest.fixture
async def h(postgres: PostgresServer, runner: RecordingRunner) -> AsyncIterator[Harness]:
    with scratch_database(postgres) as name:
        async with harness_on(postgres.url(name), runner) as harness:
            yield harness


async def test_runner_receives_the_execute_request_and_the_run_is_recorded(h: Harness) -> None:
    post = await h.create("0 * * * *", "POST /sync", payload={"full": True, "n": 3})
    get = await h.create("0 * * * *", "GET /status", payload={"ignored": True})
    due = START + timedelta(hours=1)
    await h.run_at(due)

    (sent,) = h.runner.of(post.id)
    context = sent.body["context"]
    assert sent.headers["x-request-id"] == context["request_id"]
    assert sent.headers["x-idempotency-key"] == idempotency_key(
        uuid.UUID(post.id), RunTrigger.SCHEDULE, due
    )
    assert sent.headers["x-alga-tenant"] == h.install.tenant_id
    assert sent.headers["x-alga-extension"] == "registry-ext"
    assert sent.headers["content-type"] == "application/json"
    body_b64 = sent.body["http"].pop("body_b64")
    assert sent.body == {
        "context": {
            "request_id": context["request_id"],
            "tenant_id": h.install.tenant_id,
            "extension_id": "registry-ext",
            "install_id": h.install.install_id,
            "version_id": "v1",
            "content_hash": "sha256:abc",
            "config": {},
            "trigger": "schedule",
            "schedule_id": post.id,
        },
        "http": {"method": "POST", "path": "/sync", "query": {}, "headers": {}},
        "limits": {"timeout_ms": round(RUNNER_TIMEOUT * 1000)},
        "providers": ["cap:scheduler.manage"],
    }
    payload = base64.b64decode(body_b64).decode()
    assert json.loads(payload) == {"full": True, "n": 3}
    assert " " not in payload
    (sent_get,) = h.runner.of(get.id)
    assert "body_b64" not in sent_get.body["http"]
    assert sent_get.body["http"]["method"] == "GET"

    schedule = await h.get(post.id)
    assert schedule.last_run_status == schedule_pb2.RUN_STATUS_SUCCESS
    assert at(schedule.last_run_time) == due
    assert schedule.last_error == ""
    assert at(schedule.next_run_time) == due + timedelta(hours=1)
    assert schedule.etag == post.etag  # a run is not a change of the schedule
    (run,) = await h.runs(post.id)
    assert run.status == schedule_pb2.RUN_STATE_SUCCESS
    assert run.trigger == schedule_pb2.RUN_TRIGGER_SCHEDULE
    assert at(run.scheduled_time) == due
    assert at(run.start_time) == due
    assert run.attempt == 1
    assert run.error == ""
    assert run.lateness.ToTimedelta() == timedelta()


async def test_503_twice_then_200_is_one_success_after_three_attempts(h: Harness) -> None:
    schedule = await h.create("0 * * * *")
    h.runner.script[schedule.id] = [
        json_reply('{"error":"busy"}', 503),
        Reply(status=503, body=b""),
        Reply(),
    ]
    await h.run_at(START + timedelta(hours=1))
    sent = h.runner.of(schedule.id)
    assert len(sent) == 3
    assert len({e.idempotency_key for e in sent}) == 1
    assert len({e.headers["x-request-id"] for e in sent}) == 3
    (run,) = await h.runs(schedule.id)
    assert run.status == schedule_pb2.RUN_STATE_SUCCESS
    assert run.attempt == 3
    assert run.error == ""


async def test_400_is_not_retried(h: Harness) -> None:
    schedule = await h.create("0 * * * *")
    h.runner.script[schedule.id] = [json_reply('{"error":"bad request"}', 400)]
    await h.run_at(START + timedelta(hours=1))
    assert len(h.runner.of(schedule.id)) == 1
    (run,) = await h.runs(schedule.id)
    assert run.status == schedule_pb2.RUN_STATE_ERROR
    assert run.attempt == 1
    assert run.error == "Runner returned status 400"
    got = await h.get(schedule.id)
    assert got.last_run_status == schedule_pb2.RUN_STATUS_ERROR
    assert got.last_error == "Runner returned status 400"


OVERSIZE = b'{"status":200,"body":"' + b"x" * 300_000 + b'"}'


@pytest.mark.parametrize(
    ("replies", "message", "calls"),
    [
        ([Reply(body=b"<html>hello</html>", content_type="text/html")], "non-JSON response", 1),
        ([Reply(body=b"")], "Runner returned empty body (http 200)", 1),
        ([json_reply('{"status": 500, "body": "boom"}')], "Runner returned status 500", 1),
        ([Reply(body=OVERSIZE)], "larger than 262144 bytes (http 200)", 1),
        ([Reply(body=OVERSIZE, omit_length=True)], "larger than 262144 bytes (http 200)", 1),
        ([slow(2)] * 3, f"Runner request timed out after {RUNNER_TIMEOUT:g} s", 3),
        ([Reply(status=502, body=b"bad gateway", content_type="text/plain")] * 3, "(http 502)", 3),
    ],
    ids=["non-json", "empty", "body-status-500", "oversize", "oversize-streamed", "timeout", "502"],
)
async def test_failures_record_their_message(
    h: Harness, replies: list[Any], message: str, calls: int
) -> None:
    schedule = await h.create("0 * * * *")
    h.runner.script[schedule.id] = list(replies)
    await h.run_at(START + timedelta(hours=1))
    assert len(h.runner.of(schedule.id)) == calls
    (run,) = await h.runs(schedule.id)
    assert run.status == schedule_pb2.RUN_STATE_ERROR
    assert run.attempt == calls
    assert message in run.error
    assert run.error.startswith("Runner ")
    got = await h.get(schedule.id)
    assert got.last_error == run.error
    assert got.last_run_status == schedule_pb2.RUN_STATUS_ERROR


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Window (UTC) around each New York change, and what must happen inside it.
DST_CHANGES = {
    # 02:00 EST -> 03:00 EDT: 02:30 runs at 03:00 EDT; */30 has nothing in the missing hour.
    "spring-forward": (
        utc("2026-03-08T03:00"),
        utc("2026-03-08T11:00"),
        {"30 2 * * *": [utc("2026-03-08T07:00")], "30 1 * * *": [utc("2026-03-08T06:30")]},
        [utc("2026-03-08T06:30"), utc("2026-03-08T07:00")],  # 01:30 EST, then 03:00 EDT
    ),
    # 02:00 EDT -> 01:00 EST: 01:30 runs once (EDT); */30 runs 01:00 and 01:30 twice.
    "fall-back": (
        utc("2026-11-01T02:00"),
        utc("2026-11-01T11:00"),
        {"30 2 * * *": [utc("2026-11-01T07:30")], "30 1 * * *": [utc("2026-11-01T05:30")]},
        [utc(f"2026-11-01T{t}") for t in ("05:00", "05:30", "06:00", "06:30", "07:00")],
    ),
}


@pytest.mark.parametrize("change", DST_CHANGES)
async def test_runs_happen_exactly_at_the_previewed_instants_across_dst(
    h: Harness, change: str
) -> None:
    start, end, fixed_time_runs, every_30_around_change = DST_CHANGES[change]
    h.clock.now = start
    previewed: dict[str, list[datetime]] = {}
    cron_of: dict[str, str] = {}
    for cron in ("30 2 * * *", "30 1 * * *", "*/30 * * * *"):
        schedule = await h.create(cron, timezone="America/New_York")
        cron_of[schedule.id] = cron
        preview = await h.stubs.host.PreviewSchedule(
            pb.PreviewScheduleRequest(
                cron=cron, timezone="America/New_York", count=100, start_time=schedule.create_time
            ),
            metadata=h.install.metadata,
        )
        previewed[cron] = [t for t in map(at, preview.run_times) if t <= end]
    # Every New York occurrence falls on a :00 or :30 UTC instant, so 10-minute steps land on each.
    fired: dict[str, list[datetime]] = {cron: [] for cron in previewed}
    while h.clock.now <= end:
        for run in await h.app.dispatcher.run_once():
            assert run.start_time == run.scheduled_time == h.clock.now
            fired[cron_of[str(run.schedule_id)]].append(run.scheduled_time)
        h.clock.now += timedelta(minutes=10)

    assert fired == previewed
    assert len(h.runner.executions) == sum(len(times) for times in previewed.values())
    for cron, times in fixed_time_runs.items():
        assert fired[cron] == times
    around = [t for t in fired["*/30 * * * *"] if every_30_around_change[0] <= t]
    assert around[: len(every_30_around_change)] == every_30_around_change


async def test_occurrence_due_while_a_run_is_in_flight_is_skipped(h: Harness) -> None:
    schedule = await h.create("*/5 * * * *")
    release = asyncio.Event()
    h.runner.script[schedule.id] = [hold_until(release)]
    first = START + timedelta(minutes=5)
    h.clock.now = first
    in_flight = await h.app.dispatcher.dispatch_due()
    await h.runner.wait_for(1)
    await h.run_at(first + timedelta(minutes=5))
    skipped = await h.get(schedule.id)
    assert skipped.last_run_status == schedule_pb2.RUN_STATUS_SKIPPED
    release.set()
    await asyncio.gather(*in_flight)
    await h.run_at(first + timedelta(minutes=10))

    assert len(h.runner.of(schedule.id)) == 2
    runs = await h.runs(schedule.id)
    assert [(at(r.scheduled_time) - first, r.status, r.error) for r in runs] == [
        (timedelta(minutes=10), schedule_pb2.RUN_STATE_SUCCESS, ""),
        (timedelta(minutes=5), schedule_pb2.RUN_STATE_SKIPPED, SKIPPED_IN_FLIGHT),
        (timedelta(0), schedule_pb2.RUN_STATE_SUCCESS, ""),
    ]


async def test_two_hour_outage_runs_once_and_continues_from_now(h: Harness) -> None:
    schedule = await h.create("*/5 * * * *")
    first = at(schedule.next_run_time)
    back = first + timedelta(hours=2, minutes=2, seconds=30)
    await h.run_at(back)

    assert len(h.runner.executions) == 1
    newest, oldest = await h.runs(schedule.id)
    assert newest.status == schedule_pb2.RUN_STATE_SUCCESS
    assert at(newest.scheduled_time) == first + timedelta(hours=2)  # the latest missed one
    assert newest.lateness.ToTimedelta() == timedelta(minutes=2, seconds=30)
    assert oldest.status == schedule_pb2.RUN_STATE_SKIPPED
    assert oldest.error == SKIPPED_MISSED
    assert at(oldest.scheduled_time) == first
    got = await h.get(schedule.id)
    assert at(got.next_run_time) == first + timedelta(hours=2, minutes=5)
    await h.run_at(back + timedelta(minutes=1))
    assert len(h.runner.executions) == 1


async def test_short_outage_inside_the_window_runs_once_without_a_skip_record(h: Harness) -> None:
    schedule = await h.create("*/5 * * * *")
    first = at(schedule.next_run_time)
    await h.run_at(first + timedelta(minutes=7))
    (run,) = await h.runs(schedule.id)
    assert at(run.scheduled_time) == first + timedelta(minutes=5)
    assert len(h.runner.executions) == 1


async def test_missing_endpoint_disables_the_schedule(h: Harness) -> None:
    schedule = await h.create("0 * * * *", "POST /report")
    await h.sql(
        "DELETE FROM endpoints WHERE install_id = :iid AND path = '/report' AND method = 'POST'",
        iid=uuid.UUID(h.install.install_id),
    )
    await h.run_at(START + timedelta(hours=1))
    assert h.runner.executions == []
    got = await h.get(schedule.id)
    assert not got.enabled
    assert not got.HasField("next_run_time")
    assert got.last_error == ENDPOINT_MISSING
    assert got.etag != schedule.etag


async def test_disabled_install_keeps_schedules_and_continues_from_now(h: Harness) -> None:
    schedule = await h.create("0 * * * *")
    message = install_message(h.install.install_id, tenant_id=h.install.tenant_id, enabled=False)
    await h.stubs.admin.UpsertInstall(
        admin_pb.UpsertInstallRequest(install=message), metadata=admin_metadata()
    )
    for hours in (1, 2, 3):
        await h.run_at(START + timedelta(hours=hours))
    assert h.runner.executions == []
    message.enabled = True
    await h.stubs.admin.UpsertInstall(
        admin_pb.UpsertInstallRequest(install=message), metadata=admin_metadata()
    )
    kept = await h.get(schedule.id)
    assert kept.enabled
    assert at(kept.next_run_time) == START + timedelta(hours=4)
    await h.run_at(START + timedelta(hours=4))
    (run,) = await h.runs(schedule.id)  # nothing caught up, no skipped records
    assert at(run.scheduled_time) == START + timedelta(hours=4)


async def test_history_keeps_the_last_100_runs(h: Harness) -> None:
    schedule = await h.create("0 * * * *")
    await h.sql(
        "INSERT INTO schedule_runs (bucket, id, tenant_id, install_id, schedule_id, trigger, "
        "scheduled_time, status, attempt) SELECT :bucket, gen_random_uuid(), :tenant, :iid, "
        ":sid, 'schedule', CAST(:start AS timestamptz) - n * interval '1 hour', 'success', 1 "
        "FROM generate_series(1, 120) AS n",
        bucket=bucket_of(h.install.tenant_id),
        tenant=h.install.tenant_id,
        iid=uuid.UUID(h.install.install_id),
        sid=uuid.UUID(schedule.id),
        start=START,
    )
    await h.run_at(START + timedelta(hours=1))
    runs = await h.runs(schedule.id)
    assert len(runs) == 100
    assert at(runs[0].scheduled_time) == START + timedelta(hours=1)
    assert at(runs[-1].scheduled_time) == START - timedelta(hours=99)


async def test_run_schedule_now_runs_at_once_and_is_limited_per_tenant(h: Harness) -> None:
    schedule = await h.create("0 3 * * *")
    call = admin_pb.RunScheduleNowRequest(install_id=h.install.install_id, schedule_id=schedule.id)
    reply = await h.stubs.admin.RunScheduleNow(call, metadata=admin_metadata())
    assert reply.run.trigger == schedule_pb2.RUN_TRIGGER_MANUAL
    assert reply.run.status == schedule_pb2.RUN_STATE_SUCCESS
    assert reply.run.attempt == 1
    assert at(reply.run.scheduled_time) == START
    (sent,) = h.runner.executions
    assert sent.body["context"]["trigger"] == "manual"
    assert [r.id for r in await h.runs(schedule.id)] == [reply.run.id]
    for _ in range(4):
        h.clock.now += timedelta(seconds=1)
        await h.stubs.admin.RunScheduleNow(call, metadata=admin_metadata())
    limited = await rpc_failure(h.stubs.admin.RunScheduleNow(call, metadata=admin_metadata()))
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.reason == "RATE_LIMITED"
    assert limited.retry_delay_seconds is not None
    assert limited.retry_delay_seconds > 0
    assert len(h.runner.executions) == 5
    assert (await h.get(schedule.id)).last_run_status == schedule_pb2.RUN_STATUS_SUCCESS


async def test_run_schedule_now_reports_unknown_and_invalid_ids(h: Harness) -> None:
    unknown = await rpc_failure(
        h.stubs.admin.RunScheduleNow(
            admin_pb.RunScheduleNowRequest(
                install_id=h.install.install_id, schedule_id=str(uuid.uuid4())
            ),
            metadata=admin_metadata(),
        )
    )
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    assert unknown.reason == "SCHEDULE_NOT_FOUND"
    invalid = await rpc_failure(
        h.stubs.admin.RunScheduleNow(
            admin_pb.RunScheduleNowRequest(install_id="nope", schedule_id="nope"),
            metadata=admin_metadata(),
        )
    )
    assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(invalid.violations) == {"install_id", "schedule_id"}


async def test_stop_releases_a_run_in_flight_for_another_process(h: Harness) -> None:
    schedule = await h.create("0 * * * *")
    stopped = asyncio.Event()

    async def hold_until_stopped(_execution: Execution) -> Reply:
        if not stopped.is_set():
            await asyncio.Event().wait()  # longer than the 0.5 s grace: never
        return Reply()

    h.runner.default = hold_until_stopped
    due = START + timedelta(hours=1)
    h.clock.now = due
    await h.app.dispatcher.dispatch_due()
    await h.runner.wait_for(1)
    await h.app.stop()
    stopped.set()
    ((status, lease_until),) = await h.sql(
        "SELECT status, lease_until FROM schedule_runs WHERE schedule_id = :sid",
        sid=uuid.UUID(schedule.id),
    )
    assert status == "running"
    assert lease_until <= due

    successor = await start_application(h.app.settings, clock=h.clock)
    try:
        h.clock.now = due + timedelta(seconds=1)
        (run,) = await successor.dispatcher.run_once()
    finally:
        await successor.stop()
    sent = h.runner.of(schedule.id)
    assert run.status.value == "success"
    assert run.attempt == len(sent) >= 2
    assert len({e.idempotency_key for e in sent}) == 1


async def test_overlap_misfire_and_a_manual_run_of_one_schedule_in_one_process(
    runner: RecordingRunner, postgres: PostgresServer
) -> None:
    with scratch_database(postgres) as name:
        await run_overlap_misfire_and_manual(postgres.url(name), runner)


async def run_overlap_misfire_and_manual(url: str, runner: RecordingRunner) -> None:
    async with harness_on(url, runner) as h:
        schedule = await h.create("*/5 * * * *")
        release = asyncio.Event()
        h.runner.script[schedule.id] = [hold_until(release)]
        first = START + timedelta(minutes=5)
        h.clock.now = first
        in_flight = await h.app.dispatcher.dispatch_due()
        await h.runner.wait_for(1)
        await h.run_at(first + timedelta(hours=2))  # overlap and misfire at once
        release.set()
        await asyncio.gather(*in_flight)
        reply = await h.stubs.admin.RunScheduleNow(
            admin_pb.RunScheduleNowRequest(
                install_id=h.install.install_id, schedule_id=schedule.id
            ),
            metadata=admin_metadata(),
        )
        assert reply.run.status == schedule_pb2.RUN_STATE_SUCCESS
        runs = {
            (at(r.scheduled_time) - first, r.trigger, r.status, r.error)
            for r in await h.runs(schedule.id)
        }
        hours_2 = timedelta(hours=2)
        assert runs == {
            (timedelta(0), RUN_SCHEDULE, schedule_pb2.RUN_STATE_SUCCESS, ""),
            (timedelta(minutes=5), RUN_SCHEDULE, schedule_pb2.RUN_STATE_SKIPPED, SKIPPED_MISSED),
            (hours_2, RUN_SCHEDULE, schedule_pb2.RUN_STATE_SKIPPED, SKIPPED_IN_FLIGHT),
            (hours_2, schedule_pb2.RUN_TRIGGER_MANUAL, schedule_pb2.RUN_STATE_SUCCESS, ""),
        }
        assert len(h.runner.executions) == 2
        got = await h.get(schedule.id)
        assert at(got.next_run_time) == first + hours_2 + timedelta(minutes=5)
