"""`scheduler_host.client.errors`: the client's exception tree, `scheduler_host_client.errors`."""

from __future__ import annotations

from scheduler_host_client.errors import (
    ERROR_DOMAIN,
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
    error_from_rpc,
)

__all__ = [
    "ERROR_DOMAIN",
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "EtagMismatch",
    "FailedPrecondition",
    "FieldViolation",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "ResourceExhausted",
    "SchedulerHostError",
    "Unauthenticated",
    "Unavailable",
    "ValidationFailed",
    "error_from_rpc",
]
