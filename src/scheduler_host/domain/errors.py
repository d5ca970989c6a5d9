"""The error tree of scheduler-host: every failure a use case can report, as plain values.

Nothing here knows gRPC. `transport/status.py` is the one place that turns these into
`google.rpc.Status` codes and details; `reason` is the machine-readable code sent in `ErrorInfo`.

    SchedulerError
    ├── ValidationFailed        INVALID_ARGUMENT    VALIDATION_FAILED (+ BadRequest, per field)
    ├── MalformedRequest        INVALID_ARGUMENT    MALFORMED_REQUEST
    ├── Unauthenticated         UNAUTHENTICATED     MISSING_CREDENTIALS | INVALID_TOKEN
    ├── NotFound                NOT_FOUND           INSTALL_NOT_FOUND | SCHEDULE_NOT_FOUND
    ├── InstallDisabled         FAILED_PRECONDITION INSTALL_DISABLED
    ├── CapabilityNotGranted    PERMISSION_DENIED   CAPABILITY_NOT_GRANTED
    ├── NameInUse               ALREADY_EXISTS      SCHEDULE_NAME_IN_USE
    ├── QuotaExceeded           RESOURCE_EXHAUSTED  SCHEDULE_QUOTA_EXCEEDED (+ QuotaFailure)
    ├── RateLimited             RESOURCE_EXHAUSTED  RATE_LIMITED (+ RetryInfo)
    ├── EtagMismatch            ABORTED             ETAG_MISMATCH
    ├── RemapFailed             FAILED_PRECONDITION SCHEDULE_REMAP_FAILED
    ├── DatabaseUnavailable     UNAVAILABLE         DATABASE_UNAVAILABLE
    ├── ShuttingDown            UNAVAILABLE         SHUTTING_DOWN
    └── NotSupported            UNIMPLEMENTED       NOT_SUPPORTED
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

ERROR_DOMAIN = "schedulerhost.v1"


@dataclass(frozen=True)
class FieldViolation:
    """One rejected field: `field` as the caller named it, `reason` a code such as CRON_INVALID."""

    field: str
    reason: str
    description: str


class SchedulerError(Exception):
    """Base of every error a caller may see; `message` is for people, `reason` for programs."""

    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationFailed(SchedulerError):
    reason = "VALIDATION_FAILED"

    def __init__(self, violations: list[FieldViolation] | tuple[FieldViolation, ...]) -> None:
        self.violations = tuple(violations)
        problems = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {problems}" if problems else "invalid request")


class MalformedRequest(SchedulerError):
    reason = "MALFORMED_REQUEST"


class Unauthenticated(SchedulerError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # type: ignore[misc]  # one of two codes, chosen per instance


class NotFound(SchedulerError):
    resource_type: ClassVar[str] = ""

    def __init__(self, resource_name: str) -> None:
        super().__init__(f"{self.resource_type} {resource_name} not found")
        self.resource_name = resource_name


class InstallNotFound(NotFound):
    reason = "INSTALL_NOT_FOUND"
    resource_type = "install"


class ScheduleNotFound(NotFound):
    reason = "SCHEDULE_NOT_FOUND"
    resource_type = "schedule"


class InstallDisabled(SchedulerError):
    reason = "INSTALL_DISABLED"


class CapabilityNotGranted(SchedulerError):
    reason = "CAPABILITY_NOT_GRANTED"


class NameInUse(SchedulerError):
    reason = "SCHEDULE_NAME_IN_USE"


class QuotaExceeded(SchedulerError):
    reason = "SCHEDULE_QUOTA_EXCEEDED"

    def __init__(self, subject: str, limit: int) -> None:
        super().__init__(f"the install already has the maximum of {limit} schedules")
        self.subject = subject
        self.limit = limit


class RateLimited(SchedulerError):
    reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after: timedelta) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EtagMismatch(SchedulerError):
    reason = "ETAG_MISMATCH"


class RemapFailed(SchedulerError):
    reason = "SCHEDULE_REMAP_FAILED"

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            "the new version lacks endpoints used by schedules: " + ", ".join(sorted(missing))
        )
        self.missing = tuple(missing)


class DatabaseUnavailable(SchedulerError):
    reason = "DATABASE_UNAVAILABLE"

    def __init__(self, message: str = "the database is unavailable; retry later") -> None:
        super().__init__(message)


class ShuttingDown(SchedulerError):
    reason = "SHUTTING_DOWN"

    def __init__(self) -> None:
        super().__init__("the server is shutting down; retry on another instance")


class NotSupported(SchedulerError):
    reason = "NOT_SUPPORTED"
