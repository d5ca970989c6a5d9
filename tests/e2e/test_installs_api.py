"""SchedulerAdmin through the real server: installs, version upgrades with the remap of schedules,
disabling and deleting installs, run history."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb

from tests.support.grpc_status_details import RpcFailure, rpc_failure
from tests.support.server import (
    CAPABILITY,
    DEFAULT_ENDPOINTS,
    InstallHandle,
    Stubs,
    admin_metadata,
    install_message,
    register_install,
)

MISSING_ENDPOINT_ERROR = "Disabled due to missing endpoint on extension update"


def assert_failure(failure: RpcFailure, code: grpc.StatusCode, reason: str) -> None:
    assert (failure.code, failure.reason) == (code, reason), failure


async def upsert(
    stubs: Stubs, install: admin_pb.Install, disable_missing_schedules: bool = False
) -> admin_pb.UpsertInstallResponse:
    return await stubs.admin.UpsertInstall(
        admin_pb.UpsertInstallRequest(
            install=install, disable_missing_schedules=disable_missing_schedules
        ),
        metadata=admin_metadata(),
    )


async def get_install(stubs: Stubs, install_id: str) -> admin_pb.Install:
    reply = await stubs.admin.GetInstall(
        admin_pb.GetInstallRequest(install_id=install_id), metadata=admin_metadata()
    )
    return reply.install


def same_install(handle: InstallHandle, version_id: str, **kwargs: Any) -> admin_pb.Install:
    return install_message(
        handle.install_id, tenant_id=handle.tenant_id, version_id=version_id, **kwargs
    )


async def create(stubs: Stubs, install: InstallHandle, **fields: Any) -> schedule_pb2.Schedule:
    fields.setdefault("endpoint", "POST /sync")
    fields.setdefault("cron", "*/5 * * * *")
    reply = await stubs.host.CreateSchedule(
        pb.CreateScheduleRequest(schedule=schedule_pb2.Schedule(**fields)),
        metadata=install.metadata,
    )
    return reply.schedule


async def get(stubs: Stubs, install: InstallHandle, schedule_id: str) -> schedule_pb2.Schedule:
    reply = await stubs.host.GetSchedule(
        pb.GetScheduleRequest(id=schedule_id), metadata=install.metadata
    )
    return reply.schedule


async def endpoint_ids(stubs: Stubs, install: InstallHandle) -> dict[str, str]:
    reply = await stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata)
    return {f"{e.method} {e.path}": e.id for e in reply.endpoints}


def routes(install: admin_pb.Install) -> list[tuple[str, str, str]]:
    return sorted((e.method, e.path, e.handler) for e in install.endpoints)


# --------------------------------------------------------------------------- upsert / get


async def test_upsert_creates_and_get_returns_the_same_install(stubs: Stubs) -> None:
    install_id = str(uuid.uuid4())
    message = install_message(
        install_id,
        version_id="2.4.0",
        endpoints=(
            ("post", "sync", "sync"),
            ("Get", "//reports//daily", "daily"),
            ("GET", "/status", "status"),
            ("put", "items///all", "put_all"),
        ),
        capabilities=(CAPABILITY, "cap:storage.kv"),
    )
    created = (await upsert(stubs, message)).install
    expected_routes = [
        ("GET", "/reports/daily", "daily"),
        ("GET", "/status", "status"),
        ("POST", "/sync", "sync"),
        ("PUT", "/items/all", "put_all"),
    ]
    assert routes(created) == expected_routes
    assert created.install_id == install_id
    assert created.tenant_id == message.tenant_id
    assert created.registry_id == "registry-ext"
    assert created.version_id == "2.4.0"
    assert created.content_hash == "sha256:abc"
    assert created.HasField("enabled")
    assert created.enabled is True
    assert sorted(created.granted_capabilities) == sorted([CAPABILITY, "cap:storage.kv"])
    assert created.HasField("create_time")
    assert created.HasField("update_time")
    now = datetime.now(UTC)
    assert abs(created.create_time.ToDatetime(tzinfo=UTC) - now) < timedelta(minutes=1)

    got = await get_install(stubs, install_id)
    assert got.install_id == created.install_id
    assert got.tenant_id == created.tenant_id
    assert got.registry_id == created.registry_id
    assert got.version_id == created.version_id
    assert got.content_hash == created.content_hash
    assert got.enabled is True
    assert sorted(got.granted_capabilities) == sorted(created.granted_capabilities)
    assert routes(got) == expected_routes
    assert got.create_time == created.create_time
    assert got.update_time == created.update_time

    # The runner sees the normalised endpoints too.
    handle = InstallHandle(install_id, message.tenant_id, "2.4.0")
    assert set(await endpoint_ids(stubs, handle)) == {
        "GET /reports/daily",
        "GET /status",
        "POST /sync",
        "PUT /items/all",
    }
    scheduled = await create(stubs, handle, endpoint="/reports/daily")
    assert scheduled.endpoint == "GET /reports/daily"


async def test_second_upsert_keeps_create_time_and_moves_update_time(stubs: Stubs) -> None:
    message = install_message()
    first = (await upsert(stubs, message)).install
    await asyncio.sleep(0.01)
    message.content_hash = "sha256:def"
    del message.granted_capabilities[:]
    message.granted_capabilities.extend([CAPABILITY, "cap:http.fetch"])
    second = (await upsert(stubs, message)).install
    assert second.create_time == first.create_time
    assert second.update_time.ToDatetime() > first.update_time.ToDatetime()
    got = await get_install(stubs, message.install_id)
    assert got.create_time == first.create_time
    assert got.update_time == second.update_time
    assert got.content_hash == "sha256:def"
    assert sorted(got.granted_capabilities) == sorted([CAPABILITY, "cap:http.fetch"])


async def test_get_unknown_install_is_not_found(stubs: Stubs) -> None:
    unknown = str(uuid.uuid4())
    failure = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=unknown), metadata=admin_metadata()
        )
    )
    assert_failure(failure, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")
    assert failure.domain == "schedulerhost.v1"


# --------------------------------------------------------------------------- version upgrade


async def test_version_upgrade_remaps_and_refuses_to_orphan_schedules(
    stubs: Stubs, install: InstallHandle
) -> None:
    sync = await create(stubs, install, endpoint="POST /sync", name="sync")
    status = await create(stubs, install, endpoint="GET /status", name="status", cron="0 * * * *")
    v1_ids = await endpoint_ids(stubs, install)
    assert (sync.endpoint_id, status.endpoint_id) == (v1_ids["POST /sync"], v1_ids["GET /status"])

    # v2 keeps both routes, with new handlers: the schedules follow to the v2 endpoints.
    v2_endpoints = tuple((m, p, f"{h}_v2") for m, p, h in DEFAULT_ENDPOINTS)
    reply = await upsert(stubs, same_install(install, "v2", endpoints=v2_endpoints))
    assert reply.install.version_id == "v2"
    assert list(reply.disabled_schedule_ids) == []
    v2_ids = await endpoint_ids(stubs, install)
    endpoints = await stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata)
    assert {e.handler for e in endpoints.endpoints} == {h for _, _, h in v2_endpoints}
    sync_v2 = await get(stubs, install, sync.id)
    status_v2 = await get(stubs, install, status.id)
    assert sync_v2.endpoint == "POST /sync"
    assert sync_v2.endpoint_id == v2_ids["POST /sync"]
    assert status_v2.endpoint == "GET /status"
    assert status_v2.endpoint_id == v2_ids["GET /status"]
    assert sync_v2.endpoint_id != sync.endpoint_id
    # Moving to another endpoint is a change of the schedule: its etag changes with it.
    assert sync_v2.etag != sync.etag
    assert sync_v2.enabled
    assert sync_v2.HasField("next_run_time")
    assert status_v2.enabled
    assert status_v2.HasField("next_run_time")
    # ...and keep working: they can be updated and new ones made on the v2 endpoints.
    updated = await stubs.host.UpdateSchedule(
        pb.UpdateScheduleRequest(
            schedule=schedule_pb2.Schedule(id=sync.id, cron="10 * * * *"),
            update_mask=field_mask_pb2.FieldMask(paths=["cron"]),
        ),
        metadata=install.metadata,
    )
    assert updated.schedule.endpoint_id == v2_ids["POST /sync"]
    extra = await create(stubs, install, endpoint="GET /status")
    assert extra.endpoint_id == v2_ids["GET /status"]
    await stubs.host.DeleteSchedule(
        pb.DeleteScheduleRequest(id=extra.id), metadata=install.metadata
    )
    sync_v2 = await get(stubs, install, sync.id)

    # v3 lacks GET /status: refused, nothing changes.
    v3_endpoints = tuple(e for e in v2_endpoints if e[:2] != ("GET", "/status"))
    failure = await rpc_failure(upsert(stubs, same_install(install, "v3", endpoints=v3_endpoints)))
    assert_failure(failure, grpc.StatusCode.FAILED_PRECONDITION, "SCHEDULE_REMAP_FAILED")
    assert (await get_install(stubs, install.install_id)).version_id == "v2"
    assert await endpoint_ids(stubs, install) == v2_ids
    assert await get(stubs, install, sync.id) == sync_v2
    assert await get(stubs, install, status.id) == status_v2

    # With disable_missing_schedules the orphan is disabled and the upgrade goes through.
    reply = await upsert(
        stubs,
        same_install(install, "v3", endpoints=v3_endpoints),
        disable_missing_schedules=True,
    )
    assert reply.install.version_id == "v3"
    assert list(reply.disabled_schedule_ids) == [status.id]
    assert (await get_install(stubs, install.install_id)).version_id == "v3"
    v3_ids = await endpoint_ids(stubs, install)
    assert "GET /status" not in v3_ids
    orphan = await get(stubs, install, status.id)
    assert orphan.HasField("enabled")
    assert orphan.enabled is False
    assert not orphan.HasField("next_run_time")
    assert orphan.last_error == MISSING_ENDPOINT_ERROR
    assert orphan.etag != status_v2.etag
    kept = await get(stubs, install, sync.id)
    assert kept.enabled is True
    assert kept.HasField("next_run_time")
    assert kept.endpoint == "POST /sync"
    assert kept.endpoint_id == v3_ids["POST /sync"]
    assert kept.last_error == ""

    # Enabling the orphan again is refused until it names an endpoint of the current version.
    enable = pb.UpdateScheduleRequest(
        schedule=schedule_pb2.Schedule(id=status.id, enabled=True),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
    )
    refused = await rpc_failure(stubs.host.UpdateSchedule(enable, metadata=install.metadata))
    assert_failure(refused, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert refused.violations == {"schedule.endpoint": "ENDPOINT_NOT_FOUND"}
    assert await get(stubs, install, status.id) == orphan
    enable.schedule.endpoint = "POST /sync"
    enable.update_mask.paths.append("endpoint")
    revived = (await stubs.host.UpdateSchedule(enable, metadata=install.metadata)).schedule
    assert revived.enabled
    assert revived.endpoint_id == v3_ids["POST /sync"]
    assert revived.HasField("next_run_time")


@pytest.mark.parametrize(
    "field", ["tenant_id", "registry_id", "version_id", "content_hash", "capability", "handler"]
)
async def test_upsert_refuses_control_characters_in_install_fields(
    stubs: Stubs, field: str
) -> None:
    message = install_message()
    if field == "capability":
        message.granted_capabilities.append("cap:x\x00y")
        expected = "install.granted_capabilities[1]"
    elif field == "handler":
        message.endpoints[0].handler = "sync\x00"
        expected = "install.endpoints[0]"
    else:
        setattr(message, field, "bad\x00value")
        expected = f"install.{field}"
    failure = await rpc_failure(upsert(stubs, message))
    assert_failure(failure, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert failure.violations == {expected: "INSTALL_INVALID"}
    missing = await rpc_failure(get_install(stubs, message.install_id))
    assert_failure(missing, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")


async def test_upgrade_to_a_non_schedulable_route_is_a_remap_failure(
    stubs: Stubs, install: InstallHandle
) -> None:
    status = await create(stubs, install, endpoint="GET /status")
    # The path stays but only as PUT: not a GET /status any more.
    endpoints = tuple(
        ("PUT", p, h) if (m, p) == ("GET", "/status") else (m, p, h)
        for m, p, h in DEFAULT_ENDPOINTS
    )
    failure = await rpc_failure(upsert(stubs, same_install(install, "v2", endpoints=endpoints)))
    assert_failure(failure, grpc.StatusCode.FAILED_PRECONDITION, "SCHEDULE_REMAP_FAILED")
    assert (await get_install(stubs, install.install_id)).version_id == "v1"
    assert await get(stubs, install, status.id) == status


# --------------------------------------------------------------------------- delete install


async def test_delete_install_removes_it_and_its_schedules(
    stubs: Stubs, install: InstallHandle, other_install: InstallHandle
) -> None:
    mine = [await create(stubs, install, name=f"d{i}") for i in range(3)]
    theirs = await create(stubs, other_install, name="d0")
    await stubs.admin.DeleteInstall(
        admin_pb.DeleteInstallRequest(install_id=install.install_id), metadata=admin_metadata()
    )

    runner_calls: list[Awaitable[Any]] = [
        stubs.host.GetSchedule(pb.GetScheduleRequest(id=mine[0].id), metadata=install.metadata),
        stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=install.metadata),
        stubs.host.CreateSchedule(
            pb.CreateScheduleRequest(
                schedule=schedule_pb2.Schedule(endpoint="/sync", cron="@daily")
            ),
            metadata=install.metadata,
        ),
        stubs.host.DeleteSchedule(
            pb.DeleteScheduleRequest(id=mine[1].id), metadata=install.metadata
        ),
        stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata),
    ]
    for call in runner_calls:
        assert_failure(await rpc_failure(call), grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")

    failure = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=install.install_id), metadata=admin_metadata()
        )
    )
    assert_failure(failure, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")
    failure = await rpc_failure(
        stubs.admin.ListScheduleRuns(
            admin_pb.ListScheduleRunsRequest(install_id=install.install_id, schedule_id=mine[0].id),
            metadata=admin_metadata(),
        )
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND, failure
    failure = await rpc_failure(
        stubs.admin.DeleteInstall(
            admin_pb.DeleteInstallRequest(install_id=install.install_id), metadata=admin_metadata()
        )
    )
    assert_failure(failure, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")

    # Registering the same install again starts empty: its schedules went with it.
    await upsert(stubs, same_install(install, "v1"))
    listed = await stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=install.metadata)
    assert listed.total_size == 0
    assert list(listed.schedules) == []
    gone = await rpc_failure(
        stubs.host.GetSchedule(pb.GetScheduleRequest(id=mine[0].id), metadata=install.metadata)
    )
    assert_failure(gone, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
    # Another install is untouched.
    assert await get(stubs, other_install, theirs.id) == theirs


async def test_delete_unknown_install_is_not_found(stubs: Stubs) -> None:
    failure = await rpc_failure(
        stubs.admin.DeleteInstall(
            admin_pb.DeleteInstallRequest(install_id=str(uuid.uuid4())), metadata=admin_metadata()
        )
    )
    assert_failure(failure, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")


# --------------------------------------------------------------------------- disable install


async def test_disabled_install_keeps_its_schedules(stubs: Stubs, install: InstallHandle) -> None:
    a = await create(stubs, install, name="a")
    b = await create(stubs, install, name="b", cron="0 * * * *")
    reply = await upsert(stubs, same_install(install, "v1", enabled=False))
    assert reply.install.enabled is False
    assert (await get_install(stubs, install.install_id)).enabled is False

    runner_calls: list[Awaitable[Any]] = [
        stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=install.metadata),
        stubs.host.GetSchedule(pb.GetScheduleRequest(id=a.id), metadata=install.metadata),
        stubs.host.CreateSchedule(
            pb.CreateScheduleRequest(
                schedule=schedule_pb2.Schedule(endpoint="/sync", cron="@daily")
            ),
            metadata=install.metadata,
        ),
        stubs.host.UpdateSchedule(
            pb.UpdateScheduleRequest(schedule=schedule_pb2.Schedule(id=a.id, cron="@daily")),
            metadata=install.metadata,
        ),
        stubs.host.DeleteSchedule(pb.DeleteScheduleRequest(id=b.id), metadata=install.metadata),
        stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata),
        stubs.host.PreviewSchedule(
            pb.PreviewScheduleRequest(cron="@daily"), metadata=install.metadata
        ),
    ]
    for call in runner_calls:
        failure = await rpc_failure(call)
        assert_failure(failure, grpc.StatusCode.FAILED_PRECONDITION, "INSTALL_DISABLED")

    await upsert(stubs, same_install(install, "v1", enabled=True))
    listed = await stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=install.metadata)
    assert [s.id for s in listed.schedules] == [a.id, b.id]
    assert listed.total_size == 2
    now = datetime.now(UTC) - timedelta(seconds=1)
    for before, after in zip((a, b), listed.schedules, strict=True):
        assert (after.name, after.cron, after.endpoint) == (
            before.name,
            before.cron,
            before.endpoint,
        )
        assert after.enabled is True
        assert after.HasField("next_run_time")
        assert after.next_run_time.ToDatetime(tzinfo=UTC) > now


# --------------------------------------------------------------------------- run history


async def test_list_schedule_runs(
    stubs: Stubs, install: InstallHandle, other_install: InstallHandle
) -> None:
    schedule = await create(stubs, install)
    reply = await stubs.admin.ListScheduleRuns(
        admin_pb.ListScheduleRunsRequest(install_id=install.install_id, schedule_id=schedule.id),
        metadata=admin_metadata(),
    )
    assert list(reply.runs) == []
    assert reply.next_page_token == ""

    unknown = await rpc_failure(
        stubs.admin.ListScheduleRuns(
            admin_pb.ListScheduleRunsRequest(
                install_id=install.install_id, schedule_id=str(uuid.uuid4())
            ),
            metadata=admin_metadata(),
        )
    )
    assert_failure(unknown, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")

    # The schedule of one install, asked for under another install: not found either.
    foreign = await rpc_failure(
        stubs.admin.ListScheduleRuns(
            admin_pb.ListScheduleRunsRequest(
                install_id=other_install.install_id, schedule_id=schedule.id
            ),
            metadata=admin_metadata(),
        )
    )
    assert_failure(foreign, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")

    no_install = await rpc_failure(
        stubs.admin.ListScheduleRuns(
            admin_pb.ListScheduleRunsRequest(install_id=str(uuid.uuid4()), schedule_id=schedule.id),
            metadata=admin_metadata(),
        )
    )
    assert_failure(no_install, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")


async def test_operator_reads_schedules_of_a_disabled_install(stubs: Stubs) -> None:
    handle = await register_install(stubs.admin)
    first = await create(stubs, handle, name="first")
    second = await create(stubs, handle, name="second")
    await upsert(stubs, same_install(handle, "v1", enabled=False))

    got = await stubs.admin.GetSchedule(
        admin_pb.SchedulerAdminGetScheduleRequest(
            install_id=handle.install_id, schedule_id=first.id
        ),
        metadata=admin_metadata(),
    )
    assert got.schedule.id == first.id
    assert got.schedule.name == "first"
    page = await stubs.admin.ListSchedules(
        admin_pb.SchedulerAdminListSchedulesRequest(install_id=handle.install_id, page_size=1),
        metadata=admin_metadata(),
    )
    assert [s.id for s in page.schedules] == [first.id]
    assert page.total_size == 2
    rest = await stubs.admin.ListSchedules(
        admin_pb.SchedulerAdminListSchedulesRequest(
            install_id=handle.install_id, page_token=page.next_page_token
        ),
        metadata=admin_metadata(),
    )
    assert [s.id for s in rest.schedules] == [second.id]
    assert not rest.next_page_token


async def test_operator_reads_answer_not_found_for_unknown_ids(
    stubs: Stubs, install: InstallHandle
) -> None:
    missing_install = await rpc_failure(
        stubs.admin.ListSchedules(
            admin_pb.SchedulerAdminListSchedulesRequest(install_id=str(uuid.uuid4())),
            metadata=admin_metadata(),
        )
    )
    assert_failure(missing_install, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")
    missing_schedule = await rpc_failure(
        stubs.admin.GetSchedule(
            admin_pb.SchedulerAdminGetScheduleRequest(
                install_id=install.install_id, schedule_id=str(uuid.uuid4())
            ),
            metadata=admin_metadata(),
        )
    )
    assert_failure(missing_schedule, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
    bad_id = await rpc_failure(
        stubs.admin.GetSchedule(
            admin_pb.SchedulerAdminGetScheduleRequest(install_id="x", schedule_id="y"),
            metadata=admin_metadata(),
        )
    )
    assert_failure(bad_id, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
