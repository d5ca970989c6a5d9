"""scheduler-host-client: the async Python client of scheduler-host's gRPC API.

    from scheduler_host_client import SchedulerHostClient, new_schedule, errors

    async with SchedulerHostClient("127.0.0.1:50051", runner_token, install_id) as client:
        try:
            created = await client.create_schedule(
                new_schedule("POST /sync", "0 * * * *", timezone="Europe/Berlin", payload={"a": 1})
            )
        except errors.InvalidArgument as exc:
            print(exc.field_violations)        # {"schedule.cron": FieldViolation(...), ...}
        except errors.RateLimited as exc:
            print(exc.retry_delay)             # datetime.timedelta

Methods return the generated messages of `schedulerhost.v1` (`Schedule`, `Endpoint`, ...); every
failure raises one `errors.SchedulerHostError` subclass (see `scheduler_host_client.errors`).
Only grpcio, grpcio-status, protobuf, googleapis-common-protos and the generated `schedulerhost.v1`
modules (shipped in this distribution) are used.
"""

from __future__ import annotations

from scheduler_host_client import errors
from scheduler_host_client.admin import EndpointSpec, Install, SchedulerAdminClient
from scheduler_host_client.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    EtagMismatch,
    FailedPrecondition,
    FieldViolation,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ResourceExhausted,
    SchedulerHostError,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
)
from scheduler_host_client.host import (
    Endpoint,
    Schedule,
    SchedulerHostClient,
    ScheduleRun,
    new_schedule,
    schedule_payload,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "Endpoint",
    "EndpointSpec",
    "EtagMismatch",
    "FailedPrecondition",
    "FieldViolation",
    "Install",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "ResourceExhausted",
    "Schedule",
    "ScheduleRun",
    "SchedulerAdminClient",
    "SchedulerHostClient",
    "SchedulerHostError",
    "Unauthenticated",
    "Unavailable",
    "ValidationFailed",
    "errors",
    "new_schedule",
    "schedule_payload",
]
