"""SchedulerHost: messages in, use-case calls, messages out. Nothing else lives here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from schedulerhost.v1 import scheduler_host_pb2 as pb
from schedulerhost.v1 import scheduler_host_pb2_grpc

from scheduler_host.domain.schedule import Schedule
from scheduler_host.service import preview as previews
from scheduler_host.service import runs, schedules
from scheduler_host.service.deps import UseCaseDeps
from scheduler_host.transport import messages
from scheduler_host.transport.interceptors import current_install
from scheduler_host.transport.pages import run_page, schedule_page

Context = grpc.aio.ServicerContext[Any, Any]


class SchedulerHostServicer(scheduler_host_pb2_grpc.SchedulerHostServicer):
    def __init__(self, deps: UseCaseDeps) -> None:
        self._deps = deps

    async def _write(self, write: Callable[..., Awaitable[Schedule]], *args: Any) -> Schedule:
        """schedules.create_schedule or update_schedule on the caller's install, given what every
        write of a schedule needs (the policy and the clock besides the unit of work)."""
        d = self._deps
        return await write(
            current_install.get(),
            *args,
            uow_factory=d.uow_factory,
            policy=d.schedules,
            clock=d.clock,
        )

    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Context
    ) -> pb.CreateScheduleResponse:
        created = await self._write(
            schedules.create_schedule,
            messages.schedule_fields(request.schedule),
            request.request_id,
        )
        return messages.with_schedule(pb.CreateScheduleResponse(), created)

    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        found = await schedules.get_schedule(
            current_install.get(), request.id, uow_factory=self._deps.uow_factory
        )
        return messages.with_schedule(pb.GetScheduleResponse(), found)

    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        page = await schedule_page(current_install.get(), request, self._deps)
        return messages.with_schedule_page(pb.ListSchedulesResponse(), page)

    async def UpdateSchedule(
        self, request: pb.UpdateScheduleRequest, context: Context
    ) -> pb.UpdateScheduleResponse:
        # An empty mask means "the fields set in the request", as with no mask at all.
        mask = list(request.update_mask.paths) or None
        updated = await self._write(
            schedules.update_schedule,
            request.schedule.id,
            request.schedule.etag,
            messages.schedule_fields(request.schedule),
            mask,
        )
        return messages.with_schedule(pb.UpdateScheduleResponse(), updated)

    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Context
    ) -> pb.DeleteScheduleResponse:
        await schedules.delete_schedule(
            current_install.get(), request.id, request.etag, uow_factory=self._deps.uow_factory
        )
        return pb.DeleteScheduleResponse()

    async def GetEndpoints(
        self, request: pb.GetEndpointsRequest, context: Context
    ) -> pb.GetEndpointsResponse:
        views = await schedules.get_endpoints(
            current_install.get(), uow_factory=self._deps.uow_factory
        )
        return pb.GetEndpointsResponse(endpoints=[messages.endpoint_message(v) for v in views])

    async def PreviewSchedule(
        self, request: pb.PreviewScheduleRequest, context: Context
    ) -> pb.PreviewScheduleResponse:
        preview = await previews.preview_schedule(
            current_install.get(),
            previews.PreviewRequest(
                request.cron,
                request.timezone,
                request.count,
                messages.start_time_of(request.start_time)
                if request.HasField("start_time")
                else None,
                request.schedule_id,
            ),
            policy=self._deps.schedules,
            clock=self._deps.clock,
            uow_factory=self._deps.uow_factory,
        )
        return pb.PreviewScheduleResponse(
            run_times=[messages.timestamp(t) for t in preview.run_times],
            min_interval=messages.duration(preview.min_interval.total_seconds()),
        )

    async def ListScheduleRuns(
        self, request: pb.SchedulerHostListScheduleRunsRequest, context: Context
    ) -> pb.SchedulerHostListScheduleRunsResponse:
        page = await run_page(runs.list_runs, current_install.get(), request, self._deps)
        return messages.with_run_page(pb.SchedulerHostListScheduleRunsResponse(), page)
