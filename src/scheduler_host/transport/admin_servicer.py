"""SchedulerAdmin: messages in, use-case calls, messages out."""

from __future__ import annotations

from typing import Any

import grpc
from schedulerhost.v1 import scheduler_admin_pb2 as pb
from schedulerhost.v1 import scheduler_admin_pb2_grpc

from scheduler_host.service import dispatch, installs, runs, schedules
from scheduler_host.service.deps import UseCaseDeps
from scheduler_host.transport import messages

Context = grpc.aio.ServicerContext[Any, Any]


class SchedulerAdminServicer(scheduler_admin_pb2_grpc.SchedulerAdminServicer):
    def __init__(self, deps: UseCaseDeps, dispatcher: dispatch.Dispatcher) -> None:
        self._deps = deps
        self._dispatcher = dispatcher

    async def UpsertInstall(
        self, request: pb.UpsertInstallRequest, context: Context
    ) -> pb.UpsertInstallResponse:
        d = self._deps
        install, disabled = await installs.upsert_install(
            messages.install_input(request.install),
            request.disable_missing_schedules,
            uow_factory=d.uow_factory,
            clock=d.clock,
            install_cache=d.install_cache,
        )
        return pb.UpsertInstallResponse(
            install=messages.install_message(install),
            disabled_schedule_ids=[str(i) for i in disabled],
        )

    async def GetInstall(
        self, request: pb.GetInstallRequest, context: Context
    ) -> pb.GetInstallResponse:
        install = await installs.get_install(request.install_id, uow_factory=self._deps.uow_factory)
        return pb.GetInstallResponse(install=messages.install_message(install))

    async def DeleteInstall(
        self, request: pb.DeleteInstallRequest, context: Context
    ) -> pb.DeleteInstallResponse:
        await installs.delete_install(
            request.install_id,
            uow_factory=self._deps.uow_factory,
            install_cache=self._deps.install_cache,
        )
        return pb.DeleteInstallResponse()

    async def RunScheduleNow(
        self, request: pb.RunScheduleNowRequest, context: Context
    ) -> pb.RunScheduleNowResponse:
        d = self._deps
        run = await dispatch.run_schedule_now(
            request.install_id,
            request.schedule_id,
            uow_factory=d.uow_factory,
            clock=d.clock,
            policy=d.access,
            dispatcher=self._dispatcher,
        )
        return pb.RunScheduleNowResponse(run=messages.run_message(run))

    async def ListScheduleRuns(
        self, request: pb.ListScheduleRunsRequest, context: Context
    ) -> pb.ListScheduleRunsResponse:
        page = await runs.list_install_runs(
            request.install_id,
            request.schedule_id,
            request.page_size,
            request.page_token,
            uow_factory=self._deps.uow_factory,
            tokens=self._deps.page_tokens,
        )
        return pb.ListScheduleRunsResponse(
            runs=[messages.run_message(r) for r in page.runs], next_page_token=page.next_page_token
        )

    async def GetSchedule(
        self, request: pb.SchedulerAdminGetScheduleRequest, context: Context
    ) -> pb.SchedulerAdminGetScheduleResponse:
        uow_factory = self._deps.uow_factory
        ctx = await installs.install_context(request.install_id, uow_factory=uow_factory)
        found = await schedules.get_schedule(
            ctx, request.schedule_id, uow_factory=uow_factory, field="schedule_id"
        )
        response = pb.SchedulerAdminGetScheduleResponse()
        messages.fill_schedule(response.schedule, found)
        return response

    async def ListSchedules(
        self, request: pb.SchedulerAdminListSchedulesRequest, context: Context
    ) -> pb.SchedulerAdminListSchedulesResponse:
        uow_factory = self._deps.uow_factory
        ctx = await installs.install_context(request.install_id, uow_factory=uow_factory)
        page = await schedules.list_schedules(
            ctx,
            request.page_size,
            request.page_token,
            uow_factory=uow_factory,
            tokens=self._deps.page_tokens,
        )
        response = pb.SchedulerAdminListSchedulesResponse(
            next_page_token=page.next_page_token, total_size=page.total_size
        )
        add = response.schedules.add
        for s in page.schedules:
            messages.fill_schedule(add(), s)
        return response
