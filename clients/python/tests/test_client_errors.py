"""How the client turns a failed call into its exception tree (code → class, details → fields)
and which failures its channel repeats."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from recording_server import RUNNER_TOKEN, RecordingServer, status
from schedulerhost.v1 import schedule_pb2, scheduler_host_pb2

from scheduler_host_client import SchedulerAdminClient, SchedulerHostClient, errors

INSTALL = "6f1c1a4e-8b0f-4f55-9d8e-1b2f3c4d5e6f"


def info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=errors.ERROR_DOMAIN, metadata=metadata)


async def failure(host: SchedulerHostClient) -> errors.SchedulerHostError:
    with pytest.raises(errors.SchedulerHostError) as raised:
        await host.get_endpoints()
    assert isinstance(raised.value.__cause__, grpc.aio.AioRpcError)
    return raised.value


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN", errors.Unauthenticated),
        (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", errors.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND", errors.NotFound),
        (grpc.StatusCode.PERMISSION_DENIED, "CAPABILITY_NOT_GRANTED", errors.PermissionDenied),
        (grpc.StatusCode.FAILED_PRECONDITION, "INSTALL_DISABLED", errors.FailedPrecondition),
        (grpc.StatusCode.ALREADY_EXISTS, "SCHEDULE_NAME_IN_USE", errors.AlreadyExists),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "", errors.ResourceExhausted),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "SCHEDULE_QUOTA_EXCEEDED", errors.QuotaExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", errors.RateLimited),
        (grpc.StatusCode.ABORTED, "ETAG_MISMATCH", errors.Aborted),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", errors.DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, "INTERNAL", errors.InternalError),
        (grpc.StatusCode.UNIMPLEMENTED, "", errors.InternalError),
    ],
)
async def test_code_and_reason_pick_the_class(
    recorder: RecordingServer,
    host: SchedulerHostClient,
    code: grpc.StatusCode,
    reason: str,
    expected: type[errors.SchedulerHostError],
) -> None:
    details = (info(reason),) if reason else ()
    recorder.answer("SchedulerHost/GetEndpoints", status(code, "it failed", *details))
    error = await failure(host)
    assert type(error) is expected
    assert (error.code, error.reason, error.message) == (code, reason, "it failed")
    assert error.domain == (errors.ERROR_DOMAIN if reason else "")


async def test_every_field_violation_and_detail_is_read(
    recorder: RecordingServer, host: SchedulerHostClient
) -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="schedule.cron", reason="CRON_TOO_FREQUENT", description="every 4 minutes"
            ),
            error_details_pb2.BadRequest.FieldViolation(
                field="schedule.jitter", reason="JITTER_INVALID", description="too long"
            ),
        ]
    )
    recorder.answer(
        "SchedulerHost/GetEndpoints",
        status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "request is invalid",
            info("VALIDATION_FAILED", request_id="r-1"),
            bad,
            error_details_pb2.ResourceInfo(resource_type="schedule", resource_name="s-1"),
        ),
    )
    error = await failure(host)
    assert type(error) is errors.ValidationFailed
    assert error.metadata == {"request_id": "r-1"}
    assert error.field_violations == {
        "schedule.cron": errors.FieldViolation(
            "schedule.cron", "CRON_TOO_FREQUENT", "every 4 minutes"
        ),
        "schedule.jitter": errors.FieldViolation("schedule.jitter", "JITTER_INVALID", "too long"),
    }
    assert (error.resource_type, error.resource_name) == ("schedule", "s-1")
    assert str(error) == (
        "INVALID_ARGUMENT VALIDATION_FAILED: request is invalid "
        "[schedule.cron=CRON_TOO_FREQUENT, schedule.jitter=JITTER_INVALID]"
    )
    assert not error.retryable


async def test_quota_and_retry_details(
    recorder: RecordingServer, host: SchedulerHostClient
) -> None:
    recorder.answer(
        "SchedulerHost/GetEndpoints",
        status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            info("RATE_LIMITED"),
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=7, nanos=5)),
        ),
        status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "full",
            info("SCHEDULE_QUOTA_EXCEEDED"),
            error_details_pb2.QuotaFailure(
                violations=[error_details_pb2.QuotaFailure.Violation(subject=f"install:{INSTALL}")]
            ),
        ),
    )
    limited = await failure(host)
    assert isinstance(limited, errors.RateLimited)
    assert limited.retryable
    assert limited.retry_delay == timedelta(seconds=7, microseconds=0)
    assert "(retry in 7 s)" in str(limited)
    full = await failure(host)
    assert isinstance(full, errors.QuotaExceeded)
    assert not full.retryable
    assert full.quota_subjects == (f"install:{INSTALL}",)


async def test_unavailable_is_repeated_up_to_max_attempts(
    recorder: RecordingServer, host: SchedulerHostClient
) -> None:
    down = status(grpc.StatusCode.UNAVAILABLE, "database down", info("DATABASE_UNAVAILABLE"))
    recorder.answer(
        "SchedulerHost/GetEndpoints",
        down,
        down,
        scheduler_host_pb2.GetEndpointsResponse(endpoints=[schedule_pb2.Endpoint(id="e-1")]),
    )
    recorder.answer(
        "SchedulerHost/ListSchedules", down, down, status(grpc.StatusCode.UNAVAILABLE, "still")
    )
    assert [e.id for e in await host.get_endpoints()] == ["e-1"]  # the third attempt answered
    assert len(recorder.calls) == 3
    with pytest.raises(errors.Unavailable) as raised:
        await host.list_schedules()
    assert raised.value.retryable
    assert raised.value.message == "still"
    assert len(recorder.calls) == 6, "three attempts in all, then the error"


async def test_run_schedule_now_is_never_repeated(recorder: RecordingServer) -> None:
    recorder.answer(
        "SchedulerAdmin/RunScheduleNow", status(grpc.StatusCode.UNAVAILABLE, "shutting down")
    )
    async with SchedulerAdminClient(recorder.target, "admin-token", timeout=5) as admin:
        with pytest.raises(errors.Unavailable):
            await admin.run_schedule_now(INSTALL, "s-1")
    assert len(recorder.calls) == 1, "RunScheduleNow calls the Runner: one attempt only"


async def test_max_attempts_one_disables_repeats(recorder: RecordingServer) -> None:
    recorder.answer("SchedulerHost/GetEndpoints", status(grpc.StatusCode.UNAVAILABLE, "down"))
    async with SchedulerHostClient(
        recorder.target, RUNNER_TOKEN, INSTALL, timeout=5, max_attempts=1
    ) as host:
        with pytest.raises(errors.Unavailable):
            await host.get_endpoints()
    assert len(recorder.calls) == 1


async def test_a_call_timeout_overrides_the_client_default(
    recorder: RecordingServer, host: SchedulerHostClient
) -> None:
    await host.get_endpoints(timeout=60)
    await host.get_endpoints()
    generous, default = (c.time_remaining for c in recorder.calls)
    # The deadline travels as a grpc-timeout header: rounded, so compare loosely.
    assert generous is not None
    assert 30 < generous <= 61
    assert default is not None
    assert default <= 6
