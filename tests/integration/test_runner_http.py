"""The Runner client on aiohttp against real servers on loopback: the stand-in Runner for the
request it sends, and a raw socket server that writes any bytes back for hostile answers, the
deadline, the size cap, keep-alive reuse, the connection bound and TLS.

Answers that must not be mixed up are told apart by their verdict: the raw server answers the
n-th request it reads with `{"status": 400 + n}`, so `Runner returned status 402` is the second
request's own answer, and `Runner returned status 499` would be bytes meant for no request."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest
import trustme

from scheduler_host.adapters.runner_http import MAX_RESPONSE_BYTES, HttpRunnerClient
from scheduler_host.domain.runs import RunTrigger
from scheduler_host.runner_standin import Execution, Reply, StandInRunner
from scheduler_host.service.ports import CallOutcome, RunnerCall
from tests.support.server import free_port
from tests.unit.test_dispatch import target

# An answer meant for no request: a client that reads it for a later call has mixed up answers.
STRAY = b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status": 499}'
# Text of the hostile answers that must never reach a run's error.
MARKER = b"SECRET-BODY"


def call(request_id: str = "req-1", timeout: float = 5.0, tenant: str = "tenant-a") -> RunnerCall:
    run_target = target(payload={"n": 1})
    run_target = replace(run_target, install=replace(run_target.install, tenant_id=tenant))
    return RunnerCall(run_target, RunTrigger.SCHEDULE, "key-1", request_id, timeout)


def answer(body: bytes, *, head: bytes = b"HTTP/1.1 200 OK\r\n", fields: bytes = b"") -> bytes:
    return head + fields + b"Content-Length: %d\r\n\r\n" % len(body) + body


def chunked(*parts: bytes, size_line: bytes | None = None) -> bytes:
    """A chunked answer; `size_line` replaces the first chunk's size line."""
    chunks = [b"%x\r\n%s\r\n" % (len(part), part) for part in parts]
    if size_line is not None:
        chunks[0] = size_line + b"\r\n" + parts[0] + b"\r\n"
    return (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n"
    )


def own_answer(number: int) -> bytes:
    return answer(b'{"status": %d}' % (400 + number))


def own_error(number: int) -> str:
    return f"Runner returned status {400 + number}"


@dataclass
class Request:
    number: int  # counted across the server's connections, from 1
    head: bytes
    body: bytes
    connection: int  # which connection it came on, from 1


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]


async def answer_own(request: Request, writer: asyncio.StreamWriter) -> bool:
    writer.write(own_answer(request.number))
    await writer.drain()
    return True


class RawRunner:
    """Reads each request (head and Content-Length body) and hands it to `handler`, which writes
    whatever it likes and says whether to read another request on the connection."""

    def __init__(self, handler: Handler = answer_own, ssl_context: ssl.SSLContext | None = None):
        self.handler = handler
        self.ssl_context = ssl_context
        self.requests: list[Request] = []
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://localhost:{self.port}"

    async def __aenter__(self) -> RawRunner:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        connection = self.connections
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                request = Request(len(self.requests) + 1, head, body, connection)
                self.requests.append(request)
                if not await self.handler(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., HttpRunnerClient]]:
    """Makes clients and closes them after the test."""
    made: list[HttpRunnerClient] = []

    def make(url: str, *args: object, **kwargs: object) -> HttpRunnerClient:
        client = HttpRunnerClient(url, *args, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def first_then_own(first: bytes, *, then_close: bool = False) -> Handler:
    """Writes `first` for the first request (closing after it when told), then own answers."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(first if request.number == 1 else own_answer(request.number))
        await writer.drain()
        return not (then_close and request.number == 1)

    return handler


GZIPPED = gzip.compress(b'{"status":200}')
BAD_CHUNKED = "the response body was cut short or malformed"
INVALID_HTTP = "Runner call failed: invalid HTTP response (ClientResponseError)"

# name: (the first answer, with a stray answer written right after it; the expected outcome)
HOSTILE = {
    "status-1e400": (answer(b'{"status": 1e400}'), CallOutcome(False, "invalid runner response")),
    "status-nan": (
        answer(b'{"status": NaN}'),
        CallOutcome(False, "Runner returned non-JSON response (http 200)"),
    ),
    "chunk-size-negative": (
        chunked(MARKER, size_line=b"-b"),
        CallOutcome(False, INVALID_HTTP, True),
    ),
    "chunk-size-not-hex": (
        chunked(MARKER, size_line=b"zz"),
        CallOutcome(False, INVALID_HTTP, True),
    ),
    "chunk-size-0x": (chunked(MARKER, size_line=b"0xb"), CallOutcome(False, INVALID_HTTP, True)),
    "chunk-size-non-ascii": (
        chunked(MARKER, size_line="\u0661\u0661".encode()),  # Arabic-Indic digits
        CallOutcome(False, INVALID_HTTP, True),
    ),
    "status-code-superscript": (
        answer(MARKER, head="HTTP/1.1 \u00b200 OK\r\n".encode()),
        CallOutcome(False, INVALID_HTTP, True),
    ),
    "switching-protocols": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        + MARKER,
        CallOutcome(False, "Runner returned empty body (http 101)"),
    ),
    # chunked is the final coding: framed as chunks, and the gzip coding is not undone.
    "transfer-encoding-gzip-chunked": (
        chunked(GZIPPED).replace(b"chunked", b"gzip, chunked", 1),
        CallOutcome(False, "Runner returned non-JSON response (http 200)"),
    ),
    "length-and-chunked": (
        chunked(MARKER).replace(b"\r\n\r\n", b"\r\nContent-Length: 11\r\n\r\n", 1),
        CallOutcome(False, INVALID_HTTP, True),
    ),
    "head-too-large": (
        answer(b"{}", fields=b"X-Big: " + MARKER * 10_000 + b"\r\n"),
        CallOutcome(False, INVALID_HTTP, True),
    ),
    # The answer is complete and good; what follows it is meant for no request.
    "bytes-beyond-content-length": (answer(b"{}"), CallOutcome(True)),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_answer_is_a_failed_call_and_the_next_call_reads_its_own_answer(
    clients: Callable[..., HttpRunnerClient], name: str
) -> None:
    first, expected = HOSTILE[name]
    async with RawRunner(first_then_own(first + STRAY)) as server:
        client = clients(server.url)
        outcome = await client.execute(call("req-1"))
        second = await client.execute(call("req-2"))
        third = await client.execute(call("req-3"))
    assert outcome == expected
    assert MARKER.decode() not in (outcome.error or "")
    assert second == CallOutcome(False, own_error(2))
    assert third == CallOutcome(False, own_error(3))


async def test_transfer_encoding_xchunked_is_not_chunked(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    # Not chunked, so the body runs to the close: the chunk framing is read as the body.
    xchunked = chunked(b'{"status":200}').replace(b"chunked", b"xchunked", 1)
    async with RawRunner(first_then_own(xchunked, then_close=True)) as server:
        client = clients(server.url)
        outcome = await client.execute(call())
        second = await client.execute(call("req-2"))
    assert outcome == CallOutcome(False, "Runner returned non-JSON response (http 200)")
    assert second == CallOutcome(False, own_error(2))


@pytest.mark.parametrize(
    "stray",
    [STRAY, b"garbage", STRAY[:20]],
    ids=["an-answer", "garbage", "part-of-an-answer"],
)
async def test_bytes_that_arrive_on_an_idle_connection_are_never_read_as_the_next_answer(
    clients: Callable[..., HttpRunnerClient], stray: bytes
) -> None:
    async def answer_then_stray(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(own_answer(request.number))
        await writer.drain()
        if request.number == 1:
            await asyncio.sleep(0.05)
            writer.write(stray)  # the client has the connection back in its pool by now
        return True

    async with RawRunner(answer_then_stray) as server:
        client = clients(server.url)
        first = await client.execute(call("req-1"))
        await asyncio.sleep(0.3)
        second = await client.execute(call("req-2"))
        third = await client.execute(call("req-3"))
    assert (first, second, third) == tuple(CallOutcome(False, own_error(n)) for n in (1, 2, 3))


def body_of(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    return b'{"status":200,"pad":"' + b"x" * (size - 23) + b'"}'


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close"])
@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (MAX_RESPONSE_BYTES, CallOutcome(True)),
        (
            MAX_RESPONSE_BYTES + 1,
            CallOutcome(
                False, f"Runner response larger than {MAX_RESPONSE_BYTES} bytes (http 200)"
            ),
        ),
    ],
    ids=["at-the-cap", "over-the-cap"],
)
async def test_answers_are_capped_at_256_kib_in_every_framing(
    clients: Callable[..., HttpRunnerClient], framing: str, size: int, expected: CallOutcome
) -> None:
    body = body_of(size)
    first = {
        "content-length": answer(body),
        "chunked": chunked(body[: size // 2], body[size // 2 :]),
        "close": b"HTTP/1.1 200 OK\r\n\r\n" + body,
    }[framing]
    async with RawRunner(first_then_own(first, then_close=framing == "close")) as server:
        client = clients(server.url)
        outcome = await client.execute(call())
        second = await client.execute(call("req-2"))
    assert outcome == expected
    assert second == CallOutcome(False, own_error(2))


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close"])
async def test_a_huge_answer_is_not_read_past_the_cap(
    clients: Callable[..., HttpRunnerClient], framing: str
) -> None:
    total = 256 * 1024 * 1024  # more than loopback's socket buffers hold
    piece = b"x" * (1024 * 1024)
    sent = 0

    async def flood(_request: Request, writer: asyncio.StreamWriter) -> bool:
        nonlocal sent
        head = {
            "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total,
            "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "close": b"HTTP/1.1 200 OK\r\n\r\n",
        }[framing]
        writer.write(head)
        while sent < total:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
            await writer.drain()
            sent += len(piece)
        return False

    async with RawRunner(flood) as server:
        client = clients(server.url)
        started = time.monotonic()
        outcome = await client.execute(call(timeout=30))
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.1)  # the server sees the dropped connection
    assert outcome == CallOutcome(
        False, f"Runner response larger than {MAX_RESPONSE_BYTES} bytes (http 200)"
    )
    assert sent < total
    assert elapsed < 10


async def test_a_runner_that_closes_in_the_body_is_a_retryable_failure(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"status": ' + MARKER
    async with RawRunner(first_then_own(cut, then_close=True)) as server:
        client = clients(server.url)
        outcome = await client.execute(call())
        second = await client.execute(call("req-2"))
    assert outcome == CallOutcome(
        False, f"Runner call failed: {BAD_CHUNKED} (ClientPayloadError)", True
    )
    assert second == CallOutcome(False, own_error(2))


async def test_a_runner_that_never_answers_fails_at_the_deadline(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number == 1:
            await asyncio.sleep(30)
        return await answer_own(request, writer)

    async with RawRunner(silent) as server:
        client = clients(server.url)
        started = time.monotonic()
        outcome = await client.execute(call(timeout=0.3))
        elapsed = time.monotonic() - started
        second = await client.execute(call("req-2"))
    assert outcome == CallOutcome(False, "Runner request timed out after 0.3 s", True)
    assert 0.3 <= elapsed < 1.5
    assert second == CallOutcome(False, own_error(2))
    assert server.connections == 2  # the timed-out exchange's connection was not reused


async def test_a_runner_that_trickles_bytes_cannot_stretch_the_deadline(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    async def trickle(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number > 1:
            return await answer_own(request, writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.02)
        return True

    async with RawRunner(trickle) as server:
        client = clients(server.url)
        started = time.monotonic()
        late = await client.execute(call(timeout=0.3))
        elapsed = time.monotonic() - started
        on_time = await client.execute(call("req-2"))
    assert late == CallOutcome(False, "Runner request timed out after 0.3 s", True)
    assert elapsed < 1.5
    assert on_time == CallOutcome(False, own_error(2))
    assert server.connections == 2


async def test_keep_alive_reuses_one_connection_for_the_runner_request(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    async with RawRunner() as server:
        client = clients(server.url + "/base/")
        outcomes = [await client.execute(call(f"req-{n}")) for n in range(1, 6)]
    assert outcomes == [CallOutcome(False, own_error(n)) for n in range(1, 6)]
    assert server.connections == 1
    head = server.requests[0].head.decode()
    assert head.startswith("POST /base/v1/execute HTTP/1.1\r\n")
    fields = {line.split(":")[0].lower() for line in head.split("\r\n")[1:] if line}
    # Nothing asked for that the client would then have to undo (compression).
    assert fields == {
        "host",
        "content-type",
        "content-length",
        "x-request-id",
        "x-idempotency-key",
        "x-alga-tenant",
        "x-alga-extension",
    }
    assert f"Host: localhost:{server.port}\r\n" in head
    assert "content-type: application/json\r\n" in head


async def test_a_runner_that_drops_a_reused_connection_gets_the_call_on_a_new_one(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    async def drop_second_on_a_connection(request: Request, writer: asyncio.StreamWriter) -> bool:
        # As a Runner's idle timeout does, just as the client sends on the connection.
        if sum(r.connection == request.connection for r in server.requests) == 2:
            return False
        return await answer_own(request, writer)

    async with RawRunner(drop_second_on_a_connection) as server:
        client = clients(server.url)
        first = await client.execute(call("req-1"))
        second = await client.execute(call("req-2"))
    assert first == CallOutcome(False, own_error(1))
    assert second == CallOutcome(False, own_error(3))  # sent again: the third request seen
    assert [r.connection for r in server.requests] == [1, 1, 2]


async def test_a_runner_that_closes_without_answering_is_a_retryable_failure(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    async def hang_up(_request: Request, _writer: asyncio.StreamWriter) -> bool:
        return False

    async with RawRunner(hang_up) as server:
        client = clients(server.url)
        outcome = await client.execute(call())
    assert outcome == CallOutcome(
        False,
        "Runner call failed: the Runner closed the connection without answering "
        "(ServerDisconnectedError)",
        True,
    )
    assert len(server.requests) == 2  # sent once more, on a new connection, then given up


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 200 OK\r\nConnection: close\r\n"],
    ids=["http-1.0", "connection-close"],
)
async def test_connections_the_runner_means_to_close_are_not_reused(
    clients: Callable[..., HttpRunnerClient], head: bytes
) -> None:
    async def say_close(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b'{"status": %d}' % (400 + request.number), head=head))
        await writer.drain()
        return True  # the server would go on; the client must not

    async with RawRunner(say_close) as server:
        client = clients(server.url)
        outcomes = [await client.execute(call(f"req-{n}")) for n in (1, 2, 3)]
    assert outcomes == [CallOutcome(False, own_error(n)) for n in (1, 2, 3)]
    assert server.connections == 3


async def test_informational_answers_are_skipped_and_redirects_not_followed(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    async def continue_then_redirect(_request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(
            answer(b"{}", head=b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\n")
        )
        await writer.drain()
        return True

    async with RawRunner(continue_then_redirect) as server:
        client = clients(server.url)
        outcome = await client.execute(call())
    assert outcome == CallOutcome(False, "Runner returned status 307")
    assert len(server.requests) == 1


async def test_connections_are_bounded_by_max_connections(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    async def slow(_request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(answer(b"{}"))
        await writer.drain()
        return True

    async with RawRunner(slow) as server:
        client = clients(server.url, 3)
        outcomes = await asyncio.gather(*(client.execute(call(f"r{n}")) for n in range(12)))
    assert outcomes == [CallOutcome(True)] * 12
    assert server.most_open <= 3
    assert server.connections == 3


async def test_the_wait_for_a_connection_counts_against_the_deadline(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    async def hold_first(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number == 1:
            await asyncio.sleep(1)
        return await answer_own(request, writer)

    async with RawRunner(hold_first) as server:
        client = clients(server.url, 1)
        holding = asyncio.create_task(client.execute(call("req-1", timeout=5)))
        await asyncio.sleep(0.1)
        waiting = await client.execute(call("req-2", timeout=0.2))
        await holding
    assert waiting == CallOutcome(False, "Runner request timed out after 0.2 s", True)
    assert len(server.requests) == 1


@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\x00"], ids=["crlf", "lf", "cr", "nul"])
async def test_a_control_character_in_a_header_value_is_refused_before_sending(
    clients: Callable[..., HttpRunnerClient], bad: str
) -> None:
    async with RawRunner() as server:
        client = clients(server.url)
        refused = await client.execute(call(tenant=f"t{bad}x-injected: 1"))
    assert refused == CallOutcome(
        False, "Runner call refused: header x-alga-tenant contains a control character"
    )
    assert server.requests == []


async def test_utf8_header_values_are_sent_as_utf8(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    async with RawRunner() as server:
        client = clients(server.url)
        outcome = await client.execute(call(tenant="tenant-ü"))
    assert outcome == CallOutcome(False, own_error(1))
    assert "x-alga-tenant: tenant-ü\r\n".encode() in server.requests[0].head


async def test_a_runner_that_is_not_listening_is_a_retryable_connect_failure() -> None:
    client = HttpRunnerClient(f"http://127.0.0.1:{free_port()}")
    try:
        outcome = await client.execute(call())
    finally:
        await client.close()
    assert not outcome.ok
    assert outcome.retryable
    assert (outcome.error or "").startswith(
        "Runner call failed: cannot connect to the Runner (ClientConnectorError: "
    )


async def test_close_ends_the_pooled_connections_and_later_calls_fail() -> None:
    async with RawRunner() as server:
        client = HttpRunnerClient(server.url)
        assert await client.execute(call()) == CallOutcome(False, own_error(1))
        assert server.open_now == 1
        await client.close()
        await asyncio.sleep(0.1)
        assert server.open_now == 0
        after = await client.execute(call())
    assert after == CallOutcome(False, "Runner call failed: the client is closed", True)


def test_the_client_is_made_outside_a_running_loop() -> None:
    # app.py builds it before serving; the aiohttp session is made on the first call.
    HttpRunnerClient("http://127.0.0.1:9", 10, call_token="t" * 32)


# --- with the stand-in Runner -----------------------------------------------------------------


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StandInRunner, list[Execution]]]:
    seen: list[Execution] = []

    async def record(execution: Execution) -> Reply:
        seen.append(execution)
        return Reply()

    runner = StandInRunner(record)
    await runner.start()
    yield runner, seen
    await runner.stop()


async def test_the_stand_in_receives_the_request_body_and_headers(
    stand_in: tuple[StandInRunner, list[Execution]], clients: Callable[..., HttpRunnerClient]
) -> None:
    runner, seen = stand_in
    client = clients(runner.url + "/")
    the_call = call("req-7")
    assert await client.execute(the_call) == CallOutcome(True)
    (execution,) = seen
    assert execution.context["request_id"] == "req-7"
    assert execution.context["tenant_id"] == "tenant-a"
    assert execution.context["schedule_id"] == str(the_call.target.schedule.id)
    assert execution.body["limits"] == {"timeout_ms": 5000}
    assert execution.headers["content-type"] == "application/json"
    assert execution.headers["x-request-id"] == "req-7"
    assert execution.idempotency_key == "key-1"
    assert execution.headers["x-alga-tenant"] == "tenant-a"
    assert execution.headers["x-alga-extension"] == "ext.registry"
    assert "authorization" not in execution.headers


async def test_the_call_token_authenticates_every_call_to_the_runner(
    stand_in: tuple[StandInRunner, list[Execution]], clients: Callable[..., HttpRunnerClient]
) -> None:
    runner, seen = stand_in
    token = "host-call-token-" + "x" * 32
    client = clients(runner.url, call_token=token)
    for n in range(3):
        assert await client.execute(call(f"req-{n}")) == CallOutcome(True)
    assert [e.headers.get("authorization") for e in seen] == [f"Bearer {token}"] * 3


# --- TLS ----------------------------------------------------------------------------------------


async def test_https_with_the_given_trust_and_not_without_it(
    clients: Callable[..., HttpRunnerClient],
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with RawRunner(ssl_context=server_context) as server:
        trusting = clients(server.url, ssl_context=client_context)
        outcomes = [await trusting.execute(call(f"req-{n}")) for n in (1, 2, 3)]
        assert server.connections == 1
        untrusting = clients(server.url)  # the system's trust store does not know this CA
        refused = await untrusting.execute(call())
    assert outcomes == [CallOutcome(False, own_error(n)) for n in (1, 2, 3)]
    assert not refused.ok
    assert refused.retryable
    assert (refused.error or "").startswith(
        "Runner call failed: the Runner's TLS certificate was refused"
    )
