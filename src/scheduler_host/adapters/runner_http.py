"""The Runner over HTTP: one `POST /v1/execute` per call (SPEC §7), its request built and its
answer judged here, so that the dispatcher deals only in calls and outcomes."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

from scheduler_host.adapters.http1 import Http1Pool, TransportError
from scheduler_host.domain.schedule import payload_json
from scheduler_host.service.ports import CallOutcome, RunnerCall

EXECUTE_PATH = "/v1/execute"
MAX_RESPONSE_BYTES = 256 * 1024
INVALID_RESPONSE = "invalid runner response"


def empty_body_error(http_status: int) -> str:
    return f"Runner returned empty body (http {http_status})"


def status_error(status: int) -> str:
    return f"Runner returned status {status}"


def non_json_error(http_status: int) -> str:
    return f"Runner returned non-JSON response (http {http_status})"


def oversize_error(http_status: int) -> str:
    return f"Runner response larger than {MAX_RESPONSE_BYTES} bytes (http {http_status})"


@dataclass(frozen=True)
class RunnerRequest:
    """One POST /v1/execute: the JSON body and the headers."""

    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class RunnerResponse:
    """What came back: an HTTP status and body, or the transport error that stopped the call."""

    http_status: int | None = None
    body: bytes = b""
    # The body was larger than the cap; `body` then holds only what was read.
    oversize: bool = False
    transport_error: str | None = None


def runner_request(call: RunnerCall) -> RunnerRequest:
    """The exact body and headers of SPEC §7 for one call of `POST /v1/execute`."""
    schedule, install = call.target.schedule, call.target.install
    http: dict[str, object] = {
        "method": schedule.endpoint_method,
        "path": schedule.endpoint_path,
        "query": {},
        "headers": {},
    }
    payload = payload_json(schedule.payload)
    if schedule.endpoint_method != "GET" and payload is not None:
        http["body_b64"] = base64.b64encode(payload.encode()).decode("ascii")
    body = {
        "context": {
            "request_id": call.request_id,
            "tenant_id": install.tenant_id,
            "extension_id": install.registry_id,
            "install_id": str(install.install_id),
            "version_id": install.version_id,
            "content_hash": install.content_hash,
            "config": {},
            "trigger": call.trigger.value,
            "schedule_id": str(schedule.id),
        },
        "http": http,
        "limits": {"timeout_ms": round(call.timeout_seconds * 1000)},
        "providers": sorted(install.capabilities),
    }
    headers = {
        "x-request-id": call.request_id,
        "x-idempotency-key": call.idempotency_key,
        "x-alga-tenant": install.tenant_id,
        "x-alga-extension": install.registry_id,
    }
    return RunnerRequest(body, headers)


class _NotJson(ValueError):
    """A constant JSON does not have (NaN, Infinity)."""


def _refuse_constant(name: str) -> object:
    raise _NotJson(name)


# One decoder for every answer: json.loads with an option builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _valid_status(value: object) -> bool:
    # bool is an int in Python, and JSON's true is not a status.
    return type(value) is int and 100 <= value <= 599


def judge_response(response: RunnerResponse) -> CallOutcome:
    """Success is HTTP 2xx with a JSON object whose `status`, if any, is an integer 100-399.

    The body is judged first: oversize, empty, not JSON, then `invalid runner response` for JSON
    that is not an object or whose `status` is not an integer 100-599. In "Runner returned status
    N", N is the body's `status` when it is 400 or more, else the HTTP status. Retries follow the
    HTTP exchange only (transport errors, 429, 5xx): a 2xx whose body reports the extension's
    failure is a finished execution and is not repeated.
    """
    if response.transport_error is not None or response.http_status is None:
        return CallOutcome(False, response.transport_error or "Runner call failed", True)
    http = response.http_status
    retryable = http == 429 or http >= 500
    if response.oversize:
        return CallOutcome(False, oversize_error(http), retryable)
    if not response.body.strip():
        return CallOutcome(False, empty_body_error(http), retryable)
    try:
        body = response.body
        # As json.loads does with bytes: UTF-8, -16 or -32, told by the first bytes.
        data = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (json.JSONDecodeError, UnicodeDecodeError, _NotJson):
        return CallOutcome(False, non_json_error(http), retryable)
    except (ValueError, RecursionError):
        # JSON that Python will not read: an integer past its digit limit, nesting past the
        # recursion limit.
        return CallOutcome(False, INVALID_RESPONSE, retryable)
    if not isinstance(data, dict):
        return CallOutcome(False, INVALID_RESPONSE, retryable)
    if "status" in data:
        reported = data["status"]
        if not _valid_status(reported):
            return CallOutcome(False, INVALID_RESPONSE, retryable)
        if reported >= 400:
            return CallOutcome(False, status_error(reported), retryable)
    if not 200 <= http < 300:
        return CallOutcome(False, status_error(http), retryable)
    return CallOutcome(True)


class HttpRunnerClient:
    """Keeps one pool of keep-alive connections to the Runner for the life of the application."""

    def __init__(self, base_url: str, max_connections: int = 200) -> None:
        self._pool = Http1Pool(base_url, max_connections=max_connections)

    async def execute(self, call: RunnerCall) -> CallOutcome:
        request = runner_request(call)
        return judge_response(await self._post(request, call.timeout_seconds))

    async def _post(self, request: RunnerRequest, timeout_seconds: float) -> RunnerResponse:
        body = json.dumps(request.body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **request.headers}
        try:
            # The deadline covers the whole exchange, so a Runner that trickles bytes cannot
            # stretch it.
            async with asyncio.timeout(timeout_seconds):
                response = await self._pool.post(
                    EXECUTE_PATH, body, headers, max_body_bytes=MAX_RESPONSE_BYTES
                )
        except TimeoutError:
            return RunnerResponse(
                transport_error=f"Runner request timed out after {timeout_seconds:g} s"
            )
        except TransportError as exc:
            return RunnerResponse(transport_error=str(exc))
        except OSError as exc:
            return RunnerResponse(transport_error=f"{type(exc).__name__}: {exc}")
        return RunnerResponse(
            http_status=response.status, body=response.body, oversize=response.oversize
        )

    async def close(self) -> None:
        await self._pool.close()
