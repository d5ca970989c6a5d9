"""The Runner adapter's request (SPEC §7 body and headers) and its verdict on an answer."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from scheduler_host.adapters.runner_http import RunnerResponse, judge_response, runner_request
from scheduler_host.domain.runs import RunTrigger
from scheduler_host.service.ports import RunnerCall
from tests.unit.test_dispatch import target

# --- the verdict on an answer -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "ok", "error", "retryable"),
    [
        (RunnerResponse(200, b'{"status":200}'), True, None, False),
        (RunnerResponse(201, b"{}"), True, None, False),
        (RunnerResponse(200, b"[1, 2]"), True, None, False),
        (RunnerResponse(200, b'{"status": true}'), True, None, False),
        (RunnerResponse(200, b'{"status": 399}'), True, None, False),
        (RunnerResponse(200, b'{"status": 404}'), False, "Runner returned status 404", False),
        (RunnerResponse(200, b'{"status": 500}'), False, "Runner returned status 500", False),
        (RunnerResponse(503, b'{"error":"x"}'), False, "Runner returned status 503", True),
        (RunnerResponse(502, b'{"status": 504}'), False, "Runner returned status 504", True),
        (RunnerResponse(400, b'{"error":"x"}'), False, "Runner returned status 400", False),
        (RunnerResponse(404, b'{"status": 200}'), False, "Runner returned status 404", False),
        (RunnerResponse(429, b""), False, "Runner returned empty body (http 429)", True),
        (RunnerResponse(204, b""), False, "Runner returned empty body (http 204)", False),
        (RunnerResponse(200, b" \n"), False, "Runner returned empty body (http 200)", False),
        (
            RunnerResponse(200, b"<html/>"),
            False,
            "Runner returned non-JSON response (http 200)",
            False,
        ),
        (RunnerResponse(500, b"oops"), False, "Runner returned non-JSON response (http 500)", True),
        (
            RunnerResponse(200, b"\xff\xfe"),
            False,
            "Runner returned non-JSON response (http 200)",
            False,
        ),
        (
            RunnerResponse(200, b"{", oversize=True),
            False,
            "Runner response larger than 262144 bytes (http 200)",
            False,
        ),
        (
            RunnerResponse(transport_error="ConnectError: refused"),
            False,
            "ConnectError: refused",
            True,
        ),
    ],
)
def test_judge_response(
    response: RunnerResponse, ok: bool, error: str | None, retryable: bool
) -> None:
    outcome = judge_response(response)
    assert (outcome.ok, outcome.error, outcome.retryable) == (ok, error, retryable)


# --- the request --------------------------------------------------------------------------------


def test_request_carries_the_context_and_the_compact_payload() -> None:
    request = runner_request(
        RunnerCall(
            target(payload={"name": "Zoë", "n": [1, 2]}), RunTrigger.MANUAL, "key-1", "req-1", 2.5
        )
    )
    http = request.body["http"]
    assert base64.b64decode(http["body_b64"]).decode() == '{"name":"Zoë","n":[1,2]}'
    assert request.body["context"] == {
        "request_id": "req-1",
        "tenant_id": "tenant-a",
        "extension_id": "ext.registry",
        "install_id": str(uuid.UUID(int=1)),
        "version_id": "v7",
        "content_hash": "sha256:x",
        "config": {},
        "trigger": "manual",
        "schedule_id": str(uuid.UUID(int=2)),
    }
    assert request.body["limits"] == {"timeout_ms": 2500}
    assert request.body["providers"] == ["cap:http.fetch", "cap:scheduler.manage"]
    assert request.headers == {
        "x-request-id": "req-1",
        "x-idempotency-key": "key-1",
        "x-alga-tenant": "tenant-a",
        "x-alga-extension": "ext.registry",
    }
    json.dumps(request.body)  # what the client sends must be JSON


@pytest.mark.parametrize(
    ("method", "payload"), [("GET", {"a": 1}), ("POST", None)], ids=["get", "no-payload"]
)
def test_request_has_no_body_for_get_or_without_payload(method: str, payload: object) -> None:
    request = runner_request(
        RunnerCall(target(method=method, payload=payload), RunTrigger.SCHEDULE, "k", "r", 30)
    )
    assert request.body["http"] == {"method": method, "path": "/sync", "query": {}, "headers": {}}
