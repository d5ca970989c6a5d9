"""SchedulerHostClient: the install-scoped API, as a Runner calls it for one extension install."""

# `timeout` is the gRPC deadline of the call, named as grpc's own API names it.
# ruff: noqa: ASYNC109

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format, timestamp_pb2
from schedulerhost.v1 import schedule_pb2, scheduler_host_pb2, scheduler_host_pb2_grpc

from scheduler_host_client._channel import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_SECONDS, ClientBase

if TYPE_CHECKING:
    from schedulerhost.v1.scheduler_host_pb2_grpc import SchedulerHostAsyncStub

Schedule = schedule_pb2.Schedule
Endpoint = schedule_pb2.Endpoint
ScheduleRun = schedule_pb2.ScheduleRun


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp; a naive datetime is taken as UTC."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(value: timedelta) -> duration_pb2.Duration:
    stamp = duration_pb2.Duration()
    stamp.FromTimedelta(value)
    return stamp


def new_schedule(
    endpoint: str,
    cron: str = "",
    *,
    name: str = "",
    timezone: str = "",
    enabled: bool | None = None,
    payload: Any = None,
    run_at: datetime | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    jitter: timedelta | None = None,
) -> schedule_pb2.Schedule:
    """A Schedule message for create or update; `payload` is any JSON object or array.

    Recurring: `cron` (in `timezone`). One-time: `run_at` and no `cron`. `start_time` and
    `end_time` bound when occurrences may fire; `jitter` spreads each occurrence over
    [0, jitter). Naive datetimes are taken as UTC. Arguments left at None are not set.
    """
    schedule = schedule_pb2.Schedule(endpoint=endpoint, cron=cron, name=name, timezone=timezone)
    if enabled is not None:
        schedule.enabled = enabled
    if payload is not None:
        json_format.ParseDict(payload, schedule.payload)
    if run_at is not None:
        schedule.run_at.CopyFrom(_timestamp(run_at))
    if start_time is not None:
        schedule.start_time.CopyFrom(_timestamp(start_time))
    if end_time is not None:
        schedule.end_time.CopyFrom(_timestamp(end_time))
    if jitter is not None:
        schedule.jitter.CopyFrom(_duration(jitter))
    return schedule


def schedule_payload(schedule: schedule_pb2.Schedule) -> Any:
    """The payload of a schedule as JSON values (dict or list), or None when it has none."""
    if not schedule.HasField("payload"):
        return None
    return json_format.MessageToDict(schedule.payload)


def _field_mask(
    update_mask: str | Sequence[str] | field_mask_pb2.FieldMask | None,
) -> field_mask_pb2.FieldMask | None:
    if update_mask is None:
        return None
    if isinstance(update_mask, field_mask_pb2.FieldMask):
        return update_mask
    if isinstance(update_mask, str):
        update_mask = [p.strip() for p in update_mask.split(",") if p.strip()]
    return field_mask_pb2.FieldMask(paths=list(update_mask))


class SchedulerHostClient:
    """Async client of `schedulerhost.v1.SchedulerHost` for one install.

    `target` is `host:port` (the client opens and owns the channel) or an open `grpc.aio.Channel`
    (shared, left open by `close()`). Every call sends `x-runner-auth` and `x-install-id`, has a
    deadline of `timeout` seconds (None: no deadline) unless the call passes its own, and raises a
    `scheduler_host_client.errors.SchedulerHostError` subclass on failure. Channels opened by the
    client repeat a call that failed UNAVAILABLE up to `max_attempts` times in all (1 disables).

        async with SchedulerHostClient("127.0.0.1:50051", token, install_id) as client:
            schedule = await client.create_schedule(new_schedule("POST /sync", "0 * * * *"))
    """

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        runner_token: str,
        install_id: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        self._base = ClientBase(
            target,
            (("x-runner-auth", runner_token), ("x-install-id", install_id)),
            credentials=credentials,
            timeout=timeout,
            max_attempts=max_attempts,
            options=options,
        )
        self._runner_token = runner_token
        self.install_id = install_id
        self._stub: SchedulerHostAsyncStub = scheduler_host_pb2_grpc.SchedulerHostStub(
            self._base.channel
        )

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._base.channel

    @property
    def timeout(self) -> float | None:
        return self._base.timeout

    def for_install(self, install_id: str) -> SchedulerHostClient:
        """A client for another install on the same channel (closing it leaves the channel open)."""
        return SchedulerHostClient(
            self._base.channel, self._runner_token, install_id, timeout=self._base.timeout
        )

    async def close(self) -> None:
        await self._base.close()

    async def __aenter__(self) -> SchedulerHostClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def create_schedule(
        self,
        schedule: schedule_pb2.Schedule,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> schedule_pb2.Schedule:
        """Creates a schedule. Without `request_id` a fresh one is sent, so that the channel's
        retries are idempotent; pass your own to make your own retries idempotent too."""
        request = scheduler_host_pb2.CreateScheduleRequest(
            schedule=schedule, request_id=request_id or str(uuid.uuid4())
        )
        response = await self._base._call(self._stub.CreateSchedule, request, timeout)
        return response.schedule

    async def get_schedule(
        self, schedule_id: str, *, timeout: float | None = None
    ) -> schedule_pb2.Schedule:
        request = scheduler_host_pb2.GetScheduleRequest(id=schedule_id)
        response = await self._base._call(self._stub.GetSchedule, request, timeout)
        return response.schedule

    async def list_schedules(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> scheduler_host_pb2.ListSchedulesResponse:
        """One page (`schedules`, `next_page_token`, `total_size`); page_size 0 means 50."""
        request = scheduler_host_pb2.ListSchedulesRequest(
            page_size=page_size, page_token=page_token
        )
        return await self._base._call(self._stub.ListSchedules, request, timeout)

    async def iter_schedules(
        self, *, page_size: int = 100, timeout: float | None = None
    ) -> AsyncIterator[schedule_pb2.Schedule]:
        """Every schedule of the install, page after page, in creation order."""
        token = ""
        while True:
            page = await self.list_schedules(page_size=page_size, page_token=token, timeout=timeout)
            for schedule in page.schedules:
                yield schedule
            token = page.next_page_token
            if not token:
                return

    async def update_schedule(
        self,
        schedule: schedule_pb2.Schedule,
        update_mask: str | Sequence[str] | field_mask_pb2.FieldMask | None = None,
        *,
        timeout: float | None = None,
    ) -> schedule_pb2.Schedule:
        """Changes the fields in `update_mask` (e.g. `["cron", "enabled"]` or `"cron,enabled"`);
        without a mask, the fields set in `schedule`. `schedule.id` is required; with
        `schedule.etag` set the call fails with Aborted if the schedule changed since."""
        request = scheduler_host_pb2.UpdateScheduleRequest(
            schedule=schedule, update_mask=_field_mask(update_mask)
        )
        response = await self._base._call(self._stub.UpdateSchedule, request, timeout)
        return response.schedule

    async def delete_schedule(
        self, schedule_id: str, *, etag: str = "", timeout: float | None = None
    ) -> None:
        request = scheduler_host_pb2.DeleteScheduleRequest(id=schedule_id, etag=etag)
        await self._base._call(self._stub.DeleteSchedule, request, timeout)

    async def get_endpoints(self, *, timeout: float | None = None) -> list[schedule_pb2.Endpoint]:
        """The endpoints of the install's current version, each with `schedulable`."""
        request = scheduler_host_pb2.GetEndpointsRequest()
        response = await self._base._call(self._stub.GetEndpoints, request, timeout)
        return list(response.endpoints)

    async def preview_schedule(
        self,
        cron: str = "",
        timezone: str = "",
        *,
        count: int = 0,
        start_time: datetime | None = None,
        schedule_id: str = "",
        timeout: float | None = None,
    ) -> scheduler_host_pb2.PreviewScheduleResponse:
        """The next `count` run times (0 means 10) after `start_time` (default now), as the
        dispatcher fires them, and `min_interval`. A naive `start_time` is taken as UTC.

        Either `cron` (with `timezone`), or `schedule_id` alone: one of the install's stored
        schedules, previewed as stored (one-time run, time bounds and jitter included)."""
        request = scheduler_host_pb2.PreviewScheduleRequest(
            cron=cron, timezone=timezone, count=count, schedule_id=schedule_id
        )
        if start_time is not None:
            request.start_time.CopyFrom(_timestamp(start_time))
        return await self._base._call(self._stub.PreviewSchedule, request, timeout)

    async def list_schedule_runs(
        self,
        schedule_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> scheduler_host_pb2.SchedulerHostListScheduleRunsResponse:
        """One page (`runs`, `next_page_token`) of one schedule's runs, newest first."""
        request = scheduler_host_pb2.SchedulerHostListScheduleRunsRequest(
            schedule_id=schedule_id, page_size=page_size, page_token=page_token
        )
        return await self._base._call(self._stub.ListScheduleRuns, request, timeout)

    async def iter_schedule_runs(
        self, schedule_id: str, *, page_size: int = 100, timeout: float | None = None
    ) -> AsyncIterator[schedule_pb2.ScheduleRun]:
        """Every kept run of one of the install's schedules, newest first."""
        token = ""
        while True:
            page = await self.list_schedule_runs(
                schedule_id, page_size=page_size, page_token=token, timeout=timeout
            )
            for run in page.runs:
                yield run
            token = page.next_page_token
            if not token:
                return


__all__ = [
    "Endpoint",
    "Schedule",
    "ScheduleRun",
    "SchedulerHostClient",
    "new_schedule",
    "schedule_payload",
]
