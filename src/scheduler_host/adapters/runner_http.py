"""The Runner over HTTP: one `POST /v1/execute` per call, its request built and its
answer judged here, so that the dispatcher deals only in calls and outcomes.

The exchange runs on aiohttp (its C parser, keep-alive pool and TLS), with one session per client,
opened on the first call inside the running loop and closed by `close()`. What aiohttp does not
do for us is done here: one deadline over the whole exchange, the 256 KiB cap on the answer, a
refusal of control characters in header values, and a pool that never hands out a connection on
which bytes arrived while it was idle (aiohttp would read them as the next call's answer, which
may be another tenant's).

Cost, measured with `python -m bench.runner_client` (20,000 calls at concurrency 500 against the
stand-in Runner in another process; uvloop, Python 3.11, aiohttp 3.14.5; the old client and this
one alternated three times in the same run on the shared 2-core machine, medians of 3 rounds):

    hand-written HTTP/1.1 client (replaced)   11,500 calls/s    75 us CPU per call
    this client                                5,500 calls/s   180 us CPU per call
    aiohttp with its defaults                  3,900 calls/s   205 us CPU per call

The difference is aiohttp's own work per request: about 130 more Python calls (the request and
response objects, header merging, a task to write the body on Python 3.11) and the garbage
collection they bring. In the dispatcher's burst (bench/dispatch.py, 10,000 runs due at once, the
two clients alternated three times) its event loop is saturated, and it shows: 2,000 runs/s with
the old client, 1,300 with this one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from scheduler_host.domain.schedule import payload_json
from scheduler_host.service.ports import CallOutcome, RunnerCall

EXECUTE_PATH = "/v1/execute"
MAX_RESPONSE_BYTES = 256 * 1024
INVALID_RESPONSE = "invalid runner response"

# Idle connections are kept past a minute, so that the burst at each minute boundary (cron's
# granularity) finds those of the last one: a new connection costs a handshake, with TLS a
# costly one. A Runner that closes them sooner is seen by its FIN and they are not reused.
KEEPALIVE_SECONDS = 90.0
# What aiohttp buffers of a body before it stops reading the socket: a Runner's answer is
# usually well under this, and a larger one is cut off at the cap.
READ_BUFFER_BYTES = 64 * 1024
# Every C0 control but HTAB, and DEL (RFC 9110 5.5): a line break would start a header or a
# request of its own. aiohttp refuses the same set; checked here to refuse in words of ours.
_UNSAFE_HEADER_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Python's json reads NaN and Infinity, which JSON does not have.
_NON_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})


def empty_body_error(http_status: int) -> str:
    return f"Runner returned empty body (http {http_status})"


def status_error(status: int) -> str:
    return f"Runner returned status {status}"


def non_json_error(http_status: int) -> str:
    return f"Runner returned non-JSON response (http {http_status})"


def oversize_error(http_status: int) -> str:
    return f"Runner response larger than {MAX_RESPONSE_BYTES} bytes (http {http_status})"


def timeout_error(seconds: float) -> str:
    return f"Runner request timed out after {seconds:g} s"


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
    """The exact body and headers of one call of `POST /v1/execute`."""
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


# What a failed exchange was, by the exception's type: the first that matches names it (the
# more specific types come before the ones they derive from).
_TRANSPORT_FAILURES: tuple[tuple[type[BaseException], str], ...] = (
    (aiohttp.ClientConnectorCertificateError, "the Runner's TLS certificate was refused"),
    (aiohttp.ClientSSLError, "TLS handshake with the Runner failed"),
    (aiohttp.ClientConnectorDNSError, "cannot resolve the Runner's host"),
    (aiohttp.ClientConnectorError, "cannot connect to the Runner"),
    (aiohttp.ServerDisconnectedError, "the Runner closed the connection without answering"),
    (aiohttp.ClientPayloadError, "the response body was cut short or malformed"),
    (aiohttp.ClientResponseError, "invalid HTTP response"),
    (aiohttp.ClientConnectionError, "connection error"),
    (OSError, "connection error"),
    (asyncio.LimitOverrunError, "response head too large"),
)


def transport_failure(exc: BaseException) -> str:
    """A failed exchange in words of ours: what happened and the exception's type, never its
    text beyond the operating system's reason (a parser's message may quote the answer)."""
    name = type(exc).__name__
    what = next(
        (words for kind, words in _TRANSPORT_FAILURES if isinstance(exc, kind)), "unexpected error"
    )
    reason = exc.strerror if isinstance(exc, OSError) else None
    return (
        f"Runner call failed: {what} ({name}: {reason})"
        if reason
        else f"Runner call failed: {what} ({name})"
    )


def _unsafe_header(headers: dict[str, str]) -> str | None:
    """The name of the first header whose value has a control character, if any."""
    for name, value in headers.items():
        if _UNSAFE_HEADER_CHARACTER.search(value) is not None:
            return name
    return None


class IdleCheckingConnector(aiohttp.TCPConnector):
    """A TCPConnector that drops a pooled connection on which a message arrived while it was idle.

    aiohttp parses what an idle connection receives and queues it; the next request on that
    connection would read it as its answer. `should_close` is set by anything queued or left
    unread there, and is False for a connection that was only waiting. (Part of a head is not
    queued: it goes with the parser that the next request replaces.)
    """

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp passes it by this name
    ) -> Connection:
        while True:
            connection = await super().connect(req, traces, timeout)
            protocol = connection.protocol
            if protocol is None or not protocol.should_close:
                return connection
            # Closed, not released: the pool holds one connection fewer and the loop ends
            # with a clean pooled one or a new one (nothing can have arrived on that yet).
            connection.close()


class HttpRunnerClient:
    """Keeps one pool of keep-alive connections to the Runner for the life of the application.

    `max_connections` bounds the connections open at once (calls beyond it wait for one, inside
    their deadline). `call_token`, when set, is sent as `authorization: Bearer <token>` on every
    call so that the Runner can tell the host from anyone else.
    """

    def __init__(
        self,
        base_url: str,
        max_connections: int = 200,
        *,
        call_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {base_url!r}")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{EXECUTE_PATH}"
        self._fixed_headers = {"content-type": "application/json"}
        if call_token is not None:
            if not call_token or _UNSAFE_HEADER_CHARACTER.search(call_token):
                raise ValueError("the Runner call token must be non-empty, without controls")
            self._fixed_headers["authorization"] = f"Bearer {call_token}"
        self._max_connections = max_connections
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def execute(self, call: RunnerCall) -> CallOutcome:
        try:
            request = runner_request(call)
            body = orjson.dumps(request.body)
        except Exception as exc:  # never raise into the dispatcher: the run fails instead
            return CallOutcome(
                False, f"Runner call failed: cannot build the request ({type(exc).__name__})"
            )
        unsafe = _unsafe_header(request.headers)
        if unsafe is not None:
            # Not retryable: the same values would be refused again.
            return CallOutcome(
                False, f"Runner call refused: header {unsafe} contains a control character"
            )
        if self._closed:
            return CallOutcome(False, "Runner call failed: the client is closed", True)
        return judge_response(await self._post(body, request.headers, call.timeout_seconds))

    async def _post(
        self, body: bytes, headers: dict[str, str], timeout_seconds: float
    ) -> RunnerResponse:
        """One exchange under one deadline. Every failure of it is a transport error, and all of
        them are retryable: the Runner may not have seen the call, or its answer was lost or
        unreadable, and a repeat carries the same x-idempotency-key."""
        deadline = asyncio.timeout(timeout_seconds)
        try:
            # The deadline covers the wait for a connection, the connect, the send and every
            # read, so a Runner that trickles bytes cannot stretch it.
            async with deadline:
                response = await self._send(body, {**self._fixed_headers, **headers})
                return await self._read(response)
        except TimeoutError as exc:
            if deadline.expired():
                return RunnerResponse(transport_error=timeout_error(timeout_seconds))
            return RunnerResponse(transport_error=transport_failure(exc))
        except Exception as exc:  # anything at all is a failed attempt, never an escape
            return RunnerResponse(transport_error=transport_failure(exc))

    async def _send(self, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """The request out and the head of the answer in."""
        session = self._session or self._open_session()
        try:
            return await session.post(self._url, data=body, headers=headers, allow_redirects=False)
        except aiohttp.ClientConnectorError:
            raise
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError,
            aiohttp.ClientConnectionResetError,
        ):
            # No answer came: a Runner may close an idle keep-alive connection just as it is
            # reused, and the call then never reached it. One more try (on a new connection, as
            # the closed one is gone) is safe: the Runner deduplicates on x-idempotency-key.
            return await session.post(self._url, data=body, headers=headers, allow_redirects=False)

    @staticmethod
    async def _read(response: aiohttp.ClientResponse) -> RunnerResponse:
        """The body, up to one byte past the cap; the connection goes back to the pool only
        after a complete answer."""
        try:
            status = response.status
            if status < 200:
                # 101 Switching Protocols: the connection no longer speaks HTTP to us.
                response.close()
                return RunnerResponse(status, b"")
            declared = response.content_length
            if declared is not None:
                if declared > MAX_RESPONSE_BYTES:
                    # Not read: the connection is dropped rather than drained.
                    response.close()
                    return RunnerResponse(status, b"", oversize=True)
                # The parser stops at the declared length and then releases the connection.
                return RunnerResponse(status, await response.read())
            # Chunked, or delimited by the close: read in pieces up to one byte past the cap.
            content = response.content
            received = bytearray()
            while chunk := await content.read(MAX_RESPONSE_BYTES + 1 - len(received)):
                received += chunk
                if len(received) > MAX_RESPONSE_BYTES:
                    response.close()
                    return RunnerResponse(status, bytes(received), oversize=True)
            return RunnerResponse(status, bytes(received))
        except BaseException:
            # The state of the exchange is unknown (a timeout, a bad body): the connection
            # must not carry another call.
            response.close()
            raise

    def _open_session(self) -> aiohttp.ClientSession:
        connector = IdleCheckingConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=KEEPALIVE_SECONDS,
            ssl=self._ssl,
            # Python before 3.12.8 may leave a closed TLS transport open; aiohttp then aborts it.
            enable_cleanup_closed=sys.version_info < (3, 12, 8),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The deadline is ours (asyncio.timeout), so aiohttp arms no timer per call.
            timeout=aiohttp.ClientTimeout(),
            cookie_jar=aiohttp.DummyCookieJar(),
            # No compression is asked for, and none is undone.
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
            read_bufsize=READ_BUFFER_BYTES,
            raise_for_status=False,
        )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
