"""`scheduler_host.client`: the scheduler-host-client distribution (`scheduler_host_client`) under
the server package's name, so code written against the client that shipped inside the server
keeps working. The objects are the same: `scheduler_host.client.SchedulerHostClient is
scheduler_host_client.SchedulerHostClient`. New code may import `scheduler_host_client` directly.
"""

from __future__ import annotations

from scheduler_host.client import errors
from scheduler_host_client import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    Endpoint,
    EndpointSpec,
    EtagMismatch,
    FailedPrecondition,
    FieldViolation,
    Install,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ResourceExhausted,
    Schedule,
    SchedulerAdminClient,
    SchedulerHostClient,
    SchedulerHostError,
    ScheduleRun,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
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
