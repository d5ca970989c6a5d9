"""Domain errors → google.rpc.Status: the only place that knows gRPC codes and error details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from scheduler_host.domain import errors

_CODES: list[tuple[type[errors.SchedulerError], grpc.StatusCode]] = [
    (errors.ValidationFailed, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.MalformedRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InstallDisabled, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.CapabilityNotGranted, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NameInUse, grpc.StatusCode.ALREADY_EXISTS),
    (errors.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.EtagMismatch, grpc.StatusCode.ABORTED),
    (errors.RemapFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (errors.NotSupported, grpc.StatusCode.UNIMPLEMENTED),
]

INTERNAL_MESSAGE = "internal error; the failure was logged by the server"


def code_of(error: errors.SchedulerError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(
    error: errors.SchedulerError, metadata: dict[str, str] | None = None
) -> status_pb2.Status:
    code = code_of(error)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=errors.ERROR_DOMAIN, metadata=metadata or {}
            )
        )
    ]
    if isinstance(error, errors.ValidationFailed):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description, reason=v.reason
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    elif isinstance(error, errors.QuotaExceeded):
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=error.subject, description=error.message
                        )
                    ]
                )
            )
        )
    elif isinstance(error, errors.RateLimited):
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    elif isinstance(error, errors.NotFound):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource_type,
                    resource_name=error.resource_name,
                    description=error.message,
                )
            )
        )
    return status_pb2.Status(code=code.value[0], message=error.message, details=details)


def internal_status() -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=errors.ERROR_DOMAIN)
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE, details=[_pack(info)]
    )
