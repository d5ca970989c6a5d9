"""A first walk through the API: create, read, list, update, delete."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2, struct_pb2
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_host_pb2 as pb

from tests.support.grpc_status_details import rpc_failure
from tests.support.server import InstallHandle, Stubs


async def test_schedule_round_trip(stubs: Stubs, install: InstallHandle) -> None:
    payload = struct_pb2.Value()
    payload.struct_value.update({"full": True, "n": 3})
    created = (
        await stubs.host.CreateSchedule(
            pb.CreateScheduleRequest(
                schedule=schedule_pb2.Schedule(
                    endpoint="/sync",
                    cron="*/5 * * * *",
                    timezone="Europe/Berlin",
                    name="sync",
                    payload=payload,
                )
            ),
            metadata=install.metadata,
        )
    ).schedule
    assert created.endpoint == "POST /sync"
    assert created.enabled
    assert created.HasField("next_run_time")
    got = (
        await stubs.host.GetSchedule(
            pb.GetScheduleRequest(id=created.id), metadata=install.metadata
        )
    ).schedule
    assert got == created
    listed = await stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=install.metadata)
    assert [s.id for s in listed.schedules] == [created.id]
    assert listed.total_size == 1
    updated = (
        await stubs.host.UpdateSchedule(
            pb.UpdateScheduleRequest(
                schedule=schedule_pb2.Schedule(id=created.id, cron="0 * * * *", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["cron"]),
            ),
            metadata=install.metadata,
        )
    ).schedule
    assert updated.cron == "0 * * * *"
    assert updated.name == "sync"
    assert updated.payload == payload
    assert updated.etag != created.etag
    stale = await rpc_failure(
        stubs.host.DeleteSchedule(
            pb.DeleteScheduleRequest(id=created.id, etag=created.etag), metadata=install.metadata
        )
    )
    assert stale.code == grpc.StatusCode.ABORTED
    assert stale.reason == "ETAG_MISMATCH"
    await stubs.host.DeleteSchedule(
        pb.DeleteScheduleRequest(id=created.id), metadata=install.metadata
    )
    gone = await rpc_failure(
        stubs.host.GetSchedule(pb.GetScheduleRequest(id=created.id), metadata=install.metadata)
    )
    assert gone.code == grpc.StatusCode.NOT_FOUND
    assert gone.reason == "SCHEDULE_NOT_FOUND"
