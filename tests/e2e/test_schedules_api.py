"""SchedulerHost behaviour through the real server: defaults, masks, etags, idempotency, quota,
pagination, endpoints, previews and install scope."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_host_pb2 as pb

from tests.support.grpc_status_details import RpcFailure, rpc_failure
from tests.support.server import InstallHandle, Stubs, register_install

MAX_SCHEDULES = 50


# --------------------------------------------------------------------------- helpers


def payload_of(data: dict[str, Any]) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update(data)
    return value


def ts(text: str) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromJsonString(text)
    return out


def as_dt(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def create(
    stubs: Stubs, install: InstallHandle, request_id: str = "", **fields: Any
) -> schedule_pb2.Schedule:
    fields.setdefault("endpoint", "POST /sync")
    fields.setdefault("cron", "*/5 * * * *")
    reply = await stubs.host.CreateSchedule(
        pb.CreateScheduleRequest(schedule=schedule_pb2.Schedule(**fields), request_id=request_id),
        metadata=install.metadata,
    )
    return reply.schedule


async def get(stubs: Stubs, install: InstallHandle, schedule_id: str) -> schedule_pb2.Schedule:
    reply = await stubs.host.GetSchedule(
        pb.GetScheduleRequest(id=schedule_id), metadata=install.metadata
    )
    return reply.schedule


async def update(
    stubs: Stubs,
    install: InstallHandle,
    schedule: schedule_pb2.Schedule,
    update_mask: field_mask_pb2.FieldMask | None = None,
) -> schedule_pb2.Schedule:
    request = pb.UpdateScheduleRequest(schedule=schedule)
    if update_mask is not None:
        request.update_mask.CopyFrom(update_mask)
    return (await stubs.host.UpdateSchedule(request, metadata=install.metadata)).schedule


async def list_all(stubs: Stubs, install: InstallHandle) -> pb.ListSchedulesResponse:
    return await stubs.host.ListSchedules(
        pb.ListSchedulesRequest(page_size=100), metadata=install.metadata
    )


async def first_run(
    cron: str,
    timezone: str,
    after: timestamp_pb2.Timestamp,
    stubs: Stubs,
    install: InstallHandle,
) -> timestamp_pb2.Timestamp:
    preview = await stubs.host.PreviewSchedule(
        pb.PreviewScheduleRequest(cron=cron, timezone=timezone, count=1, start_time=after),
        metadata=install.metadata,
    )
    assert len(preview.run_times) == 1
    return preview.run_times[0]


async def endpoint_ids(stubs: Stubs, install: InstallHandle) -> dict[str, str]:
    reply = await stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata)
    return {f"{e.method} {e.path}": e.id for e in reply.endpoints}


def assert_failure(failure: RpcFailure, code: grpc.StatusCode, reason: str) -> None:
    assert (failure.code, failure.reason) == (code, reason), failure


# --------------------------------------------------------------------------- create defaults


async def test_create_defaults_enabled_utc_and_next_run_time(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install, cron="17 */2 * * *")
    assert created.HasField("enabled")
    assert created.enabled is True
    assert created.timezone == "UTC"
    assert created.HasField("next_run_time")
    assert created.HasField("create_time")
    assert as_dt(created.next_run_time) > as_dt(created.create_time)
    expected = await first_run("17 */2 * * *", "UTC", created.create_time, stubs, install)
    assert created.next_run_time == expected
    assert created.update_time == created.create_time
    assert created.etag
    # What a read returns is what the create returned.
    assert await get(stubs, install, created.id) == created


async def test_create_next_run_time_matches_preview_in_a_timezone(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install, cron="30 9 * * 1-5", timezone="Asia/Kolkata")
    assert created.timezone == "Asia/Kolkata"
    expected = await first_run("30 9 * * 1-5", "Asia/Kolkata", created.create_time, stubs, install)
    assert created.next_run_time == expected


async def test_create_disabled_has_no_next_run_time(stubs: Stubs, install: InstallHandle) -> None:
    created = await create(stubs, install, enabled=False)
    assert created.HasField("enabled")
    assert created.enabled is False
    assert not created.HasField("next_run_time")
    got = await get(stubs, install, created.id)
    assert got.enabled is False
    assert not got.HasField("next_run_time")


async def test_create_canonical_endpoint_and_endpoint_id(
    stubs: Stubs, install: InstallHandle
) -> None:
    ids = await endpoint_ids(stubs, install)
    for selector, canonical in (
        ("/sync", "POST /sync"),
        ("post //sync", "POST /sync"),
        ("GET /status", "GET /status"),
        ("status", "GET /status"),
        ("GET /report", "GET /report"),
        ("POST /report", "POST /report"),
    ):
        created = await create(stubs, install, endpoint=selector)
        method, path = canonical.split(" ")
        assert created.endpoint == canonical, selector
        assert (created.endpoint_method, created.endpoint_path) == (method, path), selector
        assert created.endpoint_id == ids[canonical], selector
        assert uuid.UUID(created.endpoint_id)


async def test_create_ignores_output_fields_sent_on_input(
    stubs: Stubs, install: InstallHandle
) -> None:
    bogus_id = str(uuid.uuid4())
    created = await create(
        stubs,
        install,
        id=bogus_id,
        etag="999-deadbeef",
        endpoint_id=str(uuid.uuid4()),
        last_error="nope",
        next_run_time=ts("2001-01-01T00:00:00Z"),
        create_time=ts("2001-01-01T00:00:00Z"),
    )
    assert created.id != bogus_id
    assert created.last_error == ""
    assert created.etag != "999-deadbeef"
    assert as_dt(created.create_time).year >= 2025
    assert as_dt(created.next_run_time) > as_dt(created.create_time)


# --------------------------------------------------------------------------- field masks


async def make_full(stubs: Stubs, install: InstallHandle) -> schedule_pb2.Schedule:
    return await create(
        stubs,
        install,
        endpoint="POST /sync",
        cron="0 * * * *",
        timezone="Europe/Berlin",
        name="nightly-sync",
        payload=payload_of({"full": True, "n": 3}),
    )


async def test_mask_cron_changes_only_cron(stubs: Stubs, install: InstallHandle) -> None:
    before = await make_full(stubs, install)
    after = await update(
        stubs,
        install,
        schedule_pb2.Schedule(
            id=before.id,
            cron="30 * * * *",
            name="something-else",
            payload=payload_of({"other": 1}),
            timezone="Asia/Tokyo",
            endpoint="GET /status",
            enabled=False,
        ),
        mask("cron"),
    )
    assert after.cron == "30 * * * *"
    assert after.name == before.name == "nightly-sync"
    assert after.payload == before.payload
    assert after.timezone == "Europe/Berlin"
    assert (after.endpoint, after.endpoint_id) == (before.endpoint, before.endpoint_id)
    assert after.enabled is True
    assert after.HasField("next_run_time")
    assert as_dt(after.next_run_time).minute == 30
    assert after.create_time == before.create_time
    assert await get(stubs, install, before.id) == after


async def test_mask_name_with_empty_name_clears_it(stubs: Stubs, install: InstallHandle) -> None:
    before = await make_full(stubs, install)
    after = await update(stubs, install, schedule_pb2.Schedule(id=before.id), mask("name"))
    assert after.name == ""
    assert (after.cron, after.timezone, after.payload) == (
        before.cron,
        before.timezone,
        before.payload,
    )
    assert (await get(stubs, install, before.id)).name == ""
    # The cleared name is free again.
    again = await create(stubs, install, name="nightly-sync")
    assert again.name == "nightly-sync"


async def test_mask_payload_without_payload_clears_it(stubs: Stubs, install: InstallHandle) -> None:
    before = await make_full(stubs, install)
    after = await update(stubs, install, schedule_pb2.Schedule(id=before.id), mask("payload"))
    assert not after.HasField("payload")
    assert after.name == "nightly-sync"
    assert after.cron == before.cron
    assert not (await get(stubs, install, before.id)).HasField("payload")


async def test_no_mask_changes_the_fields_set_and_keeps_the_others(
    stubs: Stubs, install: InstallHandle
) -> None:
    before = await make_full(stubs, install)
    after = await update(
        stubs, install, schedule_pb2.Schedule(id=before.id, cron="15 * * * *", timezone="UTC")
    )
    assert (after.cron, after.timezone) == ("15 * * * *", "UTC")
    assert after.name == "nightly-sync"
    assert after.payload == before.payload
    assert after.endpoint == "POST /sync"
    assert after.enabled is True
    # An empty mask behaves like no mask.
    again = await update(
        stubs, install, schedule_pb2.Schedule(id=before.id, endpoint="GET /status"), mask()
    )
    assert again.endpoint == "GET /status"
    assert (again.cron, again.name, again.payload) == (after.cron, after.name, after.payload)


async def test_read_modify_write_of_a_whole_schedule_changes_only_what_changed(
    stubs: Stubs, install: InstallHandle
) -> None:
    before = await make_full(stubs, install)
    edited = schedule_pb2.Schedule()
    edited.CopyFrom(await get(stubs, install, before.id))  # output fields included
    edited.cron = "45 * * * *"
    after = await update(stubs, install, edited)
    assert after.cron == "45 * * * *"
    assert (after.name, after.payload, after.timezone, after.endpoint, after.endpoint_id) == (
        before.name,
        before.payload,
        before.timezone,
        before.endpoint,
        before.endpoint_id,
    )
    assert after.etag != before.etag
    assert after.create_time == before.create_time
    # Sending the stale copy again (its etag is now old) is refused.
    failure = await rpc_failure(update(stubs, install, edited))
    assert_failure(failure, grpc.StatusCode.ABORTED, "ETAG_MISMATCH")


async def test_mask_enabled_toggles_next_run_time(stubs: Stubs, install: InstallHandle) -> None:
    before = await make_full(stubs, install)
    disabled = await update(
        stubs, install, schedule_pb2.Schedule(id=before.id, enabled=False), mask("enabled")
    )
    assert disabled.enabled is False
    assert not disabled.HasField("next_run_time")
    assert not (await get(stubs, install, before.id)).HasField("next_run_time")
    enabled = await update(
        stubs, install, schedule_pb2.Schedule(id=before.id, enabled=True), mask("enabled")
    )
    assert enabled.enabled is True
    assert enabled.HasField("next_run_time")
    assert as_dt(enabled.next_run_time) > datetime.now(UTC) - timedelta(seconds=1)
    expected = await first_run(enabled.cron, enabled.timezone, enabled.update_time, stubs, install)
    assert enabled.next_run_time == expected


async def test_update_of_cron_or_timezone_recomputes_next_run_time(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install, cron="0 3 * * *")
    assert created.next_run_time == await first_run(
        "0 3 * * *", "UTC", created.create_time, stubs, install
    )
    moved_tz = await update(
        stubs,
        install,
        schedule_pb2.Schedule(id=created.id, timezone="Asia/Tokyo"),
        mask("timezone"),
    )
    assert moved_tz.next_run_time != created.next_run_time
    assert moved_tz.next_run_time == await first_run(
        "0 3 * * *", "Asia/Tokyo", moved_tz.update_time, stubs, install
    )
    assert as_dt(moved_tz.next_run_time).hour == 18  # 03:00 JST
    moved_cron = await update(
        stubs, install, schedule_pb2.Schedule(id=created.id, cron="45 7 * * *"), mask("cron")
    )
    assert moved_cron.next_run_time == await first_run(
        "45 7 * * *", "Asia/Tokyo", moved_cron.update_time, stubs, install
    )
    assert (as_dt(moved_cron.next_run_time).hour, as_dt(moved_cron.next_run_time).minute) == (
        22,
        45,
    )


# --------------------------------------------------------------------------- etags


async def test_etag_changes_on_each_update_and_stale_etags_are_refused(
    stubs: Stubs, install: InstallHandle
) -> None:
    v1 = await create(stubs, install, name="etagged")
    v2 = await update(
        stubs, install, schedule_pb2.Schedule(id=v1.id, cron="10 * * * *", etag=v1.etag)
    )
    v3 = await update(
        stubs, install, schedule_pb2.Schedule(id=v1.id, cron="20 * * * *", etag=v2.etag)
    )
    assert len({v1.etag, v2.etag, v3.etag}) == 3
    assert as_dt(v3.update_time) >= as_dt(v2.update_time) >= as_dt(v1.update_time)

    for stale in (v1.etag, v2.etag):
        failure = await rpc_failure(
            stubs.host.UpdateSchedule(
                pb.UpdateScheduleRequest(
                    schedule=schedule_pb2.Schedule(id=v1.id, cron="40 * * * *", etag=stale),
                    update_mask=mask("cron"),
                ),
                metadata=install.metadata,
            )
        )
        assert_failure(failure, grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
        failure = await rpc_failure(
            stubs.host.DeleteSchedule(
                pb.DeleteScheduleRequest(id=v1.id, etag=stale), metadata=install.metadata
            )
        )
        assert_failure(failure, grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert await get(stubs, install, v1.id) == v3

    # With the current etag, or none, the change applies.
    v4 = await update(
        stubs, install, schedule_pb2.Schedule(id=v1.id, name="renamed", etag=v3.etag), mask("name")
    )
    assert v4.name == "renamed"
    assert v4.etag not in {v1.etag, v2.etag, v3.etag}
    v5 = await update(stubs, install, schedule_pb2.Schedule(id=v1.id, cron="50 * * * *"))
    assert v5.cron == "50 * * * *"
    assert v5.etag != v4.etag
    await stubs.host.DeleteSchedule(
        pb.DeleteScheduleRequest(id=v1.id, etag=v5.etag), metadata=install.metadata
    )
    gone = await rpc_failure(
        stubs.host.GetSchedule(pb.GetScheduleRequest(id=v1.id), metadata=install.metadata)
    )
    assert_failure(gone, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")


async def test_delete_without_etag_applies(stubs: Stubs, install: InstallHandle) -> None:
    created = await create(stubs, install)
    await update(stubs, install, schedule_pb2.Schedule(id=created.id, cron="5 * * * *"))
    await stubs.host.DeleteSchedule(
        pb.DeleteScheduleRequest(id=created.id), metadata=install.metadata
    )
    assert (await list_all(stubs, install)).total_size == 0


async def test_no_op_update_keeps_the_etag(stubs: Stubs, install: InstallHandle) -> None:
    before = await make_full(stubs, install)
    same = await update(
        stubs, install, schedule_pb2.Schedule(id=before.id, cron=before.cron), mask("cron")
    )
    assert same.etag == before.etag
    assert same.update_time == before.update_time
    same = await update(
        stubs,
        install,
        schedule_pb2.Schedule(
            id=before.id,
            name=before.name,
            timezone=before.timezone,
            enabled=True,
            payload=payload_of({"full": True, "n": 3}),
            etag=before.etag,
        ),
    )
    assert same.etag == before.etag
    assert await get(stubs, install, before.id) == before


# --------------------------------------------------------------------------- idempotency


async def test_same_request_id_returns_the_first_schedule(
    stubs: Stubs, install: InstallHandle, other_install: InstallHandle
) -> None:
    request_id = str(uuid.uuid4())
    first = await create(stubs, install, request_id, name="idem")
    second = await create(stubs, install, request_id, name="idem")
    assert second.id == first.id
    assert second == first
    assert (await list_all(stubs, install)).total_size == 1

    # Concurrent retries of one new request: one schedule.
    concurrent_id = str(uuid.uuid4())
    results = await asyncio.gather(
        *(create(stubs, install, concurrent_id, cron="0 * * * *") for _ in range(5))
    )
    assert len({s.id for s in results}) == 1
    listed = await list_all(stubs, install)
    assert listed.total_size == 2
    assert len(listed.schedules) == 2

    # A different request id is a different request.
    third = await create(stubs, install, str(uuid.uuid4()))
    assert third.id not in {first.id, results[0].id}
    assert (await list_all(stubs, install)).total_size == 3

    # The same request id in another install is that install's own request.
    elsewhere = await create(stubs, other_install, request_id, name="idem")
    assert elsewhere.id != first.id
    other_listed = await list_all(stubs, other_install)
    assert [s.id for s in other_listed.schedules] == [elsewhere.id]
    assert (await list_all(stubs, install)).total_size == 3


# --------------------------------------------------------------------------- quota


async def test_quota_of_fifty_schedules(stubs: Stubs, install: InstallHandle) -> None:
    request_ids = [str(uuid.uuid4()) for _ in range(MAX_SCHEDULES)]
    created = []
    for i, rid in enumerate(request_ids):
        # Disabled schedules take a slot too.
        created.append(await create(stubs, install, rid, enabled=i % 5 != 0))
    assert (await list_all(stubs, install)).total_size == MAX_SCHEDULES

    for enabled in (True, False):
        failure = await rpc_failure(create(stubs, install, str(uuid.uuid4()), enabled=enabled))
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED, failure
        assert failure.reason == "SCHEDULE_QUOTA_EXCEEDED"
        assert "google.rpc.QuotaFailure" in failure.detail_types
        assert failure.quota_subjects
        assert "google.rpc.BadRequest" not in failure.detail_types
    failure = await rpc_failure(create(stubs, install))
    assert_failure(failure, grpc.StatusCode.RESOURCE_EXHAUSTED, "SCHEDULE_QUOTA_EXCEEDED")
    assert (await list_all(stubs, install)).total_size == MAX_SCHEDULES

    # A retry of a create that succeeded still gets its schedule when the install is full.
    retried = await create(stubs, install, request_ids[7], enabled=True)
    assert retried.id == created[7].id

    await stubs.host.DeleteSchedule(
        pb.DeleteScheduleRequest(id=created[0].id), metadata=install.metadata
    )
    replacement = await create(stubs, install, str(uuid.uuid4()))
    assert replacement.id not in {s.id for s in created}
    failure = await rpc_failure(create(stubs, install, str(uuid.uuid4())))
    assert_failure(failure, grpc.StatusCode.RESOURCE_EXHAUSTED, "SCHEDULE_QUOTA_EXCEEDED")
    assert (await list_all(stubs, install)).total_size == MAX_SCHEDULES


# --------------------------------------------------------------------------- pagination


async def list_page(
    stubs: Stubs, install: InstallHandle, token: str, size: int = 2
) -> pb.ListSchedulesResponse:
    return await stubs.host.ListSchedules(
        pb.ListSchedulesRequest(page_size=size, page_token=token), metadata=install.metadata
    )


def order_key(s: schedule_pb2.Schedule) -> tuple[datetime, str]:
    return as_dt(s.create_time), s.id


async def test_pagination_order_and_completeness(stubs: Stubs, install: InstallHandle) -> None:
    made = [await create(stubs, install, name=f"p{i}") for i in range(5)]
    walked: list[schedule_pb2.Schedule] = []
    token = ""
    pages = 0
    while True:
        page = await list_page(stubs, install, token)
        pages += 1
        assert page.total_size == 5
        assert len(page.schedules) <= 2
        walked.extend(page.schedules)
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [s.id for s in walked] == [s.id for s in sorted(made, key=order_key)]
    assert [s.id for s in walked] == [s.id for s in made]
    # The full listing has the same order.
    assert [s.id for s in (await list_all(stubs, install)).schedules] == [s.id for s in made]


async def test_pagination_is_stable_while_schedules_change(
    stubs: Stubs, install: InstallHandle
) -> None:
    s = [await create(stubs, install, name=f"s{i}") for i in range(6)]  # s0..s5

    page1 = await list_page(stubs, install, "")
    assert [x.id for x in page1.schedules] == [s[0].id, s[1].id]
    assert page1.total_size == 6
    assert page1.next_page_token

    # Between reads: one added at the end, one not yet reached deleted, one already returned
    # deleted.
    late = await create(stubs, install, name="late")
    for victim in (s[3], s[0]):
        await stubs.host.DeleteSchedule(
            pb.DeleteScheduleRequest(id=victim.id), metadata=install.metadata
        )

    page2 = await list_page(stubs, install, page1.next_page_token)
    assert [x.id for x in page2.schedules] == [s[2].id, s[4].id]
    assert page2.total_size == 5
    assert page2.next_page_token

    late2 = await create(stubs, install, name="late2")
    page3 = await list_page(stubs, install, page2.next_page_token)
    assert [x.id for x in page3.schedules] == [s[5].id, late.id]
    assert page3.total_size == 6
    assert page3.next_page_token

    page4 = await list_page(stubs, install, page3.next_page_token)
    assert [x.id for x in page4.schedules] == [late2.id]
    assert page4.next_page_token == ""

    seen = [x.id for p in (page1, page2, page3, page4) for x in p.schedules]
    assert len(seen) == len(set(seen))
    assert set(seen) == ({x.id for x in s} - {s[3].id}) | {late.id, late2.id}
    assert s[3].id not in seen


async def test_last_page_has_empty_token_and_empty_install_lists_nothing(
    stubs: Stubs, install: InstallHandle
) -> None:
    empty = await list_page(stubs, install, "")
    assert list(empty.schedules) == []
    assert empty.total_size == 0
    assert empty.next_page_token == ""
    a = await create(stubs, install)
    b = await create(stubs, install)
    exact = await list_page(stubs, install, "")
    assert [x.id for x in exact.schedules] == [a.id, b.id]
    assert exact.total_size == 2
    if exact.next_page_token:  # a token on a full last page must lead to an empty last page
        tail = await list_page(stubs, install, exact.next_page_token)
        assert list(tail.schedules) == []
        assert tail.next_page_token == ""


# --------------------------------------------------------------------------- GetEndpoints


async def test_get_endpoints_lists_every_endpoint_with_schedulable_flag(
    stubs: Stubs, install: InstallHandle
) -> None:
    reply = await stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata)
    by_route = {f"{e.method} {e.path}": e for e in reply.endpoints}
    assert set(by_route) == {
        "POST /sync",
        "GET /status",
        "GET /report",
        "POST /report",
        "PUT /items",
        "GET /items/{id}",
        "POST /users/:id",
    }
    assert len(reply.endpoints) == 7
    for route in ("POST /sync", "GET /status", "GET /report", "POST /report"):
        assert by_route[route].schedulable is True, route
        assert by_route[route].unschedulable_reason == "", route
    for route in ("PUT /items", "GET /items/{id}", "POST /users/:id"):
        assert by_route[route].schedulable is False, route
        assert by_route[route].unschedulable_reason.strip(), route
    assert by_route["POST /sync"].handler == "sync"
    ids = [e.id for e in reply.endpoints]
    assert all(str(uuid.UUID(i)) == i for i in ids)
    assert len(set(ids)) == 7

    again = await stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata)
    assert {f"{e.method} {e.path}": e.id for e in again.endpoints} == {
        r: e.id for r, e in by_route.items()
    }

    # Upserting the same version again keeps the ids.
    await register_install(
        stubs.admin,
        install_id=install.install_id,
        tenant_id=install.tenant_id,
        version_id=install.version_id,
    )
    after = await endpoint_ids(stubs, install)
    assert after == {r: e.id for r, e in by_route.items()}


async def test_endpoint_ids_differ_between_installs(
    stubs: Stubs, install: InstallHandle, other_install: InstallHandle
) -> None:
    mine = await endpoint_ids(stubs, install)
    theirs = await endpoint_ids(stubs, other_install)
    assert set(mine) == set(theirs)
    assert not set(mine.values()) & set(theirs.values())


# --------------------------------------------------------------------------- PreviewSchedule


async def preview(
    stubs: Stubs, install: InstallHandle, cron: str, **kwargs: Any
) -> pb.PreviewScheduleResponse:
    return await stubs.host.PreviewSchedule(
        pb.PreviewScheduleRequest(cron=cron, **kwargs), metadata=install.metadata
    )


def increasing(times: Any) -> bool:
    values = [as_dt(t) for t in times]
    return all(a < b for a, b in itertools.pairwise(values))


async def test_preview_count_default_and_maximum(stubs: Stubs, install: InstallHandle) -> None:
    default = await preview(stubs, install, "*/5 * * * *")
    assert len(default.run_times) == 10
    assert increasing(default.run_times)
    now = datetime.now(UTC)
    assert now - timedelta(seconds=5) < as_dt(default.run_times[0]) <= now + timedelta(minutes=5)
    capped = await preview(stubs, install, "0 * * * *", count=500)
    assert len(capped.run_times) == 100
    assert increasing(capped.run_times)
    exactly = await preview(stubs, install, "0 * * * *", count=100)
    assert len(exactly.run_times) == 100
    three = await preview(stubs, install, "@daily", timezone="Europe/Berlin", count=3)
    assert len(three.run_times) == 3
    assert increasing(three.run_times)


async def test_preview_from_start_time_is_exclusive_and_in_utc(
    stubs: Stubs, install: InstallHandle
) -> None:
    reply = await preview(
        stubs, install, "0 * * * *", count=3, start_time=ts("2026-05-01T10:00:00Z")
    )
    assert [t.ToJsonString() for t in reply.run_times] == [
        "2026-05-01T11:00:00Z",
        "2026-05-01T12:00:00Z",
        "2026-05-01T13:00:00Z",
    ]


async def test_preview_dst_spring_forward_fixed_time_runs_at_the_jump(
    stubs: Stubs, install: InstallHandle
) -> None:
    reply = await preview(
        stubs,
        install,
        "30 2 * * *",
        timezone="America/New_York",
        count=2,
        start_time=ts("2026-03-07T12:00:00Z"),
    )
    assert [t.ToJsonString() for t in reply.run_times] == [
        "2026-03-08T07:00:00Z",  # 03:00 EDT, the first instant after the jump
        "2026-03-09T06:30:00Z",  # 02:30 EDT
    ]


async def test_preview_dst_fall_back_fixed_time_runs_once(
    stubs: Stubs, install: InstallHandle
) -> None:
    reply = await preview(
        stubs,
        install,
        "30 1 * * *",
        timezone="America/New_York",
        count=2,
        start_time=ts("2026-10-31T12:00:00Z"),
    )
    assert [t.ToJsonString() for t in reply.run_times] == [
        "2026-11-01T05:30:00Z",  # 01:30 EDT, first pass only
        "2026-11-02T06:30:00Z",  # 01:30 EST
    ]


async def test_preview_dst_non_fixed_expressions_follow_the_wall_clock(
    stubs: Stubs, install: InstallHandle
) -> None:
    fall = await preview(
        stubs,
        install,
        "*/30 * * * *",
        timezone="America/New_York",
        count=5,
        start_time=ts("2026-11-01T04:45:00Z"),
    )
    assert [t.ToJsonString() for t in fall.run_times] == [
        "2026-11-01T05:00:00Z",  # 01:00 EDT
        "2026-11-01T05:30:00Z",  # 01:30 EDT
        "2026-11-01T06:00:00Z",  # 01:00 EST
        "2026-11-01T06:30:00Z",  # 01:30 EST
        "2026-11-01T07:00:00Z",  # 02:00 EST
    ]
    spring = await preview(
        stubs,
        install,
        "*/30 * * * *",
        timezone="America/New_York",
        count=3,
        start_time=ts("2026-03-08T06:15:00Z"),  # 01:15 EST
    )
    assert [t.ToJsonString() for t in spring.run_times] == [
        "2026-03-08T06:30:00Z",  # 01:30 EST
        "2026-03-08T07:00:00Z",  # 03:00 EDT; nothing in the skipped hour
        "2026-03-08T07:30:00Z",
    ]


async def test_preview_min_interval(stubs: Stubs, install: InstallHandle) -> None:
    for cron, seconds in (
        ("*/5 * * * *", 300),
        ("0 * * * *", 3600),
        ("@hourly", 3600),
        ("@daily", 86400),
        ("0,30 * * * *", 1800),
        ("0 9,17 * * *", 8 * 3600),
    ):
        reply = await preview(stubs, install, cron, count=1)
        assert reply.min_interval.ToTimedelta().total_seconds() == seconds, cron
    # */7 has a 4-minute gap (56 → 0): refused, never previewed with min_interval 240 s.
    failure = await rpc_failure(preview(stubs, install, "*/7 * * * *"))
    assert_failure(failure, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert "CRON_TOO_FREQUENT" in failure.violations.values(), failure


# --------------------------------------------------------------------------- install scope


def shape(failure: RpcFailure, schedule_id: str) -> tuple[Any, ...]:
    resource = failure.resource
    if resource is not None:
        resource = (resource[0], resource[1].replace(schedule_id, "<id>"))
    return (
        failure.code,
        failure.reason,
        failure.domain,
        failure.message.replace(schedule_id, "<id>"),
        sorted(failure.detail_types),
        resource,
    )


async def test_another_install_cannot_see_or_touch_a_schedule(
    stubs: Stubs, install: InstallHandle, other_install: InstallHandle
) -> None:
    mine = await create(
        stubs, install, name="shared-name", payload=payload_of({"k": "v"}), timezone="Europe/Paris"
    )
    never = str(uuid.uuid4())

    def calls(schedule_id: str) -> dict[str, Any]:
        md = other_install.metadata
        return {
            "GetSchedule": lambda: stubs.host.GetSchedule(
                pb.GetScheduleRequest(id=schedule_id), metadata=md
            ),
            "UpdateSchedule": lambda: stubs.host.UpdateSchedule(
                pb.UpdateScheduleRequest(
                    schedule=schedule_pb2.Schedule(id=schedule_id, cron="0 0 * * *"),
                    update_mask=mask("cron"),
                ),
                metadata=md,
            ),
            "UpdateScheduleWithEtag": lambda: stubs.host.UpdateSchedule(
                pb.UpdateScheduleRequest(
                    schedule=schedule_pb2.Schedule(id=schedule_id, enabled=False, etag=mine.etag),
                    update_mask=mask("enabled"),
                ),
                metadata=md,
            ),
            "DeleteSchedule": lambda: stubs.host.DeleteSchedule(
                pb.DeleteScheduleRequest(id=schedule_id), metadata=md
            ),
            "DeleteScheduleWithEtag": lambda: stubs.host.DeleteSchedule(
                pb.DeleteScheduleRequest(id=schedule_id, etag=mine.etag), metadata=md
            ),
        }

    foreign_calls, unknown_calls = calls(mine.id), calls(never)
    for rpc in foreign_calls:
        foreign = await rpc_failure(foreign_calls[rpc]())
        unknown = await rpc_failure(unknown_calls[rpc]())
        assert_failure(foreign, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
        assert shape(foreign, mine.id) == shape(unknown, never), rpc

    assert await get(stubs, install, mine.id) == mine
    listed = await list_all(stubs, other_install)
    assert listed.total_size == 0
    assert list(listed.schedules) == []

    # Names are unique per install only.
    theirs = await create(stubs, other_install, name="shared-name")
    assert theirs.name == "shared-name"
    assert theirs.id != mine.id
    assert [s.id for s in (await list_all(stubs, other_install)).schedules] == [theirs.id]
    assert [s.id for s in (await list_all(stubs, install)).schedules] == [mine.id]
    # And a duplicate inside one install is refused.
    dup = await rpc_failure(create(stubs, install, name="shared-name"))
    assert_failure(dup, grpc.StatusCode.ALREADY_EXISTS, "SCHEDULE_NAME_IN_USE")


async def test_same_tenant_installs_are_still_separate(stubs: Stubs) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    first = await register_install(stubs.admin, tenant_id=tenant)
    second = await register_install(stubs.admin, tenant_id=tenant)
    mine = await create(stubs, first)
    failure = await rpc_failure(
        stubs.host.GetSchedule(pb.GetScheduleRequest(id=mine.id), metadata=second.metadata)
    )
    assert_failure(failure, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
    assert (await list_all(stubs, second)).total_size == 0
