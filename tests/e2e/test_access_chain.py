"""The interceptor chain, end to end: who may call, in which order the checks answer.

Order of checks on SchedulerHost: token → x-install-id well-formed → install exists → install
enabled → capability granted → rate limit (mutations) → the RPC's own validation. SchedulerAdmin
checks `authorization: Bearer <admin token>` before anything else.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb

from scheduler_host.app import Application, start_application
from tests.e2e.conftest import e2e_settings
from tests.support.grpc_status_details import RpcFailure, failure_of, rpc_failure
from tests.support.server import (
    ADMIN_TOKEN,
    CAPABILITY,
    RUNNER_TOKEN,
    SECOND_RUNNER_TOKEN,
    InstallHandle,
    Stubs,
    admin_metadata,
    install_message,
    register_install,
)

Metadata = tuple[tuple[str, str], ...]
HostCall = Callable[[Stubs, Metadata], Awaitable[Any]]

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
INSTALL_ID_FIELD = "x-install-id"


def valid_schedule(**fields: Any) -> schedule_pb2.Schedule:
    return schedule_pb2.Schedule(
        **{"endpoint": "POST /sync", "cron": "0 * * * *", "timezone": "UTC", **fields}
    )


def create_request(**fields: Any) -> pb.CreateScheduleRequest:
    return pb.CreateScheduleRequest(schedule=valid_schedule(**fields))


def bad_cron_request() -> pb.CreateScheduleRequest:
    return pb.CreateScheduleRequest(schedule=valid_schedule(cron="not a cron"))


# Every SchedulerHost RPC, each with a request that would be valid for an authorised install.
HOST_CALLS: dict[str, HostCall] = {
    "CreateSchedule": lambda s, md: s.host.CreateSchedule(create_request(), metadata=md),
    "GetSchedule": lambda s, md: s.host.GetSchedule(
        pb.GetScheduleRequest(id=str(uuid.uuid4())), metadata=md
    ),
    "ListSchedules": lambda s, md: s.host.ListSchedules(pb.ListSchedulesRequest(), metadata=md),
    "UpdateSchedule": lambda s, md: s.host.UpdateSchedule(
        pb.UpdateScheduleRequest(
            schedule=schedule_pb2.Schedule(id=str(uuid.uuid4()), cron="30 * * * *"),
            update_mask=field_mask_pb2.FieldMask(paths=["cron"]),
        ),
        metadata=md,
    ),
    "DeleteSchedule": lambda s, md: s.host.DeleteSchedule(
        pb.DeleteScheduleRequest(id=str(uuid.uuid4())), metadata=md
    ),
    "GetEndpoints": lambda s, md: s.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=md),
    "PreviewSchedule": lambda s, md: s.host.PreviewSchedule(
        pb.PreviewScheduleRequest(cron="0 * * * *", timezone="UTC"), metadata=md
    ),
}
HOST_RPCS = sorted(HOST_CALLS)

ADMIN_CALLS: dict[str, Callable[[Stubs, Metadata], Awaitable[Any]]] = {
    "UpsertInstall": lambda s, md: s.admin.UpsertInstall(
        admin_pb.UpsertInstallRequest(install=install_message()), metadata=md
    ),
    "GetInstall": lambda s, md: s.admin.GetInstall(
        admin_pb.GetInstallRequest(install_id=str(uuid.uuid4())), metadata=md
    ),
    "DeleteInstall": lambda s, md: s.admin.DeleteInstall(
        admin_pb.DeleteInstallRequest(install_id=str(uuid.uuid4())), metadata=md
    ),
    "RunScheduleNow": lambda s, md: s.admin.RunScheduleNow(
        admin_pb.RunScheduleNowRequest(install_id=str(uuid.uuid4()), schedule_id=str(uuid.uuid4())),
        metadata=md,
    ),
    "ListScheduleRuns": lambda s, md: s.admin.ListScheduleRuns(
        admin_pb.ListScheduleRunsRequest(
            install_id=str(uuid.uuid4()), schedule_id=str(uuid.uuid4())
        ),
        metadata=md,
    ),
}
ADMIN_RPCS = sorted(ADMIN_CALLS)


def runner_md(install_id: str, token: str = RUNNER_TOKEN) -> Metadata:
    return (("x-runner-auth", token), ("x-install-id", install_id))


def assert_failure(failure: RpcFailure, code: grpc.StatusCode, reason: str) -> None:
    assert (failure.code, failure.reason) == (code, reason), failure
    assert failure.domain == "schedulerhost.v1", failure


async def set_install(
    stubs: Stubs,
    handle: InstallHandle,
    *,
    enabled: bool = True,
    capabilities: tuple[str, ...] = (CAPABILITY,),
) -> None:
    """Re-register an existing install (same tenant and version) with other state or rights."""
    await stubs.admin.UpsertInstall(
        admin_pb.UpsertInstallRequest(
            install=install_message(
                handle.install_id,
                tenant_id=handle.tenant_id,
                version_id=handle.version_id,
                enabled=enabled,
                capabilities=capabilities,
            )
        ),
        metadata=admin_metadata(),
    )


async def create(stubs: Stubs, md: Metadata, **fields: Any) -> schedule_pb2.Schedule:
    reply = await stubs.host.CreateSchedule(create_request(**fields), metadata=md)
    return reply.schedule


# --- 1. token --------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", HOST_RPCS)
async def test_no_metadata_is_missing_credentials(stubs: Stubs, rpc: str) -> None:
    failure = await rpc_failure(HOST_CALLS[rpc](stubs, ()))
    assert_failure(failure, UNAUTHENTICATED, "MISSING_CREDENTIALS")


@pytest.mark.parametrize("rpc", HOST_RPCS)
async def test_install_id_without_token_is_missing_credentials(
    stubs: Stubs, install: InstallHandle, rpc: str
) -> None:
    failure = await rpc_failure(HOST_CALLS[rpc](stubs, (("x-install-id", install.install_id),)))
    assert_failure(failure, UNAUTHENTICATED, "MISSING_CREDENTIALS")


@pytest.mark.parametrize("rpc", HOST_RPCS)
async def test_wrong_token_is_invalid_token(stubs: Stubs, install: InstallHandle, rpc: str) -> None:
    failure = await rpc_failure(
        HOST_CALLS[rpc](stubs, runner_md(install.install_id, "not-the-runner-token"))
    )
    assert_failure(failure, UNAUTHENTICATED, "INVALID_TOKEN")


@pytest.mark.parametrize(
    "token",
    [
        RUNNER_TOKEN + "x",
        RUNNER_TOKEN[:-1],
        RUNNER_TOKEN.upper(),
        f"Bearer {RUNNER_TOKEN}",
        f"{RUNNER_TOKEN},{SECOND_RUNNER_TOKEN}",
    ],
    ids=["suffix", "prefix", "case", "bearer-prefixed", "both-joined"],
)
async def test_near_miss_tokens_are_invalid(
    stubs: Stubs, install: InstallHandle, token: str
) -> None:
    failure = await rpc_failure(
        stubs.host.ListSchedules(
            pb.ListSchedulesRequest(), metadata=runner_md(install.install_id, token)
        )
    )
    assert_failure(failure, UNAUTHENTICATED, "INVALID_TOKEN")


async def test_both_runner_tokens_are_accepted_for_rotation(
    stubs: Stubs, install: InstallHandle
) -> None:
    first = await create(stubs, runner_md(install.install_id, RUNNER_TOKEN), name="by-first")
    second = await create(
        stubs, runner_md(install.install_id, SECOND_RUNNER_TOKEN), name="by-second"
    )
    # Either token sees the same install: the token authenticates the Runner, not the install.
    for token in (RUNNER_TOKEN, SECOND_RUNNER_TOKEN):
        listed = await stubs.host.ListSchedules(
            pb.ListSchedulesRequest(), metadata=runner_md(install.install_id, token)
        )
        assert {s.id for s in listed.schedules} == {first.id, second.id}
    got = await stubs.host.GetSchedule(
        pb.GetScheduleRequest(id=first.id),
        metadata=runner_md(install.install_id, SECOND_RUNNER_TOKEN),
    )
    assert got.schedule.name == "by-first"


@pytest.mark.parametrize("rpc", HOST_RPCS)
async def test_admin_token_is_not_a_runner_token(
    stubs: Stubs, install: InstallHandle, rpc: str
) -> None:
    failure = await rpc_failure(HOST_CALLS[rpc](stubs, runner_md(install.install_id, ADMIN_TOKEN)))
    assert_failure(failure, UNAUTHENTICATED, "INVALID_TOKEN")


async def test_admin_bearer_header_does_not_authenticate_a_runner_call(
    stubs: Stubs, install: InstallHandle
) -> None:
    md = (*admin_metadata(), ("x-install-id", install.install_id))
    failure = await rpc_failure(stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=md))
    assert_failure(failure, UNAUTHENTICATED, "MISSING_CREDENTIALS")


# --- SchedulerAdmin: authorization: Bearer <admin token> -------------------------------------


@pytest.mark.parametrize("rpc", ADMIN_RPCS)
@pytest.mark.parametrize("token", [RUNNER_TOKEN, SECOND_RUNNER_TOKEN], ids=["runner1", "runner2"])
async def test_runner_token_is_not_an_admin_token(stubs: Stubs, rpc: str, token: str) -> None:
    failure = await rpc_failure(ADMIN_CALLS[rpc](stubs, admin_metadata(token)))
    assert_failure(failure, UNAUTHENTICATED, "INVALID_TOKEN")


async def test_runner_metadata_does_not_authenticate_an_admin_call(
    stubs: Stubs, install: InstallHandle
) -> None:
    failure = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=install.install_id),
            metadata=runner_md(install.install_id),
        )
    )
    assert_failure(failure, UNAUTHENTICATED, "MISSING_CREDENTIALS")


async def test_upsert_with_a_runner_token_changes_nothing(stubs: Stubs) -> None:
    msg = install_message()
    failure = await rpc_failure(
        stubs.admin.UpsertInstall(
            admin_pb.UpsertInstallRequest(install=msg), metadata=admin_metadata(RUNNER_TOKEN)
        )
    )
    assert failure.code == UNAUTHENTICATED
    missing = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=msg.install_id), metadata=admin_metadata()
        )
    )
    assert_failure(missing, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")


@pytest.mark.parametrize("rpc", ADMIN_RPCS)
async def test_admin_without_authorization_is_missing_credentials(stubs: Stubs, rpc: str) -> None:
    failure = await rpc_failure(ADMIN_CALLS[rpc](stubs, ()))
    assert_failure(failure, UNAUTHENTICATED, "MISSING_CREDENTIALS")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong-admin-token",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        "Bearer ",
        "Bearer",
        ADMIN_TOKEN,  # the token without the scheme
        f"Basic {ADMIN_TOKEN}",
        f"Token {ADMIN_TOKEN}",
    ],
    ids=["wrong", "suffix", "prefix", "empty", "scheme-only", "no-scheme", "basic", "token"],
)
async def test_admin_with_a_wrong_authorization_is_unauthenticated(
    stubs: Stubs, authorization: str
) -> None:
    failure = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=str(uuid.uuid4())),
            metadata=(("authorization", authorization),),
        )
    )
    assert failure.code == UNAUTHENTICATED, failure
    assert failure.reason in {"MISSING_CREDENTIALS", "INVALID_TOKEN"}, failure


async def test_admin_token_works_on_admin(stubs: Stubs) -> None:
    failure = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=str(uuid.uuid4())), metadata=admin_metadata()
        )
    )
    # Past authentication: the answer is about the (unknown) install.
    assert_failure(failure, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")


async def test_admin_checks_the_token_before_the_request(stubs: Stubs) -> None:
    failure = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id="not-a-uuid"), metadata=admin_metadata("wrong")
        )
    )
    assert_failure(failure, UNAUTHENTICATED, "INVALID_TOKEN")


# --- 2. x-install-id well-formed -------------------------------------------------------------


@pytest.mark.parametrize("rpc", HOST_RPCS)
async def test_missing_install_id_is_a_validation_failure(stubs: Stubs, rpc: str) -> None:
    failure = await rpc_failure(HOST_CALLS[rpc](stubs, (("x-runner-auth", RUNNER_TOKEN),)))
    assert_failure(failure, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert INSTALL_ID_FIELD in failure.violations, failure


@pytest.mark.parametrize(
    "raw",
    ["", "not-a-uuid", "12345", "0" * 31, str(uuid.uuid4())[:-1], str(uuid.uuid4()) + "-x"],
    ids=["empty", "word", "number", "short-hex", "truncated", "suffixed"],
)
async def test_malformed_install_id_is_a_validation_failure(stubs: Stubs, raw: str) -> None:
    failure = await rpc_failure(
        stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=runner_md(raw))
    )
    assert_failure(failure, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert INSTALL_ID_FIELD in failure.violations, failure


@pytest.mark.parametrize("rpc", HOST_RPCS)
async def test_malformed_install_id_on_every_rpc(stubs: Stubs, rpc: str) -> None:
    failure = await rpc_failure(HOST_CALLS[rpc](stubs, runner_md("not-a-uuid")))
    assert_failure(failure, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert INSTALL_ID_FIELD in failure.violations, failure


async def test_upper_case_install_id_names_the_same_install(
    stubs: Stubs, install: InstallHandle
) -> None:
    # RFC 9562: hex digits are case-insensitive on input.
    created = await create(stubs, install.metadata)
    listed = await stubs.host.ListSchedules(
        pb.ListSchedulesRequest(), metadata=runner_md(install.install_id.upper())
    )
    assert [s.id for s in listed.schedules] == [created.id]


# --- 3..5. install exists, enabled, capability -----------------------------------------------


@pytest.mark.parametrize("rpc", HOST_RPCS)
async def test_unknown_install_is_not_found(stubs: Stubs, rpc: str) -> None:
    failure = await rpc_failure(HOST_CALLS[rpc](stubs, runner_md(str(uuid.uuid4()))))
    assert_failure(failure, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")


@pytest.mark.parametrize("rpc", HOST_RPCS)
async def test_disabled_install_is_failed_precondition(stubs: Stubs, rpc: str) -> None:
    disabled = await register_install(stubs.admin, enabled=False)
    failure = await rpc_failure(HOST_CALLS[rpc](stubs, disabled.metadata))
    assert_failure(failure, grpc.StatusCode.FAILED_PRECONDITION, "INSTALL_DISABLED")


@pytest.mark.parametrize("rpc", HOST_RPCS)
@pytest.mark.parametrize(
    "capabilities",
    [(), ("cap:other",), ("cap:scheduler.read", "cap:scheduler.manage.extra")],
    ids=["none", "other", "near-miss"],
)
async def test_missing_capability_is_permission_denied(
    stubs: Stubs, rpc: str, capabilities: tuple[str, ...]
) -> None:
    handle = await register_install(stubs.admin, capabilities=capabilities)
    failure = await rpc_failure(HOST_CALLS[rpc](stubs, handle.metadata))
    assert_failure(failure, grpc.StatusCode.PERMISSION_DENIED, "CAPABILITY_NOT_GRANTED")


# --- precedence ------------------------------------------------------------------------------


async def test_wrong_token_wins_over_a_malformed_install_id(stubs: Stubs) -> None:
    failure = await rpc_failure(
        stubs.host.CreateSchedule(bad_cron_request(), metadata=runner_md("not-a-uuid", "wrong"))
    )
    assert_failure(failure, UNAUTHENTICATED, "INVALID_TOKEN")
    missing = await rpc_failure(
        stubs.host.CreateSchedule(bad_cron_request(), metadata=(("x-install-id", "not-a-uuid"),))
    )
    assert_failure(missing, UNAUTHENTICATED, "MISSING_CREDENTIALS")


async def test_wrong_token_wins_over_install_state(stubs: Stubs) -> None:
    unknown = runner_md(str(uuid.uuid4()), "wrong")
    disabled = await register_install(stubs.admin, enabled=False, capabilities=())
    for md in (unknown, runner_md(disabled.install_id, "wrong")):
        failure = await rpc_failure(stubs.host.CreateSchedule(bad_cron_request(), metadata=md))
        assert_failure(failure, UNAUTHENTICATED, "INVALID_TOKEN")


async def test_malformed_install_id_is_reported_alone(stubs: Stubs) -> None:
    """The install id is checked before the request: the request's own faults are not listed."""
    failure = await rpc_failure(
        stubs.host.CreateSchedule(bad_cron_request(), metadata=runner_md("not-a-uuid"))
    )
    assert_failure(failure, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert set(failure.violations) == {INSTALL_ID_FIELD}, failure


async def test_unknown_install_wins_over_validation(stubs: Stubs) -> None:
    failure = await rpc_failure(
        stubs.host.CreateSchedule(bad_cron_request(), metadata=runner_md(str(uuid.uuid4())))
    )
    assert_failure(failure, grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")


async def test_disabled_install_wins_over_validation(stubs: Stubs) -> None:
    disabled = await register_install(stubs.admin, enabled=False)
    failure = await rpc_failure(
        stubs.host.CreateSchedule(bad_cron_request(), metadata=disabled.metadata)
    )
    assert_failure(failure, grpc.StatusCode.FAILED_PRECONDITION, "INSTALL_DISABLED")
    assert not failure.violations


async def test_disabled_wins_over_missing_capability(stubs: Stubs) -> None:
    handle = await register_install(stubs.admin, enabled=False, capabilities=())
    failure = await rpc_failure(
        stubs.host.CreateSchedule(bad_cron_request(), metadata=handle.metadata)
    )
    assert_failure(failure, grpc.StatusCode.FAILED_PRECONDITION, "INSTALL_DISABLED")


async def test_missing_capability_wins_over_validation(stubs: Stubs) -> None:
    handle = await register_install(stubs.admin, capabilities=())
    failure = await rpc_failure(
        stubs.host.CreateSchedule(bad_cron_request(), metadata=handle.metadata)
    )
    assert_failure(failure, grpc.StatusCode.PERMISSION_DENIED, "CAPABILITY_NOT_GRANTED")
    assert not failure.violations


@pytest.mark.parametrize(
    ("enabled", "capabilities", "code", "reason"),
    [
        (False, (CAPABILITY,), grpc.StatusCode.FAILED_PRECONDITION, "INSTALL_DISABLED"),
        (True, (), grpc.StatusCode.PERMISSION_DENIED, "CAPABILITY_NOT_GRANTED"),
        (False, (), grpc.StatusCode.FAILED_PRECONDITION, "INSTALL_DISABLED"),
    ],
    ids=["disabled", "no-capability", "disabled-and-no-capability"],
)
async def test_refused_install_reads_no_schedule_data(
    stubs: Stubs,
    install: InstallHandle,
    enabled: bool,
    capabilities: tuple[str, ...],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    """Another install's schedule id, or one that never existed: the answer is the auth error."""
    owned = await create(stubs, install.metadata, name="secret-schedule-name", cron="17 3 * * *")
    caller = await register_install(stubs.admin, enabled=enabled, capabilities=capabilities)
    for schedule_id in (owned.id, str(uuid.uuid4())):
        calls: list[Awaitable[Any]] = [
            stubs.host.GetSchedule(pb.GetScheduleRequest(id=schedule_id), metadata=caller.metadata),
            stubs.host.UpdateSchedule(
                pb.UpdateScheduleRequest(
                    schedule=schedule_pb2.Schedule(id=schedule_id, name="hijacked"),
                    update_mask=field_mask_pb2.FieldMask(paths=["name"]),
                ),
                metadata=caller.metadata,
            ),
            stubs.host.DeleteSchedule(
                pb.DeleteScheduleRequest(id=schedule_id), metadata=caller.metadata
            ),
            stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=caller.metadata),
        ]
        for call in calls:
            failure = await rpc_failure(call)
            assert_failure(failure, code, reason)
            assert failure.resource is None, failure  # no ResourceInfo naming a schedule
            assert "secret-schedule-name" not in failure.message
            assert "17 3" not in failure.message
    # Nothing was changed either.
    after = await stubs.host.GetSchedule(
        pb.GetScheduleRequest(id=owned.id), metadata=install.metadata
    )
    assert after.schedule == owned


async def test_foreign_schedule_is_not_found_like_a_missing_one(
    stubs: Stubs, install: InstallHandle, other_install: InstallHandle
) -> None:
    owned = await create(stubs, install.metadata)
    foreign = await rpc_failure(
        stubs.host.GetSchedule(pb.GetScheduleRequest(id=owned.id), metadata=other_install.metadata)
    )
    missing = await rpc_failure(
        stubs.host.GetSchedule(
            pb.GetScheduleRequest(id=str(uuid.uuid4())), metadata=other_install.metadata
        )
    )
    assert_failure(foreign, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
    assert_failure(missing, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
    assert foreign.detail_types == missing.detail_types


# --- tenant and install scope ----------------------------------------------------------------


async def test_tenant_and_scope_come_from_the_install(stubs: Stubs) -> None:
    a = await register_install(stubs.admin)
    same_tenant = await register_install(stubs.admin, tenant_id=a.tenant_id)
    other_tenant = await register_install(stubs.admin)
    created = await create(stubs, a.metadata, name="only-a")
    listed_a = await stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=a.metadata)
    assert [s.id for s in listed_a.schedules] == [created.id]
    assert listed_a.total_size == 1
    for handle in (same_tenant, other_tenant):
        # Metadata a caller might try to pick a tenant with is ignored.
        md = (
            *handle.metadata,
            ("x-tenant-id", a.tenant_id),
            ("x-alga-tenant", a.tenant_id),
            ("tenant-id", a.tenant_id),
        )
        listed = await stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=md)
        assert list(listed.schedules) == []
        assert listed.total_size == 0
        failure = await rpc_failure(
            stubs.host.GetSchedule(pb.GetScheduleRequest(id=created.id), metadata=md)
        )
        assert_failure(failure, grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")
    # The same name is free in another install, even of the same tenant.
    await create(stubs, same_tenant.metadata, name="only-a")


# --- admin changes take effect ---------------------------------------------------------------


async def test_admin_changes_are_visible_at_once_without_cache(
    stubs: Stubs, install: InstallHandle
) -> None:
    """The conftest server runs with install_cache_seconds=0."""
    list_call = HOST_CALLS["ListSchedules"]
    await list_call(stubs, install.metadata)
    await set_install(stubs, install, enabled=False)
    assert_failure(
        await rpc_failure(list_call(stubs, install.metadata)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSTALL_DISABLED",
    )
    await set_install(stubs, install, enabled=True, capabilities=())
    assert_failure(
        await rpc_failure(list_call(stubs, install.metadata)),
        grpc.StatusCode.PERMISSION_DENIED,
        "CAPABILITY_NOT_GRANTED",
    )
    await set_install(stubs, install)
    await list_call(stubs, install.metadata)
    await stubs.admin.DeleteInstall(
        admin_pb.DeleteInstallRequest(install_id=install.install_id), metadata=admin_metadata()
    )
    assert_failure(
        await rpc_failure(list_call(stubs, install.metadata)),
        grpc.StatusCode.NOT_FOUND,
        "INSTALL_NOT_FOUND",
    )


CACHE_SECONDS = 1.0
# An admin change made through another process must show within install_cache_seconds (1.0 s);
# 0.5 s more for the calls themselves on a loaded machine.
VISIBILITY_BOUND = CACHE_SECONDS + 0.5


@pytest.fixture(scope="module")
async def cached_stubs(app: Application) -> AsyncIterator[Stubs]:
    """A second server on the same database that caches install contexts for 1 s."""
    second = await start_application(
        e2e_settings(app.database_url, install_cache_seconds=CACHE_SECONDS), migrate=True
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            yield Stubs(channel)
    finally:
        await second.stop()


async def outcome(call: Awaitable[Any]) -> str:
    """ "OK", or the ErrorInfo reason the call failed with."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return failure_of(error).reason or error.code().name
    return "OK"


async def wait_for_outcome(
    stubs: Stubs, md: Metadata, expected: str, bound: float
) -> tuple[float, str]:
    """Poll ListSchedules until it answers `expected` or `bound` seconds have passed."""
    started = time.monotonic()
    seen = ""
    while time.monotonic() - started <= bound:
        seen = await outcome(stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=md))
        if seen == expected:
            return time.monotonic() - started, seen
        await asyncio.sleep(0.05)
    return time.monotonic() - started, seen


async def test_admin_change_on_one_server_is_visible_on_another_within_the_cache_bound(
    stubs: Stubs, cached_stubs: Stubs, install: InstallHandle
) -> None:
    # Warm the second server's cache with the enabled install.
    assert (
        await outcome(
            cached_stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=install.metadata)
        )
        == "OK"
    )

    await set_install(stubs, install, enabled=False)  # through the FIRST server
    elapsed, seen = await wait_for_outcome(
        cached_stubs, install.metadata, "INSTALL_DISABLED", VISIBILITY_BOUND
    )
    assert seen == "INSTALL_DISABLED", f"still {seen} after {elapsed:.2f} s"

    await set_install(stubs, install, enabled=True, capabilities=())
    elapsed, seen = await wait_for_outcome(
        cached_stubs, install.metadata, "CAPABILITY_NOT_GRANTED", VISIBILITY_BOUND
    )
    assert seen == "CAPABILITY_NOT_GRANTED", f"still {seen} after {elapsed:.2f} s"

    await set_install(stubs, install)
    elapsed, seen = await wait_for_outcome(cached_stubs, install.metadata, "OK", VISIBILITY_BOUND)
    assert seen == "OK", f"still {seen} after {elapsed:.2f} s"


async def test_new_install_on_one_server_is_visible_on_another_within_the_cache_bound(
    stubs: Stubs, cached_stubs: Stubs
) -> None:
    msg = install_message()
    md = runner_md(msg.install_id)
    # The second server learns (and may cache) that the install does not exist.
    assert (
        await outcome(cached_stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=md))
        == "INSTALL_NOT_FOUND"
    )
    await stubs.admin.UpsertInstall(
        admin_pb.UpsertInstallRequest(install=msg), metadata=admin_metadata()
    )
    elapsed, seen = await wait_for_outcome(cached_stubs, md, "OK", VISIBILITY_BOUND)
    assert seen == "OK", f"still {seen} after {elapsed:.2f} s"

    await stubs.admin.DeleteInstall(
        admin_pb.DeleteInstallRequest(install_id=msg.install_id), metadata=admin_metadata()
    )
    elapsed, seen = await wait_for_outcome(cached_stubs, md, "INSTALL_NOT_FOUND", VISIBILITY_BOUND)
    assert seen == "INSTALL_NOT_FOUND", f"still {seen} after {elapsed:.2f} s"


async def test_admin_change_through_the_caching_server_is_visible_there_at_once(
    cached_stubs: Stubs,
) -> None:
    handle = await register_install(cached_stubs.admin)
    assert await outcome(HOST_CALLS["ListSchedules"](cached_stubs, handle.metadata)) == "OK"
    await set_install(cached_stubs, handle, enabled=False)
    assert await outcome(HOST_CALLS["ListSchedules"](cached_stubs, handle.metadata)) == (
        "INSTALL_DISABLED"
    )


# --- the rate limit sits after auth and before quota and validation --------------------------

RATE_LIMIT = 10
QUOTA = 2


@pytest.fixture(scope="module")
async def limited_stubs(app: Application) -> AsyncIterator[Stubs]:
    """A server with the default rate limit (10 a minute) and a quota of 2 schedules."""
    limited = await start_application(
        e2e_settings(
            app.database_url, rate_limit_per_minute=RATE_LIMIT, max_schedules_per_install=QUOTA
        ),
        migrate=True,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.port}") as channel:
            yield Stubs(channel)
    finally:
        await limited.stop()


async def test_calls_refused_by_auth_do_not_count_against_the_rate_limit(
    limited_stubs: Stubs,
) -> None:
    s = limited_stubs
    handle = await register_install(s.admin, enabled=False)
    for md in (runner_md(handle.install_id, "wrong"), handle.metadata):
        for _ in range(RATE_LIMIT + 2):
            failure = await rpc_failure(s.host.CreateSchedule(create_request(), metadata=md))
            assert failure.reason in {"INVALID_TOKEN", "INSTALL_DISABLED"}, failure
    await set_install(s, handle, capabilities=())
    for _ in range(RATE_LIMIT + 2):
        failure = await rpc_failure(
            s.host.CreateSchedule(create_request(), metadata=handle.metadata)
        )
        assert_failure(failure, grpc.StatusCode.PERMISSION_DENIED, "CAPABILITY_NOT_GRANTED")
    await set_install(s, handle)
    # The full budget is still there: refusals before the limiter were not counted.
    created = await create(s, handle.metadata)
    for _ in range(RATE_LIMIT - 1):
        await s.host.UpdateSchedule(
            pb.UpdateScheduleRequest(
                schedule=schedule_pb2.Schedule(id=created.id, cron="30 * * * *"),
                update_mask=field_mask_pb2.FieldMask(paths=["cron"]),
            ),
            metadata=handle.metadata,
        )
    limited = await rpc_failure(
        s.host.DeleteSchedule(pb.DeleteScheduleRequest(id=created.id), metadata=handle.metadata)
    )
    assert_failure(limited, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")


async def test_rate_limit_answers_before_quota_and_validation(limited_stubs: Stubs) -> None:
    s = limited_stubs
    handle = await register_install(s.admin)
    md = handle.metadata
    first = await create(s, md)
    for _ in range(QUOTA - 1):
        await create(s, md)
    counted = QUOTA
    quota = await rpc_failure(s.host.CreateSchedule(create_request(), metadata=md))
    assert_failure(quota, grpc.StatusCode.RESOURCE_EXHAUSTED, "SCHEDULE_QUOTA_EXCEEDED")
    assert quota.quota_subjects, quota
    counted += 1
    bad_update = pb.UpdateScheduleRequest(
        schedule=schedule_pb2.Schedule(id=first.id, cron="not a cron"),
        update_mask=field_mask_pb2.FieldMask(paths=["cron"]),
    )
    while counted < RATE_LIMIT:
        invalid = await rpc_failure(s.host.UpdateSchedule(bad_update, metadata=md))
        assert_failure(invalid, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
        counted += 1
    # The budget is spent: the limiter answers before the quota and before validation.
    for call in (
        s.host.CreateSchedule(create_request(), metadata=md),
        s.host.UpdateSchedule(bad_update, metadata=md),
        s.host.DeleteSchedule(pb.DeleteScheduleRequest(id="not-a-uuid"), metadata=md),
    ):
        limited = await rpc_failure(call)
        assert_failure(limited, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert limited.retry_delay_seconds is not None
        assert 0 < limited.retry_delay_seconds <= 60
    # Reads are not limited.
    for _ in range(RATE_LIMIT + 2):
        listed = await s.host.ListSchedules(pb.ListSchedulesRequest(), metadata=md)
        assert listed.total_size == QUOTA
    # Another install has its own budget.
    other = await register_install(s.admin)
    await create(s, other.metadata)
