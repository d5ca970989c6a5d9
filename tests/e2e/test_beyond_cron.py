"""Schedules beyond cron, end to end with the dispatcher on a test clock: one-time
runs, time bounds, jitter, previews of stored schedules, and an install's own run history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb

from scheduler_host.app import start_application
from scheduler_host.service.dispatch.planning import SKIPPED_MISSED
from tests.e2e.conftest import e2e_settings
from tests.e2e.test_dispatcher import START, Harness, at, harness_on
from tests.support.grpc_status_details import rpc_failure
from tests.support.postgres import PostgresServer, scratch_database
from tests.support.runner_standin import RecordingRunner
from tests.support.server import admin_metadata, register_install


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def jitter(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


async def create(h: Harness, **fields: Any) -> schedule_pb2.Schedule:
    schedule = schedule_pb2.Schedule(endpoint="POST /sync", **fields)
    reply = await h.stubs.host.CreateSchedule(
        pb.CreateScheduleRequest(schedule=schedule), metadata=h.install.metadata
    )
    return reply.schedule


@pytest.fixture
async def runner() -> AsyncIterator[RecordingRunner]:
    stand_in = RecordingRunner()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture
async def h(postgres: PostgresServer, runner: RecordingRunner) -> AsyncIterator[Harness]:
    with scratch_database(postgres) as name:
        async with harness_on(postgres.url(name), runner) as harness:
            yield harness


# --- one-time runs --------------------------------------------------------------------------


async def test_a_one_time_schedule_fires_once_across_two_processes_then_is_disabled(
    h: Harness,
) -> None:
    when = START + timedelta(hours=2)
    made = await create(h, run_at=ts(when))
    assert made.cron == ""
    assert at(made.next_run_time) == when
    assert made.enabled
    # A second process on the same database, with its own dispatcher and the same clock.
    second = await start_application(
        e2e_settings(h.database_url, runner_base_url=h.runner.url), clock=h.clock
    )
    try:
        h.clock.now = when + timedelta(seconds=1)
        first_runs, second_runs = await asyncio.gather(
            h.app.dispatcher.run_once(), second.dispatcher.run_once()
        )
        h.clock.now = when + timedelta(days=1)
        later = await asyncio.gather(h.app.dispatcher.run_once(), second.dispatcher.run_once())
    finally:
        await second.stop()
    assert len(first_runs) + len(second_runs) == 1
    assert list(later) == [[], []]
    assert len(h.runner.of(made.id)) == 1
    (run,) = await h.runs(made.id)
    assert run.status == schedule_pb2.RUN_STATE_SUCCESS
    assert at(run.scheduled_time) == when
    after = await h.get(made.id)
    assert not after.enabled
    assert not after.HasField("next_run_time")
    assert after.etag != made.etag, "disabled by the server: a change of the definition"


async def test_a_one_time_run_missed_beyond_the_catch_up_window_is_skipped(h: Harness) -> None:
    when = START + timedelta(hours=2)
    made = await create(h, run_at=ts(when))
    h.clock.now = when + timedelta(hours=1)  # the service was down at run_at
    assert await h.app.dispatcher.run_once() == []
    (run,) = await h.runs(made.id)
    assert run.status == schedule_pb2.RUN_STATE_SKIPPED
    assert "missed" in run.error
    assert run.error == SKIPPED_MISSED
    assert not h.runner.of(made.id)
    after = await h.get(made.id)
    assert not after.enabled
    assert not after.HasField("next_run_time")


async def test_run_at_must_be_ahead_and_within_a_year(h: Harness) -> None:
    past = await rpc_failure(create(h, run_at=ts(START - timedelta(minutes=1))))
    far = await rpc_failure(create(h, run_at=ts(START + timedelta(days=367))))
    both = await rpc_failure(create(h, run_at=ts(START + timedelta(hours=1)), cron="0 * * * *"))
    assert past.violations == {"schedule.run_at": "RUN_AT_INVALID"}
    assert far.violations == {"schedule.run_at": "RUN_AT_INVALID"}
    assert both.violations == {"schedule.cron": "SCHEDULE_SPEC_INVALID"}


async def test_a_mask_naming_cron_switches_between_recurring_and_one_time(h: Harness) -> None:
    made = await create(h, cron="0 * * * *")
    when = START + timedelta(hours=5, minutes=7)
    one_time = (
        await h.stubs.host.UpdateSchedule(
            pb.UpdateScheduleRequest(
                schedule=schedule_pb2.Schedule(id=made.id, run_at=ts(when)),
                update_mask=field_mask_pb2.FieldMask(paths=["run_at"]),
            ),
            metadata=h.install.metadata,
        )
    ).schedule
    assert one_time.cron == ""
    assert at(one_time.run_at) == when
    assert at(one_time.next_run_time) == when
    back = (
        await h.stubs.host.UpdateSchedule(
            pb.UpdateScheduleRequest(
                schedule=schedule_pb2.Schedule(id=made.id, cron="30 * * * *"),
                update_mask=field_mask_pb2.FieldMask(paths=["cron"]),
            ),
            metadata=h.install.metadata,
        )
    ).schedule
    assert back.cron == "30 * * * *"
    assert not back.HasField("run_at")
    assert at(back.next_run_time) == START + timedelta(minutes=30)


# --- bounds and jitter ----------------------------------------------------------------------


async def test_a_bounded_schedule_never_fires_outside_its_bounds(h: Harness) -> None:
    start, end = START + timedelta(hours=2), START + timedelta(hours=4)
    made = await create(h, cron="0 * * * *", start_time=ts(start), end_time=ts(end))
    assert at(made.next_run_time) == start
    for hour in range(1, 8):
        await h.run_at(START + timedelta(hours=hour))
    fired = sorted(at(r.scheduled_time) for r in await h.runs(made.id))
    assert fired == [start, start + timedelta(hours=1), end]
    after = await h.get(made.id)
    assert after.enabled, "past end_time: still enabled"
    assert not after.HasField("next_run_time"), "past end_time: no next run"
    refused = await rpc_failure(create(h, cron="0 * * * *", start_time=ts(end), end_time=ts(start)))
    assert refused.violations == {"schedule.end_time": "TIME_BOUNDS_INVALID"}


async def test_jitter_is_at_most_half_the_shortest_interval(h: Harness) -> None:
    too_much = await rpc_failure(create(h, cron="*/10 * * * *", jitter=jitter(301)))
    fractional = await rpc_failure(create(h, cron="0 * * * *", jitter=jitter(0.0005)))
    assert too_much.violations == {"schedule.jitter": "JITTER_INVALID"}
    assert fractional.violations == {"schedule.jitter": "JITTER_INVALID"}
    fine = await create(h, cron="*/10 * * * *", jitter=jitter(300))
    assert fine.jitter.ToTimedelta() == timedelta(seconds=300)


async def test_500_schedules_with_jitter_spread_over_the_minute_each_as_promised(
    postgres: PostgresServer, runner: RecordingRunner
) -> None:
    with scratch_database(postgres) as name:
        async with harness_on(postgres.url(name), runner) as h:
            promised: dict[str, datetime] = {}
            owner: dict[str, str] = {}
            for _ in range(10):  # the quota is 50 an install
                install = await register_install(h.stubs.admin)
                for _ in range(50):
                    reply = await h.stubs.host.CreateSchedule(
                        pb.CreateScheduleRequest(
                            schedule=schedule_pb2.Schedule(
                                endpoint="POST /sync", cron="0 * * * *", jitter=jitter(60)
                            )
                        ),
                        metadata=install.metadata,
                    )
                    promised[reply.schedule.id] = at(reply.schedule.next_run_time)
                    owner[reply.schedule.id] = install.install_id
            # Made at START, a top of the hour: its occurrence fires within the coming minute.
            hour = START
            for second in range(61):
                await h.run_at(hour + timedelta(seconds=second))
            fired = {e.schedule_id: e for e in runner.executions}
            runs = {}
            for sid in promised:
                listed = await h.stubs.admin.ListScheduleRuns(
                    admin_pb.ListScheduleRunsRequest(install_id=owner[sid], schedule_id=sid),
                    metadata=admin_metadata(),
                )
                (runs[sid],) = listed.runs
    assert set(fired) == set(promised)
    offsets = sorted((when - hour).total_seconds() for when in promised.values())
    assert all(0 <= offset < 60 for offset in offsets)
    busiest = max(sum(1 for o in offsets if w <= o < w + 5) for w in range(56))
    assert busiest <= len(promised) // 4, f"{busiest} of {len(promised)} in one 5 s window"
    for sid, run in runs.items():
        assert at(run.scheduled_time) == promised[sid]  # the instant next_run_time promised
        assert at(run.start_time) >= promised[sid]


async def test_a_preview_of_a_stored_schedule_is_what_fires(h: Harness) -> None:
    made = await create(
        h,
        cron="*/15 * * * *",
        timezone="America/New_York",
        jitter=jitter(90),
        end_time=ts(START + timedelta(hours=1)),
    )
    preview = await h.stubs.host.PreviewSchedule(
        pb.PreviewScheduleRequest(schedule_id=made.id, count=10, start_time=ts(START)),
        metadata=h.install.metadata,
    )
    expected = [at(t) for t in preview.run_times]
    assert len(expected) == 4, "the end_time bounds the preview too"
    assert at(made.next_run_time) == expected[0]
    for when in expected:
        await h.run_at(when)
    await h.run_at(START + timedelta(hours=3))
    fired = sorted(at(r.scheduled_time) for r in await h.runs(made.id))
    assert fired == expected
    refused = await rpc_failure(
        h.stubs.host.PreviewSchedule(
            pb.PreviewScheduleRequest(schedule_id=made.id, cron="* * * * *"),
            metadata=h.install.metadata,
        )
    )
    assert refused.violations == {"cron": "SCHEDULE_SPEC_INVALID"}


# --- an install's own run history -----------------------------------------------------------


async def test_an_install_lists_its_own_runs_and_not_another_installs(h: Harness) -> None:
    made = await create(h, cron="0 * * * *")
    for hour in (1, 2, 3):
        await h.run_at(START + timedelta(hours=hour))
    page = await h.stubs.host.ListScheduleRuns(
        pb.SchedulerHostListScheduleRunsRequest(schedule_id=made.id, page_size=2),
        metadata=h.install.metadata,
    )
    rest = await h.stubs.host.ListScheduleRuns(
        pb.SchedulerHostListScheduleRunsRequest(
            schedule_id=made.id, page_token=page.next_page_token
        ),
        metadata=h.install.metadata,
    )
    hours = [at(r.scheduled_time) for r in [*page.runs, *rest.runs]]
    assert hours == [START + timedelta(hours=n) for n in (3, 2, 1)]
    other = await register_install(h.stubs.admin)
    refused = await rpc_failure(
        h.stubs.host.ListScheduleRuns(
            pb.SchedulerHostListScheduleRunsRequest(schedule_id=made.id),
            metadata=other.metadata,
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
    assert refused.resource == ("schedule", made.id)


async def test_a_one_time_schedule_counts_toward_the_quota_until_deleted(h: Harness) -> None:
    kept = [await create(h, run_at=ts(START + timedelta(hours=n + 1))) for n in range(50)]
    full = await rpc_failure(create(h, cron="0 * * * *"))
    assert full.reason == "SCHEDULE_QUOTA_EXCEEDED"
    await h.stubs.host.DeleteSchedule(
        pb.DeleteScheduleRequest(id=kept[0].id), metadata=h.install.metadata
    )
    room = await create(h, cron="0 * * * *")
    assert room.enabled
    assert room.cron == "0 * * * *"
