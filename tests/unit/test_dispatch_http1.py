"""The dispatcher's HTTP/1.1 client against real servers on loopback, each scripted at the byte
level: keep-alive reuse, connections the server closes, chunked bodies, the size cap, the
deadline, the connection bound and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from scheduler_host.adapters.http1 import Http1Pool, RemoteProtocolError
from scheduler_host.adapters.runner_http import HttpRunnerClient, RunnerRequest

CAP = 1000
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class ScriptedServer:
    """Accepts connections and hands each request to `handler(reader, writer, n)` (n counts
    requests from 1); the handler answers and says whether to keep the connection open."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.most_open = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://localhost:{self.port}"

    async def __aenter__(self) -> ScriptedServer:
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
        self._tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
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
                self.requests.append(head + await reader.readexactly(length))
                if not await self.handler(reader, writer, len(self.requests)):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)  # type: ignore[arg-type]


async def reply(writer: asyncio.StreamWriter, body: bytes = b'{"status":200}') -> bool:
    writer.write(OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    return True


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
    return await reply(writer)


@pytest.fixture
async def pool_for() -> AsyncIterator[Callable[..., Http1Pool]]:
    pools: list[Http1Pool] = []

    def make(url: str, **kwargs: object) -> Http1Pool:
        pool = Http1Pool(url, **kwargs)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def post(pool: Http1Pool, body: bytes = b"{}") -> tuple[int, bytes, bool]:
    response = await pool.post("/v1/execute", body, {"X-Test": "1"}, max_body_bytes=CAP)
    return response.status, response.body, response.oversize


async def test_keep_alive_reuses_one_connection(pool_for: Callable[..., Http1Pool]) -> None:
    async with ScriptedServer(answer) as server:
        pool = pool_for(server.url + "/base/")
        for _ in range(5):
            assert await post(pool) == (200, b'{"status":200}', False)
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("POST /base/v1/execute HTTP/1.1\r\n")
    assert f"Host: localhost:{server.port}\r\n" in first
    assert "Content-Length: 2\r\n" in first and "X-Test: 1\r\n" in first
    assert first.endswith("\r\n\r\n{}")


@pytest.mark.parametrize("pause", [0.0, 0.05], ids=["reused-at-once", "seen-closed"])
async def test_a_server_that_closes_idle_connections_gets_the_call_on_a_new_one(
    pool_for: Callable[..., Http1Pool], pause: float
) -> None:
    async def answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        # Says keep-alive, then drops the connection, as a server's idle timeout does.
        await reply(writer)
        return False

    async with ScriptedServer(answer_then_close) as server:
        pool = pool_for(server.url)
        for _ in range(3):
            assert (await post(pool))[0] == 200
            # At once, the call goes out on the closed connection and is sent again on a new
            # one; after a pause, the close is seen before the connection is taken.
            await asyncio.sleep(pause)
        assert server.connections == 3
        assert len(server.requests) == 3  # no call was sent twice


async def test_connection_close_and_http_1_0_are_not_reused(
    pool_for: Callable[..., Http1Pool],
) -> None:
    async def old_style(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        head = b"HTTP/1.0 200 OK\r\n" if n % 2 else b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
        writer.write(head + b"Content-Length: 2\r\n\r\n{}")
        await writer.drain()
        return True  # the server would keep it; the client must not reuse it

    async with ScriptedServer(old_style) as server:
        pool = pool_for(server.url)
        assert [(await post(pool))[:2] for _ in range(4)] == [(200, b"{}")] * 4
    assert server.connections == 4


async def test_a_server_that_closes_without_answering_is_a_transport_error(
    pool_for: Callable[..., Http1Pool],
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        return False

    async with ScriptedServer(hang_up) as server:
        pool = pool_for(server.url)
        with pytest.raises(RemoteProtocolError, match="without sending a response"):
            await post(pool)
        client = HttpRunnerClient(server.url, CAP)
        try:
            response = await client._post(RunnerRequest({}, {}), 5)
        finally:
            await client.close()
    assert response.transport_error == (
        "RemoteProtocolError: Server disconnected without sending a response."
    )


async def test_a_server_that_stops_in_the_body_is_a_transport_error(
    pool_for: Callable[..., Http1Pool],
) -> None:
    async def short_body(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(OK_HEAD + b"Content-Length: 100\r\n\r\n{}")
        await writer.drain()
        return False

    async with ScriptedServer(short_body) as server:
        with pytest.raises(RemoteProtocolError, match="in the response body"):
            await post(pool_for(server.url))


def chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    return OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n" + trailer + b"\r\n"


async def test_chunked_bodies_are_joined_and_the_connection_kept(
    pool_for: Callable[..., Http1Pool],
) -> None:
    async def send_chunks(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        trailer = b"X-Checksum: 1\r\n" if n == 2 else b""
        writer.write(chunked(b'{"status"', b":200", b"}", trailer=trailer))
        await writer.drain()
        return True

    async with ScriptedServer(send_chunks) as server:
        pool = pool_for(server.url)
        for _ in range(3):
            assert await post(pool) == (200, b'{"status":200}', False)
    assert server.connections == 1


@pytest.mark.parametrize("size", [CAP, CAP + 1])
@pytest.mark.parametrize("framing", ["content-length", "chunked", "close"])
async def test_bodies_over_the_cap_are_cut_off_and_the_connection_dropped(
    pool_for: Callable[..., Http1Pool], size: int, framing: str
) -> None:
    async def send_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        body = b"x" * size
        if framing == "content-length":
            writer.write(OK_HEAD + b"Content-Length: %d\r\n\r\n" % size + body)
        elif framing == "chunked":
            writer.write(chunked(body[: size // 2], body[size // 2 :]))
        else:
            writer.write(OK_HEAD + b"\r\n" + body)
        await writer.drain()
        return framing != "close"

    async with ScriptedServer(send_body) as server:
        pool = pool_for(server.url)
        status, body, oversize = await post(pool)
        assert (status, oversize) == (200, size > CAP)
        assert len(body) <= CAP + 1
        if not oversize:
            assert body == b"x" * size
        assert (await post(pool))[0] == 200
    kept = framing != "close" and size <= CAP
    assert server.connections == (1 if kept else 2)


async def test_a_runner_that_trickles_bytes_times_out_and_its_connection_is_dropped() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n > 1:
            return await reply(writer)
        writer.write(OK_HEAD + b"Content-Length: 50\r\n\r\n")
        for _ in range(50):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.02)
        return True

    async with ScriptedServer(trickle) as server:
        client = HttpRunnerClient(server.url, CAP)
        try:
            late = await client._post(RunnerRequest({}, {}), 0.3)
            on_time = await client._post(RunnerRequest({}, {}), 5)
        finally:
            await client.close()
    assert late.transport_error == "Runner request timed out after 0.3 s"
    assert on_time.http_status == 200 and on_time.body == b'{"status":200}'
    assert server.connections == 2  # the cut-off exchange's connection was not reused


async def test_informational_responses_are_skipped(pool_for: Callable[..., Http1Pool]) -> None:
    async def continue_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await reply(writer, b"{}")

    async with ScriptedServer(continue_first) as server:
        assert await post(pool_for(server.url)) == (200, b"{}", False)


async def test_connections_are_bounded(pool_for: Callable[..., Http1Pool]) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.05)
        return await reply(writer)

    async with ScriptedServer(slow) as server:
        pool = pool_for(server.url, max_connections=3)
        results = await asyncio.gather(*(post(pool) for _ in range(12)))
    assert all(status == 200 for status, _, _ in results)
    assert server.most_open <= 3 and server.connections == 3


async def test_https_with_the_given_trust(pool_for: Callable[..., Http1Pool]) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with ScriptedServer(answer, server_context) as server:
        pool = pool_for(server.url, ssl_context=client_context)
        assert [(await post(pool))[0] for _ in range(3)] == [200] * 3
        assert server.connections == 1
        untrusted = pool_for(server.url)  # the system's trust store does not know this CA
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            await post(untrusted)


async def test_a_line_break_in_a_header_value_is_refused_before_sending(
    pool_for: Callable[..., Http1Pool],
) -> None:
    async with ScriptedServer(answer) as server:
        client = HttpRunnerClient(server.url, CAP)
        try:
            response = await client._post(
                RunnerRequest({}, {"x-alga-tenant": "t\r\nx-injected: 1"}), 5
            )
            unicode = await client._post(RunnerRequest({}, {"x-alga-tenant": "tenant-ü"}), 5)
        finally:
            await client.close()
    assert response.transport_error == (
        "LocalProtocolError: Illegal character in a request header."
    )
    assert unicode.http_status == 200
    assert len(server.requests) == 1 and "x-alga-tenant: tenant-ü" in server.requests[0].decode()
