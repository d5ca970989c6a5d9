"""The Runner adapter's request (its body and headers), its verdict on an answer and the
words of its failures, without a network."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from scheduler_host.adapters.runner_http import (
    HttpRunnerClient,
    RunnerResponse,
    judge_response,
    runner_request,
    transport_failure,
)
from scheduler_host.domain.runs import RunTrigger
from scheduler_host.service.ports import CallOutcome, RunnerCall
from tests.unit.test_dispatch import target

# --- the verdict on an answer -----------------------------------------------------------------

INVALID = "invalid runner response"
NON_JSON_200 = "Runner returned non-JSON response (http 200)"


@pytest.mark.parametrize(
    ("response", "ok", "error", "retryable"),
    [
        (RunnerResponse(200, b'{"status":200}'), True, None, False),
        (RunnerResponse(201, b"{}"), True, None, False),
        (RunnerResponse(200, b'{"status": 100}'), True, None, False),
        (RunnerResponse(200, b'{"status": 399}'), True, None, False),
        (RunnerResponse(200, b'{"status": 404}'), False, "Runner returned status 404", False),
        (RunnerResponse(200, b'{"status": 500}'), False, "Runner returned status 500", False),
        (RunnerResponse(200, b'{"status": 599}'), False, "Runner returned status 599", False),
        (RunnerResponse(503, b'{"error":"x"}'), False, "Runner returned status 503", True),
        (RunnerResponse(502, b'{"status": 504}'), False, "Runner returned status 504", True),
        (RunnerResponse(400, b'{"error":"x"}'), False, "Runner returned status 400", False),
        (RunnerResponse(404, b'{"status": 200}'), False, "Runner returned status 404", False),
        (RunnerResponse(429, b""), False, "Runner returned empty body (http 429)", True),
        (RunnerResponse(204, b""), False, "Runner returned empty body (http 204)", False),
        (RunnerResponse(200, b" \n"), False, "Runner returned empty body (http 200)", False),
        (RunnerResponse(200, b"<html/>"), False, NON_JSON_200, False),
        (RunnerResponse(500, b"oops"), False, "Runner returned non-JSON response (http 500)", True),
        (RunnerResponse(200, b"\xff\xfe"), False, NON_JSON_200, False),
        (
            RunnerResponse(200, b"{", oversize=True),
            False,
            "Runner response larger than 262144 bytes (http 200)",
            False,
        ),
        (
            RunnerResponse(transport_error="Runner call failed: connection error (ClientOSError)"),
            False,
            "Runner call failed: connection error (ClientOSError)",
            True,
        ),
    ],
)
def test_judge_response(
    response: RunnerResponse, ok: bool, error: str | None, retryable: bool
) -> None:
    outcome = judge_response(response)
    assert (outcome.ok, outcome.error, outcome.retryable) == (ok, error, retryable)


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b'"ok"',
        b"null",
        b"200",
        b"true",
        b'{"status": true}',
        b'{"status": false}',
        b'{"status": "500"}',
        b'{"status": null}',
        b'{"status": 1e400}',
        b'{"status": -1e400}',
        b'{"status": 500.5}',
        b'{"status": 200.0}',
        b'{"status": -404}',
        b'{"status": 0}',
        b'{"status": 99}',
        b'{"status": 600}',
        b'{"status": {"code": 500}}',
        b'{"status": 1' + b"0" * 5000 + b"}",  # past Python's limit on integer digits
        b"[" * 100_000 + b"]" * 100_000,  # past the recursion limit
    ],
    ids=lambda body: body[:24].decode(),
)
def test_json_that_is_not_an_object_with_a_valid_status_is_an_invalid_runner_response(
    body: bytes,
) -> None:
    assert judge_response(RunnerResponse(200, body)) == CallOutcome(False, INVALID)


@pytest.mark.parametrize(
    ("http", "retryable"), [(200, False), (404, False), (429, True), (503, True)]
)
def test_an_invalid_runner_response_is_retried_only_on_429_and_5xx(
    http: int, retryable: bool
) -> None:
    assert judge_response(RunnerResponse(http, b"[]")) == CallOutcome(False, INVALID, retryable)
    assert judge_response(RunnerResponse(http, b'{"status": true}')) == CallOutcome(
        False, INVALID, retryable
    )


@pytest.mark.parametrize(
    "body", [b"NaN", b"Infinity", b"-Infinity", b'{"status": NaN}', b'{"x": Infinity}']
)
def test_nan_and_infinity_are_not_json(body: bytes) -> None:
    assert judge_response(RunnerResponse(200, body)) == CallOutcome(False, NON_JSON_200)


@pytest.mark.parametrize(
    "body",
    ['{"status": 200}'.encode("utf-16"), b"\xef\xbb\xbf{}", '{"é": 1}'.encode()],
    ids=["utf-16", "utf-8-bom", "utf-8"],
)
def test_json_in_the_encodings_json_allows_is_read(body: bytes) -> None:
    assert judge_response(RunnerResponse(200, body)) == CallOutcome(True)


# --- failures in words of ours ----------------------------------------------------------------

REQUEST_INFO = aiohttp.RequestInfo(
    URL("http://runner/v1/execute"),
    "POST",
    CIMultiDictProxy(CIMultiDict[str]()),
    URL("http://runner/v1/execute"),
)


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (
            aiohttp.ClientResponseError(REQUEST_INFO, (), status=400, message="SECRET-BODY"),
            "Runner call failed: invalid HTTP response (ClientResponseError)",
        ),
        (
            aiohttp.ClientPayloadError("SECRET-BODY"),
            "Runner call failed: the response body was cut short or malformed (ClientPayloadError)",
        ),
        (
            aiohttp.ServerDisconnectedError("SECRET-BODY"),
            "Runner call failed: the Runner closed the connection without answering "
            "(ServerDisconnectedError)",
        ),
        (
            aiohttp.ClientOSError(104, "Connection reset by peer"),
            "Runner call failed: connection error (ClientOSError: Connection reset by peer)",
        ),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            "Runner call failed: connection error (ConnectionResetError: Connection reset by peer)",
        ),
        (
            asyncio.LimitOverrunError("SECRET-BODY", 10),
            "Runner call failed: response head too large (LimitOverrunError)",
        ),
        (ValueError("SECRET-BODY"), "Runner call failed: unexpected error (ValueError)"),
        (OverflowError("SECRET-BODY"), "Runner call failed: unexpected error (OverflowError)"),
        (
            UnicodeDecodeError("utf-8", b"SECRET-BODY", 0, 1, "bad"),
            "Runner call failed: unexpected error (UnicodeDecodeError)",
        ),
        (KeyError("SECRET-BODY"), "Runner call failed: unexpected error (KeyError)"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_a_failed_exchange_is_told_in_words_of_ours(exc: BaseException, error: str) -> None:
    assert transport_failure(exc) == error


async def test_a_request_that_cannot_be_built_is_a_failed_call_not_an_exception() -> None:
    client = HttpRunnerClient("http://127.0.0.1:9")
    try:
        outcome = await client.execute(
            RunnerCall(target(payload={"x": object()}), RunTrigger.SCHEDULE, "k", "r", 1)
        )
    finally:
        await client.close()
    assert outcome == CallOutcome(False, "Runner call failed: cannot build the request (TypeError)")


@pytest.mark.parametrize("url", ["ftp://runner", "runner:8080", "http://"])
def test_a_bad_base_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="expected an http:// or https:// URL"):
        HttpRunnerClient(url)


@pytest.mark.parametrize("token", ["", "token\r\nx-injected: 1", "token\x00"])
def test_a_call_token_that_cannot_be_a_header_value_is_refused_at_construction(
    token: str,
) -> None:
    with pytest.raises(ValueError, match="call token must be non-empty, without controls"):
        HttpRunnerClient("http://runner", call_token=token)


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
