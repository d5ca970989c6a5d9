"""How a failed call ends an operator command: what it prints on stderr (the status, its reason
and every field violation) and the exit code, 64 + the gRPC status code, as grpcurl exits."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import grpc

from scheduler_host_client import errors

EXIT_FAILURE = 1  # anything that is not a failed call (e.g. an answered "no" to a confirmation)
EXIT_USAGE = 2  # a bad option, argument or input file; nothing was sent
GRPC_EXIT_BASE = 64

EXIT_CODES_HELP = """\b
Exit codes: 0 success; 1 other failure; 2 bad usage or input file (nothing was
sent); 64 + the gRPC status code when a call fails, as grpcurl exits:
  67 INVALID_ARGUMENT     68 DEADLINE_EXCEEDED     69 NOT_FOUND
  70 ALREADY_EXISTS       71 PERMISSION_DENIED     72 RESOURCE_EXHAUSTED
  73 FAILED_PRECONDITION  74 ABORTED               77 INTERNAL
  78 UNAVAILABLE (also: health not SERVING)        80 UNAUTHENTICATED
"""


def exit_code(code: grpc.StatusCode) -> int:
    return GRPC_EXIT_BASE + int(code.value[0])


def error_json(error: errors.SchedulerHostError) -> dict[str, Any]:
    """The error for scripts: the google.rpc.Status details the client read, by proto names."""
    out: dict[str, Any] = {"code": error.code.name, "message": error.message}
    if error.reason:
        out["reason"] = error.reason
    if error.domain:
        out["domain"] = error.domain
    if error.metadata:
        out["metadata"] = error.metadata
    if error.field_violations:
        out["fieldViolations"] = [
            {"field": v.field, "reason": v.reason, "description": v.description}
            for v in error.field_violations.values()
        ]
    if error.retry_delay is not None:
        out["retryDelaySeconds"] = error.retry_delay.total_seconds()
    if error.quota_subjects:
        out["quotaSubjects"] = list(error.quota_subjects)
    if error.resource_type or error.resource_name:
        out.update(resourceType=error.resource_type, resourceName=error.resource_name)
    out["exitCode"] = exit_code(error.code)
    return out


def error_lines(error: errors.SchedulerHostError) -> list[str]:
    """The error for people: the status on the first line, then one line per detail."""
    head = " ".join(filter(None, (error.code.name, error.reason)))
    lines = [f"scheduler-host: {head}" + (f": {error.message}" if error.message else "")]
    lines += [f"  {v.field}: {v.reason}: {v.description}" for v in error.field_violations.values()]
    if error.retry_delay is not None:
        lines.append(f"  retry in {error.retry_delay.total_seconds():g} s")
    lines += [f"  quota: {subject}" for subject in error.quota_subjects]
    if error.resource_type or error.resource_name:
        lines.append(f"  {error.resource_type or 'resource'}: {error.resource_name}")
    return lines


def report(error: errors.SchedulerHostError, output: str) -> int:
    """Prints the error on stderr (JSON when the output is JSON) and returns the exit code."""
    if output == "json":
        click.echo(json.dumps(error_json(error), indent=2, ensure_ascii=False), file=sys.stderr)
    else:
        for line in error_lines(error):
            click.echo(line, file=sys.stderr)
    return exit_code(error.code)
