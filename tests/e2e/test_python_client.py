"""The Python client (scheduler-host-client, also importable as scheduler_host.client) through the
real server: every operation, and every exception class of the client raised by a real failure."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from google.protobuf import field_mask_pb2
from schedulerhost.v1 import schedule_pb2

import scheduler_host_client
from scheduler_host import client as reexported
from scheduler_host.app import Application, start_application
from scheduler_host.client import (
    Schedule,
    SchedulerAdminClient,
    SchedulerHostClient,
    errors,
    new_schedule,
    schedule_payload,
)
from tests.e2e.conftest import e2e_settings
from tests.support.postgres import PostgresServer, scratch_database
from tests.support.runner_standin import RecordingRunner
from tests.support.server import (
    ADMIN_TOKEN,
    CAPABILITY,
    RUNNER_TOKEN,
    free_port,
    install_message,
)

E = TypeVar("E", bound=errors.SchedulerHostError)

# Which test raises each exception class of the client (checked by the last test of this file).
RAISED_BY: dict[type[errors.SchedulerHostError], str] = {
    errors.Unauthenticated: "test_unauthenticated",
    errors.InvalidArgument: "test_invalid_argument_carries_every_field_violation",
    errors.NotFound: "test_not_found",
    errors.PermissionDenied: "test_permission_denied",
    errors.FailedPrecondition: "test_failed_precondition",
    errors.AlreadyExists: "test_already_exists",
    errors.ResourceExhausted: "test_resource_exhausted_for_an_oversized_request",
    errors.QuotaExceeded: "test_quota_exceeded_and_rate_limited",
    errors.RateLimited: "test_quota_exceeded_and_rate_limited",
    errors.Aborted: "test_aborted_on_a_stale_etag",
    errors.Unavailable: "test_unavailable_on_a_closed_port",
    errors.DeadlineExceeded: "test_deadline_exceeded_while_the_row_is_locked",
    errors.InternalError: "test_internal_error_when_the_schema_is_broken",
}


async def expect(cls: type[E], call: Awaitable[Any]) -> E:
    """Await a call that must fail with exactly `cls` (not a subclass) and return the error."""
    with pytest.raises(errors.SchedulerHostError) as info:
        await call
    assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    return info.value


def pg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_id(schedule: Schedule, schedule_id: str, etag: str = "") -> Schedule:
    """The message for an update of `schedule_id` (with its etag when given)."""
    schedule.id = schedule_id
    schedule.etag = etag
    return schedule


@pytest.fixture
def target(app: Application) -> str:
    return f"127.0.0.1:{app.port}"


@pytest.fixture
async def admin(target: str) -> AsyncIterator[SchedulerAdminClient]:
    async with SchedulerAdminClient(target, ADMIN_TOKEN) as client:
        yield client


async def register(admin: SchedulerAdminClient, **kwargs: Any) -> str:
    install = install_message(**kwargs)
    response = await admin.upsert_install(install)
    assert response.install.install_id == install.install_id
    return install.install_id


@pytest.fixture
async def host(target: str, admin: SchedulerAdminClient) -> AsyncIterator[SchedulerHostClient]:
    install_id = await register(admin)
    async with SchedulerHostClient(target, RUNNER_TOKEN, install_id) as client:
        yield client


# --- operations -----------------------------------------------------------------------------


async def test_schedule_lifecycle(host: SchedulerHostClient) -> None:
    endpoints = {f"{e.method} {e.path}": e for e in await host.get_endpoints()}
    assert endpoints["POST /sync"].schedulable
    assert not endpoints["PUT /items"].schedulable
    assert endpoints["PUT /items"].unschedulable_reason

    request_id = str(uuid.uuid4())
    created = await host.create_schedule(
        new_schedule(
            "POST /sync", "0 * * * *", name="hourly", timezone="Europe/Berlin", payload={"a": 1}
        ),
        request_id=request_id,
    )
    assert created.id
    assert created.etag
    assert created.enabled
    assert created.endpoint == "POST /sync"
    assert schedule_payload(created) == {"a": 1}
    again = await host.create_schedule(
        new_schedule("POST /sync", "0 * * * *", name="hourly"), request_id=request_id
    )
    assert again.id == created.id, "a retry with the same request_id returns the first schedule"

    got = await host.get_schedule(created.id)
    assert got == created

    others = [
        await host.create_schedule(new_schedule("GET /status", cron, name=f"s{i}"))
        for i, cron in enumerate(("@daily", "30 2 * * *"))
    ]
    first = await host.list_schedules(page_size=2)
    assert [s.id for s in first.schedules] == [created.id, others[0].id]
    assert first.total_size == 3
    assert first.next_page_token
    second = await host.list_schedules(page_size=2, page_token=first.next_page_token)
    assert [s.id for s in second.schedules] == [others[1].id]
    assert second.next_page_token == ""
    assert [s.id async for s in host.iter_schedules(page_size=1)] == [
        created.id,
        others[0].id,
        others[1].id,
    ]

    # Only the masked field changes: `name` is set in the message but not named in the mask.
    updated = await host.update_schedule(
        with_id(new_schedule("", "*/15 * * * *", name="ignored"), got.id, got.etag),
        update_mask=["cron"],
    )
    assert (updated.cron, updated.name, updated.timezone) == (
        "*/15 * * * *",
        "hourly",
        "Europe/Berlin",
    )
    assert schedule_payload(updated) == {"a": 1}
    assert updated.etag != got.etag
    disabled = await host.update_schedule(
        with_id(new_schedule("", "", enabled=False), got.id), "enabled"
    )
    assert disabled.enabled is False
    assert not disabled.HasField("next_run_time")
    masked = await host.update_schedule(
        with_id(new_schedule("", "", enabled=True), got.id),
        field_mask_pb2.FieldMask(paths=["enabled"]),
    )
    assert masked.enabled
    assert masked.HasField("next_run_time")

    preview = await host.preview_schedule(
        "30 2 * * *",
        "America/New_York",
        count=3,
        start_time=datetime(2026, 3, 7, tzinfo=UTC),
    )
    assert [t.ToDatetime(UTC) for t in preview.run_times] == [
        datetime(2026, 3, 7, 7, 30, tzinfo=UTC),
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # 02:30 is skipped: 03:00 EDT
        datetime(2026, 3, 9, 6, 30, tzinfo=UTC),
    ]
    assert preview.min_interval.ToTimedelta() >= timedelta(hours=23)

    await host.delete_schedule(created.id, etag=masked.etag)
    await expect(errors.NotFound, host.get_schedule(created.id))
    assert [s.id async for s in host.iter_schedules()] == [o.id for o in others]


async def test_admin_client(admin: SchedulerAdminClient, target: str) -> None:
    install_id = await register(admin)
    install = await admin.get_install(install_id)
    assert install.install_id == install_id
    assert list(install.granted_capabilities) == [CAPABILITY]
    async with SchedulerHostClient(target, RUNNER_TOKEN, install_id) as host:
        schedule = await host.create_schedule(new_schedule("POST /sync", "@hourly"))
    runs = await admin.list_schedule_runs(install_id, schedule.id)
    assert list(runs.runs) == []
    assert runs.next_page_token == ""
    assert [r async for r in admin.iter_schedule_runs(install_id, schedule.id)] == []
    await admin.delete_install(install_id)
    error = await expect(errors.NotFound, admin.get_install(install_id))
    assert error.reason == "INSTALL_NOT_FOUND"


async def test_one_channel_for_many_installs(admin: SchedulerAdminClient, target: str) -> None:
    first, second = await register(admin), await register(admin)
    async with grpc.aio.insecure_channel(target) as channel:
        a = SchedulerHostClient(channel, RUNNER_TOKEN, first)
        b = a.for_install(second)
        made = await a.create_schedule(new_schedule("POST /sync", "@hourly"))
        await expect(errors.NotFound, b.get_schedule(made.id))
        await b.close()  # a channel passed in stays open
        assert (await a.get_schedule(made.id)).id == made.id


def test_scheduler_host_client_is_the_same_package_under_the_old_name() -> None:
    assert set(reexported.__all__) == set(scheduler_host_client.__all__)
    for name in set(scheduler_host_client.__all__) - {"errors"}:
        assert getattr(reexported, name) is getattr(scheduler_host_client, name), name
    assert reexported.errors.__all__ == scheduler_host_client.errors.__all__
    for name in scheduler_host_client.errors.__all__:
        assert getattr(reexported.errors, name) is getattr(scheduler_host_client.errors, name)


async def test_admin_reads_an_installs_schedules_whatever_its_state(
    admin: SchedulerAdminClient, target: str
) -> None:
    install = install_message()
    await admin.upsert_install(install)
    async with SchedulerHostClient(target, RUNNER_TOKEN, install.install_id) as host:
        made = [
            await host.create_schedule(new_schedule("POST /sync", "@hourly", name=f"s{i}"))
            for i in range(3)
        ]
    install.enabled = False
    await admin.upsert_install(install)
    async with SchedulerHostClient(target, RUNNER_TOKEN, install.install_id) as host:
        await expect(errors.FailedPrecondition, host.get_schedule(made[0].id))

    page = await admin.list_schedules(install.install_id, page_size=2)
    assert [s.id for s in page.schedules] == [m.id for m in made[:2]]
    assert page.total_size == 3
    assert page.next_page_token
    rest = await admin.list_schedules(
        install.install_id, page_size=2, page_token=page.next_page_token
    )
    assert [s.id for s in rest.schedules] == [made[2].id]
    assert rest.next_page_token == ""
    assert [s.id async for s in admin.iter_schedules(install.install_id, page_size=1)] == [
        m.id for m in made
    ]
    got = await admin.get_schedule(install.install_id, made[1].id)
    assert (got.id, got.name, got.etag, got.endpoint) == (
        made[1].id,
        "s1",
        made[1].etag,
        "POST /sync",
    )

    other = await register(admin)
    missing = await expect(errors.NotFound, admin.get_schedule(other, made[1].id))
    assert missing.reason == "SCHEDULE_NOT_FOUND", "another install's schedule is not found"
    gone = await expect(errors.NotFound, admin.list_schedules(str(uuid.uuid4())))
    assert gone.reason == "INSTALL_NOT_FOUND"
    bad = await expect(errors.InvalidArgument, admin.get_schedule("nope", made[1].id))
    assert [v.reason for v in bad.field_violations.values()] == ["ID_INVALID"]


@pytest.fixture
async def runner_target(app: Application) -> AsyncIterator[str]:
    """A server on the e2e database whose Runner is a stand-in that answers every run with 200."""
    runner = RecordingRunner()
    await runner.start()
    server = await start_application(e2e_settings(app.database_url, runner_base_url=runner.url))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop()
        await runner.stop()


async def test_run_history_for_the_install_and_the_operator(runner_target: str) -> None:
    async with SchedulerAdminClient(runner_target, ADMIN_TOKEN) as admin:
        install_id = await register(admin)
        async with SchedulerHostClient(runner_target, RUNNER_TOKEN, install_id) as host:
            schedule = await host.create_schedule(new_schedule("POST /sync", "@daily"))
            assert (await host.list_schedule_runs(schedule.id)).runs == []
            first = await admin.run_schedule_now(install_id, schedule.id)
            second = await admin.run_schedule_now(install_id, schedule.id)
            assert first.status == schedule_pb2.RUN_STATE_SUCCESS
            assert first.trigger == schedule_pb2.RUN_TRIGGER_MANUAL

            page = await host.list_schedule_runs(schedule.id, page_size=1)
            assert [r.id for r in page.runs] == [second.id]
            assert page.next_page_token
            newest_first = [r.id async for r in host.iter_schedule_runs(schedule.id, page_size=1)]
            assert newest_first == [second.id, first.id]
            by_operator = [r async for r in admin.iter_schedule_runs(install_id, schedule.id)]
            assert [r.id for r in by_operator] == newest_first
            assert by_operator[0] == page.runs[0], "both services describe a run the same way"

            stranger = host.for_install(await register(admin))
            error = await expect(errors.NotFound, stranger.list_schedule_runs(schedule.id))
            assert error.reason == "SCHEDULE_NOT_FOUND"
            invalid = await expect(
                errors.InvalidArgument, host.list_schedule_runs(schedule.id, page_size=-1)
            )
            assert [v.reason for v in invalid.field_violations.values()] == ["PAGE_INVALID"]


# --- every exception class ----------------------------------------------------------------------


async def test_unauthenticated(target: str, host: SchedulerHostClient) -> None:
    async with SchedulerHostClient(target, "wrong-token", host.install_id) as bad:
        error = await expect(errors.Unauthenticated, bad.list_schedules())
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
    assert error.domain == errors.ERROR_DOMAIN
    assert "wrong-token" not in str(error)
    async with SchedulerAdminClient(target, RUNNER_TOKEN) as not_admin:
        error = await expect(errors.Unauthenticated, not_admin.get_install(host.install_id))
    assert error.reason == "INVALID_TOKEN"


async def test_invalid_argument_carries_every_field_violation(host: SchedulerHostClient) -> None:
    error = await expect(
        errors.InvalidArgument,
        host.create_schedule(new_schedule("POST /nope", "*/4 * * * *", timezone="+05:00")),
    )
    assert errors.ValidationFailed is errors.InvalidArgument
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert {f: v.reason for f, v in error.field_violations.items()} == {
        "schedule.cron": "CRON_TOO_FREQUENT",
        "schedule.timezone": "TIMEZONE_INVALID",
        "schedule.endpoint": "ENDPOINT_NOT_FOUND",
    }
    assert all(v.description for v in error.field_violations.values())
    assert not error.retryable
    error = await expect(errors.InvalidArgument, host.list_schedules(page_size=-1))
    assert [v.reason for v in error.field_violations.values()] == ["PAGE_INVALID"]


async def test_not_found(host: SchedulerHostClient) -> None:
    missing = str(uuid.uuid4())
    error = await expect(errors.NotFound, host.get_schedule(missing))
    assert (error.reason, error.resource_type, error.resource_name) == (
        "SCHEDULE_NOT_FOUND",
        "schedule",
        missing,
    )
    error = await expect(errors.NotFound, host.for_install(str(uuid.uuid4())).get_endpoints())
    assert error.reason == "INSTALL_NOT_FOUND"


async def test_permission_denied(admin: SchedulerAdminClient, target: str) -> None:
    install_id = await register(admin, capabilities=())
    async with SchedulerHostClient(target, RUNNER_TOKEN, install_id) as host:
        error = await expect(errors.PermissionDenied, host.get_endpoints())
    assert error.reason == "CAPABILITY_NOT_GRANTED"


async def test_failed_precondition(admin: SchedulerAdminClient, target: str) -> None:
    disabled = await register(admin, enabled=False)
    async with SchedulerHostClient(target, RUNNER_TOKEN, disabled) as host:
        error = await expect(errors.FailedPrecondition, host.list_schedules())
    assert error.reason == "INSTALL_DISABLED"

    install = install_message()
    await admin.upsert_install(install)
    async with SchedulerHostClient(target, RUNNER_TOKEN, install.install_id) as host:
        await host.create_schedule(new_schedule("POST /sync", "@hourly"))
    upgrade = install_message(
        install.install_id,
        tenant_id=install.tenant_id,
        version_id="v2",
        endpoints=(("GET", "/status", "status"),),
    )
    error = await expect(errors.FailedPrecondition, admin.upsert_install(upgrade))
    assert error.reason == "SCHEDULE_REMAP_FAILED"
    response = await admin.upsert_install(upgrade, disable_missing_schedules=True)
    assert len(response.disabled_schedule_ids) == 1


async def test_already_exists(host: SchedulerHostClient) -> None:
    await host.create_schedule(new_schedule("POST /sync", "@hourly", name="twin"))
    error = await expect(
        errors.AlreadyExists,
        host.create_schedule(new_schedule("POST /sync", "@daily", name="twin")),
    )
    assert error.reason == "SCHEDULE_NAME_IN_USE"


async def test_resource_exhausted_for_an_oversized_request(host: SchedulerHostClient) -> None:
    big = new_schedule("POST /sync", "@hourly", payload={"blob": "x" * 1_200_000})
    error = await expect(errors.ResourceExhausted, host.create_schedule(big))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == ""  # as gRPC sends it: no ErrorInfo


async def test_aborted_on_a_stale_etag(host: SchedulerHostClient) -> None:
    created = await host.create_schedule(new_schedule("POST /sync", "@hourly"))
    await host.update_schedule(with_id(new_schedule("", "@daily"), created.id), ["cron"])
    stale = with_id(new_schedule("", "@weekly"), created.id, created.etag)
    error = await expect(errors.Aborted, host.update_schedule(stale, ["cron"]))
    assert errors.EtagMismatch is errors.Aborted
    assert (error.code, error.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    await expect(errors.Aborted, host.delete_schedule(created.id, etag=created.etag))


async def test_unavailable_on_a_closed_port() -> None:
    async with SchedulerHostClient(
        f"127.0.0.1:{free_port()}", RUNNER_TOKEN, str(uuid.uuid4()), timeout=2
    ) as host:
        error = await expect(errors.Unavailable, host.get_endpoints())
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.retryable


async def test_deadline_exceeded_while_the_row_is_locked(
    host: SchedulerHostClient, e2e_database_url: str
) -> None:
    created = await host.create_schedule(new_schedule("POST /sync", "@hourly"))
    conn = await asyncpg.connect(pg_dsn(e2e_database_url))
    try:
        async with conn.transaction():
            # Another writer holds the schedule's row: the update waits on it past its deadline.
            await conn.execute(
                "SELECT id FROM schedules WHERE id = $1 FOR UPDATE", uuid.UUID(created.id)
            )
            change = with_id(new_schedule("", "@daily"), created.id)
            error = await expect(
                errors.DeadlineExceeded, host.update_schedule(change, ["cron"], timeout=0.5)
            )
            assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert error.retryable
    finally:
        await conn.close()
    # Once the row is free the same change goes through.
    change = with_id(new_schedule("", "@daily"), created.id)
    assert (await host.update_schedule(change, ["cron"])).cron == "@daily"


@pytest.fixture
async def limited_target(app: Application) -> AsyncIterator[str]:
    """A second server on the same database with a quota of 1 and 2 changes per minute."""
    limited = await start_application(
        e2e_settings(app.database_url, rate_limit_per_minute=2, max_schedules_per_install=1)
    )
    try:
        yield f"127.0.0.1:{limited.port}"
    finally:
        await limited.stop()


async def test_quota_exceeded_and_rate_limited(
    limited_target: str, admin: SchedulerAdminClient
) -> None:
    install_id = await register(admin)
    async with SchedulerHostClient(limited_target, RUNNER_TOKEN, install_id) as host:
        await host.create_schedule(new_schedule("POST /sync", "@hourly"))  # change 1
        quota = await expect(  # change 2
            errors.QuotaExceeded, host.create_schedule(new_schedule("POST /sync", "@daily"))
        )
        limited = await expect(  # change 3: over the limit
            errors.RateLimited, host.create_schedule(new_schedule("POST /sync", "@daily"))
        )
        assert await host.get_endpoints(), "reads are not rate limited"
    assert (quota.code, quota.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SCHEDULE_QUOTA_EXCEEDED",
    )
    assert quota.quota_subjects
    assert not quota.retryable
    assert isinstance(quota, errors.ResourceExhausted)
    assert (limited.code, limited.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert limited.retry_delay is not None
    assert limited.retryable
    assert timedelta(0) < limited.retry_delay <= timedelta(seconds=60)


@pytest.fixture
async def broken_schema_target(postgres: PostgresServer) -> AsyncIterator[tuple[str, str]]:
    """A server on its own database whose `schedules` table was renamed after the start."""
    with scratch_database(postgres, prefix="scheduler_host_client") as name:
        url = postgres.url(name)
        server = await start_application(e2e_settings(url), migrate=True)
        try:
            async with SchedulerAdminClient(f"127.0.0.1:{server.port}", ADMIN_TOKEN) as admin:
                install_id = await register(admin)
            conn = await asyncpg.connect(postgres.dsn(name))
            try:
                await conn.execute("ALTER TABLE schedules RENAME TO schedules_gone")
            finally:
                await conn.close()
            yield f"127.0.0.1:{server.port}", install_id
        finally:
            await server.stop()


async def test_internal_error_when_the_schema_is_broken(
    broken_schema_target: tuple[str, str],
) -> None:
    target, install_id = broken_schema_target
    async with SchedulerHostClient(target, RUNNER_TOKEN, install_id) as host:
        error = await expect(errors.InternalError, host.list_schedules())
    assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "schedules" not in error.message.lower(), "no SQL or exception text reaches a caller"


def test_every_exception_class_is_raised_by_a_test() -> None:
    classes = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.SchedulerHostError)
    }
    # The base class is never raised itself; every other class is, by the test named here.
    assert classes - {errors.SchedulerHostError} == set(RAISED_BY)
    for test_name in RAISED_BY.values():
        assert callable(globals().get(test_name)), test_name
