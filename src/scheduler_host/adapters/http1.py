"""A small HTTP/1.1 client on asyncio streams: keep-alive connections to one origin.

Made for one job, the Runner's `POST /v1/execute`: a bounded pool of persistent connections,
bodies with Content-Length, chunked or delimited by the close, and a cap on the body read. A
general client (httpx) spent most of the dispatcher's time on pool bookkeeping; this one does a
write and a couple of reads per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

# Longest status line plus headers accepted; a Runner sends a handful of short headers.
MAX_HEAD_BYTES = 64 * 1024
_STREAM_LIMIT = MAX_HEAD_BYTES + 1024
# Connections opened at the same time (the others wait, and may get one given back meanwhile).
MAX_CONNECTING = 16


class TransportError(Exception):
    """The exchange failed below HTTP; `str(exc)` names the kind, as in `ConnectError: ...`."""

    kind = "TransportError"

    def __str__(self) -> str:
        detail = super().__str__().strip()
        return f"{self.kind}: {detail}" if detail else self.kind


class ConnectError(TransportError):
    kind = "ConnectError"


class RemoteProtocolError(TransportError):
    kind = "RemoteProtocolError"


class LocalProtocolError(TransportError):
    kind = "LocalProtocolError"


class ReadError(TransportError):
    kind = "ReadError"


class WriteError(TransportError):
    kind = "WriteError"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    # The body was longer than the cap; `body` then holds only what was read.
    oversize: bool = False


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        # A server that closed an idle connection has left EOF (or an error) on it.
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class _ServerClosedIdle(Exception):
    """A reused connection was closed by the server before it answered anything."""


class Http1Pool:
    """Persistent HTTP/1.1 connections to the origin of `base_url`, at most `max_connections`.

    Not thread-safe; one event loop. Cancelling a call (a timeout) closes its connection, since
    the state of the exchange on it is unknown.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        default_port = self._port == (443 if self._https else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if default_port else f"{host}:{self._port}"
        self.base_path = parts.path.rstrip("/")
        self._ssl = (ssl_context or ssl.create_default_context()) if self._https else None
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._connecting = asyncio.Semaphore(MAX_CONNECTING)
        self._closed = False

    async def post(
        self, path: str, body: bytes, headers: dict[str, str], *, max_body_bytes: int
    ) -> Response:
        """POST `body` to base path + `path`; raises TransportError subclasses below HTTP."""
        head = [
            f"POST {self.base_path}{path} HTTP/1.1",
            f"Host: {self._host_header}",
            f"Content-Length: {len(body)}",
        ]
        head.extend(f"{name}: {value}" for name, value in headers.items())
        fields = "".join(headers) + "".join(headers.values())
        if "\r" in fields or "\n" in fields or "\x00" in fields:
            # A line break in a value would start a header (or a request) of its own.
            raise LocalProtocolError("Illegal character in a request header.")
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        async with self._slots:
            while True:
                connection, reused = await self._checkout()
                try:
                    response, keep = await self._exchange(connection, request, max_body_bytes)
                except _ServerClosedIdle:
                    # The server dropped a keep-alive connection as it was reused; it never
                    # saw the request, so sending it on a fresh connection is safe.
                    connection.close()
                    if reused:
                        continue
                    raise RemoteProtocolError(
                        "Server disconnected without sending a response."
                    ) from None
                except BaseException:
                    connection.close()
                    raise
                if keep and not self._closed:
                    self._idle.append(connection)
                else:
                    connection.close()
                return response

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            connection = self._idle.pop()
            connection.close()
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: least likely timed out
            if connection.usable():
                return connection
            connection.close()
        return None

    async def _checkout(self) -> tuple[_Connection, bool]:
        connection = self._take_idle()
        if connection is not None:
            return connection, True
        # A burst must not open hundreds of connections at once: a server's accept queue
        # overflows and the dropped connects wait a second for the SYN to be sent again.
        # Those that waited first look again for a connection another call has given back.
        async with self._connecting:
            connection = self._take_idle()
            if connection is not None:
                return connection, True
            try:
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                    limit=_STREAM_LIMIT,
                )
            except OSError as exc:
                raise ConnectError(str(exc) or type(exc).__name__) from exc
        return _Connection(reader, writer), False

    async def _exchange(
        self, connection: _Connection, request: bytes, max_body_bytes: int
    ) -> tuple[Response, bool]:
        reader, writer = connection.reader, connection.writer
        try:
            writer.write(request)
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise _ServerClosedIdle() from exc
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _ServerClosedIdle() from exc
                raise RemoteProtocolError("Server disconnected in the response head.") from exc
            except asyncio.LimitOverrunError as exc:
                raise RemoteProtocolError("Response head too large.") from exc
            except (ConnectionError, OSError) as exc:
                raise _ServerClosedIdle() from exc
            status, version, fields = _parse_head(head)
            if status >= 200 or status == 101:
                break
            # 1xx informational (100 Continue): the final response follows.
        try:
            return await self._read_body(reader, status, version, fields, max_body_bytes)
        except asyncio.IncompleteReadError as exc:
            raise RemoteProtocolError("Server disconnected in the response body.") from exc
        except (ConnectionError, OSError) as exc:
            raise ReadError(str(exc) or type(exc).__name__) from exc

    @staticmethod
    async def _read_body(
        reader: asyncio.StreamReader,
        status: int,
        version: str,
        fields: dict[str, str],
        max_body_bytes: int,
    ) -> tuple[Response, bool]:
        connection_tokens = {t.strip() for t in fields.get("connection", "").lower().split(",")}
        keep = (
            "keep-alive" in connection_tokens
            if version == "HTTP/1.0"
            else "close" not in connection_tokens
        )
        if status in (204, 304) or 100 <= status < 200:
            return Response(status, b""), keep
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return await _read_chunked(reader, status, max_body_bytes, keep)
        declared = fields.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise RemoteProtocolError(f"Bad Content-Length {declared!r}.")
            length = int(declared)
            if length > max_body_bytes:
                # Not read: the connection is dropped rather than drained.
                return Response(status, b"", oversize=True), False
            return Response(status, await reader.readexactly(length) if length else b""), keep
        # Delimited by the close of the connection.
        body = bytearray()
        while chunk := await reader.read(65536):
            body += chunk
            if len(body) > max_body_bytes:
                return Response(status, bytes(body), oversize=True), False
        return Response(status, bytes(body)), False


async def _read_chunked(
    reader: asyncio.StreamReader, status: int, max_body_bytes: int, keep: bool
) -> tuple[Response, bool]:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise RemoteProtocolError(f"Bad chunk size {size_text!r}.") from None
        if size == 0:
            # Trailer fields, if any, end with an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return Response(status, bytes(body)), keep
        if len(body) + size > max_body_bytes:
            rest = max_body_bytes + 1 - len(body)
            body += await reader.readexactly(rest)
            return Response(status, bytes(body), oversize=True), False
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise RemoteProtocolError("Chunk not followed by CRLF.")


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise RemoteProtocolError(f"Not an HTTP/1.x response: {lines[0][:80]!r}.")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise RemoteProtocolError(f"Bad header line {line[:80]!r}.")
        name = name.strip().lower()
        value = value.strip()
        # Repeated fields combine (RFC 9110 5.3); the ones read here are lists or single.
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return int(code), version, fields
