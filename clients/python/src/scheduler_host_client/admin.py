"""SchedulerAdminClient: the operator-scoped API (installs, schedules, manual runs, run history)."""

# `timeout` is the gRPC deadline of the call, named as grpc's own API names it.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import grpc
from schedulerhost.v1 import schedule_pb2, scheduler_admin_pb2, scheduler_admin_pb2_grpc

from scheduler_host_client._channel import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_SECONDS, ClientBase

if TYPE_CHECKING:
    from schedulerhost.v1.scheduler_admin_pb2_grpc import SchedulerAdminAsyncStub

Install = scheduler_admin_pb2.Install
EndpointSpec = scheduler_admin_pb2.EndpointSpec


class SchedulerAdminClient:
    """Async client of `schedulerhost.v1.SchedulerAdmin`.

    Every call sends `authorization: Bearer <admin_token>`; `target`, `credentials`, `timeout`,
    `max_attempts` and `options` are as for `SchedulerHostClient` (RunScheduleNow is never
    repeated by the channel: it calls the Runner).
    """

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        admin_token: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        self._base = ClientBase(
            target,
            (("authorization", f"Bearer {admin_token}"),),
            credentials=credentials,
            timeout=timeout,
            max_attempts=max_attempts,
            options=options,
        )
        self._stub: SchedulerAdminAsyncStub = scheduler_admin_pb2_grpc.SchedulerAdminStub(
            self._base.channel
        )

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._base.channel

    async def close(self) -> None:
        await self._base.close()

    async def __aenter__(self) -> SchedulerAdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def upsert_install(
        self,
        install: scheduler_admin_pb2.Install,
        *,
        disable_missing_schedules: bool = False,
        timeout: float | None = None,
    ) -> scheduler_admin_pb2.UpsertInstallResponse:
        """Creates or replaces an install; the response names the schedules it disabled."""
        request = scheduler_admin_pb2.UpsertInstallRequest(
            install=install, disable_missing_schedules=disable_missing_schedules
        )
        return await self._base._call(self._stub.UpsertInstall, request, timeout)

    async def get_install(
        self, install_id: str, *, timeout: float | None = None
    ) -> scheduler_admin_pb2.Install:
        request = scheduler_admin_pb2.GetInstallRequest(install_id=install_id)
        response = await self._base._call(self._stub.GetInstall, request, timeout)
        return response.install

    async def delete_install(self, install_id: str, *, timeout: float | None = None) -> None:
        """Deletes the install with its schedules and their runs."""
        request = scheduler_admin_pb2.DeleteInstallRequest(install_id=install_id)
        await self._base._call(self._stub.DeleteInstall, request, timeout)

    async def run_schedule_now(
        self, install_id: str, schedule_id: str, *, timeout: float | None = None
    ) -> schedule_pb2.ScheduleRun:
        """Runs the schedule at once (trigger manual) and returns the run in its final state."""
        request = scheduler_admin_pb2.RunScheduleNowRequest(
            install_id=install_id, schedule_id=schedule_id
        )
        response = await self._base._call(self._stub.RunScheduleNow, request, timeout)
        return response.run

    async def list_schedule_runs(
        self,
        install_id: str,
        schedule_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> scheduler_admin_pb2.ListScheduleRunsResponse:
        """One page of the schedule's runs, newest first."""
        request = scheduler_admin_pb2.ListScheduleRunsRequest(
            install_id=install_id,
            schedule_id=schedule_id,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._base._call(self._stub.ListScheduleRuns, request, timeout)

    async def iter_schedule_runs(
        self,
        install_id: str,
        schedule_id: str,
        *,
        page_size: int = 100,
        timeout: float | None = None,
    ) -> AsyncIterator[schedule_pb2.ScheduleRun]:
        """Every kept run of the schedule, newest first."""
        token = ""
        while True:
            page = await self.list_schedule_runs(
                install_id, schedule_id, page_size=page_size, page_token=token, timeout=timeout
            )
            for run in page.runs:
                yield run
            token = page.next_page_token
            if not token:
                return

    async def get_schedule(
        self, install_id: str, schedule_id: str, *, timeout: float | None = None
    ) -> schedule_pb2.Schedule:
        """One schedule of the install, whatever the install's state (disabled included)."""
        request = scheduler_admin_pb2.SchedulerAdminGetScheduleRequest(
            install_id=install_id, schedule_id=schedule_id
        )
        response = await self._base._call(self._stub.GetSchedule, request, timeout)
        return response.schedule

    async def list_schedules(
        self,
        install_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> scheduler_admin_pb2.SchedulerAdminListSchedulesResponse:
        """One page (`schedules`, `next_page_token`, `total_size`) of the install's schedules,
        in creation order, whatever the install's state; page_size 0 means 50."""
        request = scheduler_admin_pb2.SchedulerAdminListSchedulesRequest(
            install_id=install_id, page_size=page_size, page_token=page_token
        )
        return await self._base._call(self._stub.ListSchedules, request, timeout)

    async def iter_schedules(
        self, install_id: str, *, page_size: int = 100, timeout: float | None = None
    ) -> AsyncIterator[schedule_pb2.Schedule]:
        """Every schedule of the install, page after page, in creation order."""
        token = ""
        while True:
            page = await self.list_schedules(
                install_id, page_size=page_size, page_token=token, timeout=timeout
            )
            for schedule in page.schedules:
                yield schedule
            token = page.next_page_token
            if not token:
                return


__all__ = ["EndpointSpec", "Install", "SchedulerAdminClient"]
