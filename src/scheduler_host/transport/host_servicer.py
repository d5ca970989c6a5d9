"""SchedulerHost: messages in, use-case calls, messages out. Nothing else lives here."""

from __future__ import annotations

from typing import Any

import grpc
from schedulerhost.v1 import scheduler_host_pb2 as pb
from schedulerhost.v1 import scheduler_host_pb2_grpc

from scheduler_host.service import preview as previews
from scheduler_host.service import runs, schedules
from scheduler_host.service.deps import UseCaseDeps
from scheduler_host.transport import messages
from scheduler_host.transport.interceptors import current_install

Context = grpc.aio.ServicerContext[Any, Any]


class SchedulerHostServicer(scheduler_host_pb2_grpc.SchedulerHostServicer):
    def __init__(self, deps: UseCaseDeps) -> None:
        self._deps = deps

    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Context
    ) -> pb.CreateScheduleResponse:
        d = self._deps
        created = await schedules.create_schedule(
            current_install.get(),
            messages.schedule_fields(request.schedule),
            request.request_id,
            uow_factory=d.uow_factory,
            policy=d.schedules,
            clock=d.clock,
        )
        response = pb.CreateScheduleResponse()
        messages.fill_schedule(response.schedule, created)
        return response

    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        found = await schedules.get_schedule(
            current_install.get(), request.id, uow_factory=self._deps.uow_factory
        )
        response = pb.GetScheduleResponse()
        messages.fill_schedule(response.schedule, found)
        return response

    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        page = await schedules.list_schedules(
            current_install.get(),
            request.page_size,
            request.page_token,
            uow_factory=self._deps.uow_factory,
            tokens=self._deps.page_tokens,
        )
        response = pb.ListSchedulesResponse(
            next_page_token=page.next_page_token, total_size=page.total_size
        )
        add = response.schedules.add
        for s in page.schedules:
            messages.fill_schedule(add(), s)
        return response

    async def UpdateSchedule(
        self, request: pb.UpdateScheduleRequest, context: Context
    ) -> pb.UpdateScheduleResponse:
        d = self._deps
        # An empty mask means "the fields set in the request", as with no mask at all.
        mask = list(request.update_mask.paths) or None
        updated = await schedules.update_schedule(
            current_install.get(),
            request.schedule.id,
            request.schedule.etag,
            messages.schedule_fields(request.schedule),
            mask,
            uow_factory=d.uow_factory,
            policy=d.schedules,
            clock=d.clock,
        )
        response = pb.UpdateScheduleResponse()
        messages.fill_schedule(response.schedule, updated)
        return response

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
        page = await runs.list_runs(
            current_install.get(),
            request.schedule_id,
            request.page_size,
            request.page_token,
            uow_factory=self._deps.uow_factory,
            tokens=self._deps.page_tokens,
        )
        return pb.SchedulerHostListScheduleRunsResponse(
            runs=[messages.run_message(r) for r in page.runs], next_page_token=page.next_page_token
        )
