"""What the client sends: each method's request message and metadata, as a real gRPC server
receives them, and how it reads the answers (pages followed, responses unwrapped)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import field_mask_pb2
from recording_server import (
    ADMIN,
    ADMIN_TOKEN,
    HOST,
    INSTALL_ID,
    RUNNER_TOKEN,
    RecordingServer,
)
from schedulerhost.v1 import schedule_pb2, scheduler_admin_pb2, scheduler_host_pb2

from scheduler_host_client import (
    SchedulerAdminClient,
    SchedulerHostClient,
    new_schedule,
    schedule_payload,
)

WHEN = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def schedule_with(**fields: object) -> schedule_pb2.Schedule:
    return schedule_pb2.Schedule(**fields)  # type: ignore[arg-type]


# --- new_schedule ---------------------------------------------------------------------------


def test_new_schedule_sets_only_what_it_is_given() -> None:
    recurring = new_schedule("POST /sync", "0 * * * *", name="hourly", timezone="Europe/Berlin")
    assert (recurring.endpoint, recurring.cron, recurring.name, recurring.timezone) == (
        "POST /sync",
        "0 * * * *",
        "hourly",
        "Europe/Berlin",
    )
    for unset in ("enabled", "payload", "run_at", "start_time", "end_time", "jitter"):
        assert not recurring.HasField(unset), unset


def test_new_schedule_one_time_bounds_and_jitter() -> None:
    built = new_schedule(
        "POST /sync",
        run_at=WHEN,
        start_time=datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=2))),
        end_time=datetime(2030, 2, 1),  # naive: taken as UTC
        jitter=timedelta(seconds=90, milliseconds=250),
        enabled=False,
        payload=[1, {"a": None}],
    )
    assert built.cron == ""
    assert built.run_at.ToDatetime(UTC) == WHEN
    assert built.start_time.ToDatetime(UTC) == datetime(2029, 12, 31, 22, tzinfo=UTC)
    assert built.end_time.ToDatetime(UTC) == datetime(2030, 2, 1, tzinfo=UTC)
    assert (built.jitter.seconds, built.jitter.nanos) == (90, 250_000_000)
    assert built.HasField("enabled")
    assert built.enabled is False
    assert schedule_payload(built) == [1, {"a": None}]
    assert schedule_payload(new_schedule("GET /status", "@daily")) is None


# --- SchedulerHost --------------------------------------------------------------------------


async def test_host_calls_carry_the_runner_token_the_install_and_a_deadline(
    recorder: RecordingServer, host: SchedulerHostClient
) -> None:
    await host.get_endpoints()
    call = recorder.only_call()
    assert call.method == f"/{HOST}/GetEndpoints"
    assert call.metadata["x-runner-auth"] == RUNNER_TOKEN
    assert call.metadata["x-install-id"] == INSTALL_ID
    assert "authorization" not in call.metadata
    assert call.time_remaining is not None
    assert 0 < call.time_remaining <= 6  # timeout=5, rounded


async def test_create_schedule_sends_the_new_fields_and_a_request_id(
    recorder: RecordingServer, host: SchedulerHostClient
) -> None:
    recorder.answer(
        "SchedulerHost/CreateSchedule",
        scheduler_host_pb2.CreateScheduleResponse(schedule=schedule_with(id="s-1")),
    )
    sent = new_schedule(
        "POST /sync",
        run_at=WHEN,
        start_time=WHEN - timedelta(days=1),
        end_time=WHEN + timedelta(days=1),
        jitter=timedelta(minutes=2),
    )
    created = await host.create_schedule(sent)
    assert created.id == "s-1"
    await host.create_schedule(sent, request_id="11111111-1111-4111-8111-111111111111")

    first, second = (c.request for c in recorder.calls)
    assert first.schedule == sent
    assert first.schedule.run_at.ToDatetime(UTC) == WHEN
    assert first.schedule.jitter.ToTimedelta() == timedelta(minutes=2)
    assert uuid.UUID(first.request_id).version == 4, "a fresh request id makes retries idempotent"
    assert second.request_id == "11111111-1111-4111-8111-111111111111"


async def test_update_schedule_masks(recorder: RecordingServer, host: SchedulerHostClient) -> None:
    change = schedule_with(id="s-1", etag="e-1", cron="@daily")
    await host.update_schedule(change, ["cron", "jitter"])
    await host.update_schedule(change, "cron, run_at")
    await host.update_schedule(change, field_mask_pb2.FieldMask(paths=["end_time"]))
    await host.update_schedule(change)
    masks = [list(c.request.update_mask.paths) for c in recorder.calls]
    assert masks == [["cron", "jitter"], ["cron", "run_at"], ["end_time"], []]
    assert not recorder.calls[-1].request.HasField("update_mask")
    assert all(c.request.schedule == change for c in recorder.calls)


async def test_get_list_and_delete(recorder: RecordingServer, host: SchedulerHostClient) -> None:
    recorder.answer(
        "SchedulerHost/ListSchedules",
        scheduler_host_pb2.ListSchedulesResponse(
            schedules=[schedule_with(id="a")], next_page_token="t1", total_size=2
        ),
        scheduler_host_pb2.ListSchedulesResponse(schedules=[schedule_with(id="b")], total_size=2),
    )
    assert [s.id async for s in host.iter_schedules(page_size=1)] == ["a", "b"]
    await host.get_schedule("s-9")
    await host.delete_schedule("s-9", etag="e-9")
    requests = [c.request for c in recorder.calls]
    assert [(r.page_size, r.page_token) for r in requests[:2]] == [(1, ""), (1, "t1")]
    assert requests[2] == scheduler_host_pb2.GetScheduleRequest(id="s-9")
    assert requests[3] == scheduler_host_pb2.DeleteScheduleRequest(id="s-9", etag="e-9")


async def test_preview_by_expression_and_by_stored_schedule(
    recorder: RecordingServer, host: SchedulerHostClient
) -> None:
    await host.preview_schedule("30 2 * * *", "America/New_York", count=3, start_time=WHEN)
    await host.preview_schedule(schedule_id="s-1", count=5)
    by_cron, by_id = (c.request for c in recorder.calls)
    assert (by_cron.cron, by_cron.timezone, by_cron.count, by_cron.schedule_id) == (
        "30 2 * * *",
        "America/New_York",
        3,
        "",
    )
    assert by_cron.start_time.ToDatetime(UTC) == WHEN
    assert by_id == scheduler_host_pb2.PreviewScheduleRequest(schedule_id="s-1", count=5)
    assert not by_id.HasField("start_time"), "no start time: the server uses now"


async def test_install_run_history(recorder: RecordingServer, host: SchedulerHostClient) -> None:
    run = schedule_pb2.ScheduleRun
    recorder.answer(
        "SchedulerHost/ListScheduleRuns",
        scheduler_host_pb2.SchedulerHostListScheduleRunsResponse(
            runs=[run(id="r2"), run(id="r1")], next_page_token="next"
        ),
        scheduler_host_pb2.SchedulerHostListScheduleRunsResponse(runs=[run(id="r0")]),
    )
    page = await host.list_schedule_runs("s-1", page_size=2, page_token="start")
    assert [r.id for r in page.runs] == ["r2", "r1"]
    assert page.next_page_token == "next"
    assert [r.id async for r in host.iter_schedule_runs("s-1", page_size=2)] == ["r0"]
    requests = [c.request for c in recorder.calls]
    assert requests[0] == scheduler_host_pb2.SchedulerHostListScheduleRunsRequest(
        schedule_id="s-1", page_size=2, page_token="start"
    )
    assert requests[1].page_token == ""
    assert requests[1].schedule_id == "s-1"
    assert all(c.method == f"/{HOST}/ListScheduleRuns" for c in recorder.calls)


async def test_for_install_shares_the_channel_and_names_the_other_install(
    recorder: RecordingServer, host: SchedulerHostClient
) -> None:
    other = host.for_install("00000000-0000-4000-8000-000000000002")
    await other.get_endpoints()
    await other.close()  # the channel belongs to `host`: it stays open
    await host.get_endpoints()
    assert [c.metadata["x-install-id"] for c in recorder.calls] == [
        "00000000-0000-4000-8000-000000000002",
        INSTALL_ID,
    ]


# --- SchedulerAdmin -------------------------------------------------------------------------


async def test_admin_calls_carry_the_bearer_token(
    recorder: RecordingServer, admin: SchedulerAdminClient
) -> None:
    await admin.get_install(INSTALL_ID)
    call = recorder.only_call()
    assert call.method == f"/{ADMIN}/GetInstall"
    assert call.metadata["authorization"] == f"Bearer {ADMIN_TOKEN}"
    assert "x-runner-auth" not in call.metadata
    assert call.request == scheduler_admin_pb2.GetInstallRequest(install_id=INSTALL_ID)


async def test_admin_schedule_reads(recorder: RecordingServer, admin: SchedulerAdminClient) -> None:
    recorder.answer(
        "SchedulerAdmin/GetSchedule",
        scheduler_admin_pb2.SchedulerAdminGetScheduleResponse(schedule=schedule_with(id="s-1")),
    )
    recorder.answer(
        "SchedulerAdmin/ListSchedules",
        scheduler_admin_pb2.SchedulerAdminListSchedulesResponse(
            schedules=[schedule_with(id="a")], next_page_token="t1", total_size=2
        ),
        scheduler_admin_pb2.SchedulerAdminListSchedulesResponse(
            schedules=[schedule_with(id="b")], total_size=2
        ),
    )
    assert (await admin.get_schedule(INSTALL_ID, "s-1")).id == "s-1"
    page = await admin.list_schedules(INSTALL_ID, page_size=1)
    assert [s.id for s in page.schedules] == ["a"]
    assert page.total_size == 2
    assert [s.id async for s in admin.iter_schedules(INSTALL_ID, page_size=1)] == ["b"]

    get, first, *rest = recorder.calls
    assert get.method == f"/{ADMIN}/GetSchedule"
    assert get.request == scheduler_admin_pb2.SchedulerAdminGetScheduleRequest(
        install_id=INSTALL_ID, schedule_id="s-1"
    )
    assert first.request == scheduler_admin_pb2.SchedulerAdminListSchedulesRequest(
        install_id=INSTALL_ID, page_size=1
    )
    # The second scripted page is the last: iter_schedules asked for it and stopped there.
    assert [(c.request.page_size, c.request.page_token) for c in rest] == [(1, "")]


async def test_admin_install_and_run_calls(
    recorder: RecordingServer, admin: SchedulerAdminClient
) -> None:
    install = scheduler_admin_pb2.Install(install_id=INSTALL_ID, tenant_id="t1", version_id="v1")
    await admin.upsert_install(install, disable_missing_schedules=True)
    await admin.run_schedule_now(INSTALL_ID, "s-1")
    await admin.list_schedule_runs(INSTALL_ID, "s-1", page_size=7, page_token="p")
    await admin.delete_install(INSTALL_ID)
    upsert, run_now, runs, delete = (c.request for c in recorder.calls)
    assert upsert == scheduler_admin_pb2.UpsertInstallRequest(
        install=install, disable_missing_schedules=True
    )
    assert run_now == scheduler_admin_pb2.RunScheduleNowRequest(
        install_id=INSTALL_ID, schedule_id="s-1"
    )
    assert runs == scheduler_admin_pb2.ListScheduleRunsRequest(
        install_id=INSTALL_ID, schedule_id="s-1", page_size=7, page_token="p"
    )
    assert delete == scheduler_admin_pb2.DeleteInstallRequest(install_id=INSTALL_ID)
