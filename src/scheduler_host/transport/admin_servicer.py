"""SchedulerAdmin: messages in, use-case calls, messages out."""

from __future__ import annotations

from typing import Any

import grpc
from schedulerhost.v1 import scheduler_admin_pb2 as pb
from schedulerhost.v1 import scheduler_admin_pb2_grpc

from scheduler_host.domain.install import InstallContext
from scheduler_host.service import dispatch, installs, runs, schedules
from scheduler_host.service.deps import UseCaseDeps
from scheduler_host.transport import messages
from scheduler_host.transport.pages import run_page, schedule_page

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
        page = await run_page(runs.list_install_runs, request.install_id, request, self._deps)
        return messages.with_run_page(pb.ListScheduleRunsResponse(), page)

    async def GetSchedule(
        self, request: pb.SchedulerAdminGetScheduleRequest, context: Context
    ) -> pb.SchedulerAdminGetScheduleResponse:
        found = await schedules.get_schedule(
            await self._install_context(request.install_id),
            request.schedule_id,
            uow_factory=self._deps.uow_factory,
            field="schedule_id",
        )
        return messages.with_schedule(pb.SchedulerAdminGetScheduleResponse(), found)

    async def ListSchedules(
        self, request: pb.SchedulerAdminListSchedulesRequest, context: Context
    ) -> pb.SchedulerAdminListSchedulesResponse:
        ctx = await self._install_context(request.install_id)
        page = await schedule_page(ctx, request, self._deps)
        return messages.with_schedule_page(pb.SchedulerAdminListSchedulesResponse(), page)

    async def _install_context(self, install_id: str) -> InstallContext:
        return await installs.install_context(install_id, uow_factory=self._deps.uow_factory)
