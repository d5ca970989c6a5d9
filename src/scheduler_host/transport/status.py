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

# Messages and field descriptions quote the caller's values (an endpoint, every unknown update
# mask path), so a hostile request could make an error as large as the request. gRPC clients
# built on C-core refuse trailers over 8 KiB (the soft limit of grpc.max_metadata_size): the caller
# got RESOURCE_EXHAUSTED "Stream removed" instead of the error. These bounds keep grpc-message
# (percent-encoded) and grpc-status-details-bin (base64) together well below that.
MAX_MESSAGE_BYTES = 512
MAX_DESCRIPTION_BYTES = 160
MAX_VIOLATION_BYTES = 2_500


def _clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, marked with an ellipsis when cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "\u2026"


def _bounded_violations(
    violations: tuple[errors.FieldViolation, ...],
) -> tuple[list[error_details_pb2.BadRequest.FieldViolation], int]:
    """The violations that fit the budget, descriptions clipped; and how many were left out."""
    shown: list[error_details_pb2.BadRequest.FieldViolation] = []
    used = 0
    for v in violations:
        description = _clip(v.description, MAX_DESCRIPTION_BYTES)
        size = len(v.field.encode()) + len(v.reason) + len(description.encode())
        if shown and used + size > MAX_VIOLATION_BYTES:
            break
        used += size
        shown.append(
            error_details_pb2.BadRequest.FieldViolation(
                field=_clip(v.field, MAX_DESCRIPTION_BYTES),
                description=description,
                reason=v.reason,
            )
        )
    return shown, len(violations) - len(shown)


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
    message = _clip(error.message, MAX_MESSAGE_BYTES)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=errors.ERROR_DOMAIN, metadata=metadata or {}
            )
        )
    ]
    if isinstance(error, errors.ValidationFailed):
        shown, omitted = _bounded_violations(error.violations)
        if omitted:
            note = f" ({omitted} more field violations not shown)"
            message = _clip(error.message, MAX_MESSAGE_BYTES - len(note)) + note
        details.append(_pack(error_details_pb2.BadRequest(field_violations=shown)))
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
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def internal_status() -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=errors.ERROR_DOMAIN)
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE, details=[_pack(info)]
    )
