"""The client's exception tree: every failed call raises exactly one of these.

Built from the call's `google.rpc.Status` (trailer `grpc-status-details-bin`, read with
grpcio-status): the gRPC code picks the class, `ErrorInfo` gives `reason` and `domain`, `BadRequest`
the field violations, `RetryInfo` the retry delay, `QuotaFailure` and `ResourceInfo` the rest.

    SchedulerHostError              (never raised itself; catch it to catch everything)
    ├── Unauthenticated             UNAUTHENTICATED      MISSING_CREDENTIALS | INVALID_TOKEN
    ├── InvalidArgument             INVALID_ARGUMENT     VALIDATION_FAILED (+ field_violations)
    │                                                    | MALFORMED_REQUEST
    │   (alias ValidationFailed)
    ├── NotFound                    NOT_FOUND            INSTALL_NOT_FOUND | SCHEDULE_NOT_FOUND
    ├── PermissionDenied            PERMISSION_DENIED    CAPABILITY_NOT_GRANTED
    ├── FailedPrecondition          FAILED_PRECONDITION  INSTALL_DISABLED | SCHEDULE_REMAP_FAILED
    ├── AlreadyExists               ALREADY_EXISTS       SCHEDULE_NAME_IN_USE
    ├── ResourceExhausted           RESOURCE_EXHAUSTED   (request over the size limit, no reason)
    │   ├── QuotaExceeded           RESOURCE_EXHAUSTED   SCHEDULE_QUOTA_EXCEEDED (+ quota_subjects)
    │   └── RateLimited             RESOURCE_EXHAUSTED   RATE_LIMITED (+ retry_delay)
    ├── Aborted                     ABORTED              ETAG_MISMATCH
    │   (alias EtagMismatch)
    ├── Unavailable                 UNAVAILABLE          DATABASE_UNAVAILABLE | SHUTTING_DOWN
    │                                                    | (transport: no reason)
    ├── DeadlineExceeded            DEADLINE_EXCEEDED    (the call's timeout ran out)
    └── InternalError               INTERNAL and every other code (UNKNOWN, UNIMPLEMENTED, ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

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

ERROR_DOMAIN = "schedulerhost.v1"


@dataclass(frozen=True)
class FieldViolation:
    """One rejected field of a request: `field` as the server names it (e.g. `schedule.cron`),
    `reason` a code for programs (e.g. `CRON_TOO_FREQUENT`), `description` for people."""

    field: str
    reason: str
    description: str


class SchedulerHostError(Exception):
    """A failed call. `code` and `reason` are for programs, `message` is for people.

    Attributes (empty or None when the server did not send the detail):
      code              the gRPC status code
      reason            `ErrorInfo.reason`, e.g. `SCHEDULE_NOT_FOUND`; empty for transport errors
      domain            `ErrorInfo.domain`, `schedulerhost.v1` for the server's own errors
      message           the status message
      field_violations  field -> FieldViolation, from `BadRequest` (all fields of the request)
      retry_delay       from `RetryInfo`: how long to wait before the call can succeed
      quota_subjects    from `QuotaFailure`, e.g. `install:<uuid>`
      resource_type, resource_name   from `ResourceInfo`, e.g. `schedule` and its id
      metadata          `ErrorInfo.metadata`
    """

    #: Whether repeating the same call later may succeed (after `retry_delay` when it is set).
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        field_violations: dict[str, FieldViolation] | None = None,
        retry_delay: timedelta | None = None,
        quota_subjects: tuple[str, ...] = (),
        resource_type: str = "",
        resource_name: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.field_violations: dict[str, FieldViolation] = dict(field_violations or {})
        self.retry_delay = retry_delay
        self.quota_subjects = quota_subjects
        self.resource_type = resource_type
        self.resource_name = resource_name
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        head = f"{self.code.name}" + (f" {self.reason}" if self.reason else "")
        text = f"{head}: {self.message}" if self.message else head
        if self.field_violations:
            fields = ", ".join(f"{f}={v.reason}" for f, v in self.field_violations.items())
            text += f" [{fields}]"
        if self.retry_delay is not None:
            text += f" (retry in {self.retry_delay.total_seconds():g} s)"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class Unauthenticated(SchedulerHostError):
    """The token is missing or not accepted (`MISSING_CREDENTIALS`, `INVALID_TOKEN`)."""


class InvalidArgument(SchedulerHostError):
    """The request is invalid; `field_violations` names every bad field (`VALIDATION_FAILED`),
    or the request bytes did not decode (`MALFORMED_REQUEST`)."""


#: The same class: every INVALID_ARGUMENT of the server is a validation failure of the request.
ValidationFailed = InvalidArgument


class NotFound(SchedulerHostError):
    """The install or schedule does not exist, or belongs to another install."""


class PermissionDenied(SchedulerHostError):
    """The install was not granted `cap:scheduler.manage` (`CAPABILITY_NOT_GRANTED`)."""


class FailedPrecondition(SchedulerHostError):
    """The install is disabled (`INSTALL_DISABLED`), or an upgrade would orphan schedules
    (`SCHEDULE_REMAP_FAILED`)."""


class AlreadyExists(SchedulerHostError):
    """Another schedule of the install has this name (`SCHEDULE_NAME_IN_USE`)."""


class ResourceExhausted(SchedulerHostError):
    """A limit was hit. Raised itself for a request over the server's size limit."""


class QuotaExceeded(ResourceExhausted):
    """The install has the maximum number of schedules (`SCHEDULE_QUOTA_EXCEEDED`)."""


class RateLimited(ResourceExhausted):
    """Too many changes per install per minute (`RATE_LIMITED`); wait `retry_delay`."""

    retryable = True


class Aborted(SchedulerHostError):
    """The etag sent is no longer current (`ETAG_MISMATCH`): read again, then decide."""


#: The same class: the server answers ABORTED only for a stale etag.
EtagMismatch = Aborted


class Unavailable(SchedulerHostError):
    """The server or its database cannot be reached, or the server is shutting down."""

    retryable = True


class DeadlineExceeded(SchedulerHostError):
    """The call's timeout ran out; a change may or may not have been applied."""

    retryable = True


class InternalError(SchedulerHostError):
    """The server failed (`INTERNAL`), or answered with a code this client does not expect."""


_BY_CODE: dict[grpc.StatusCode, type[SchedulerHostError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

_BY_REASON: dict[tuple[grpc.StatusCode, str], type[SchedulerHostError]] = {
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "SCHEDULE_QUOTA_EXCEEDED"): QuotaExceeded,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"): RateLimited,
}


def _unpack(detail: Any, message_type: type[Any]) -> Any | None:
    if not detail.Is(message_type.DESCRIPTOR):
        return None
    out = message_type()
    detail.Unpack(out)
    return out


def _status_of(error: grpc.RpcError) -> Any | None:
    """The google.rpc.Status of a failed call, or None when the server sent none."""
    try:
        return rpc_status.from_call(error)
    except (ValueError, AttributeError, TypeError):
        # A status whose code disagrees with the call's, or an error without trailers.
        return None


def error_from_rpc(error: grpc.RpcError) -> SchedulerHostError:
    """The exception for a failed call of a grpc (or grpc.aio) stub."""
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = details_of() if callable(details_of) else ""
    fields: dict[str, Any] = {}
    violations: dict[str, FieldViolation] = {}
    status = _status_of(error)
    for detail in status.details if status is not None else ():
        if (info := _unpack(detail, error_details_pb2.ErrorInfo)) is not None:
            fields.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        elif (bad := _unpack(detail, error_details_pb2.BadRequest)) is not None:
            for v in bad.field_violations:
                violations[v.field] = FieldViolation(v.field, v.reason, v.description)
        elif (retry := _unpack(detail, error_details_pb2.RetryInfo)) is not None:
            fields["retry_delay"] = retry.retry_delay.ToTimedelta()
        elif (quota := _unpack(detail, error_details_pb2.QuotaFailure)) is not None:
            fields["quota_subjects"] = tuple(v.subject for v in quota.violations)
        elif (res := _unpack(detail, error_details_pb2.ResourceInfo)) is not None:
            fields.update(resource_type=res.resource_type, resource_name=res.resource_name)
    reason = str(fields.get("reason", ""))
    cls = _BY_REASON.get((code, reason)) or _BY_CODE.get(code, InternalError)
    return cls(code, str(message or ""), field_violations=violations, **fields)
