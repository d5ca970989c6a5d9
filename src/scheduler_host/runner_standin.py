"""A stand-in Runner on loopback for `scheduler-host dev` and tests: answers `POST /v1/execute`.

It logs each execution it receives; a `responder` decides the answer (tests script failures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("scheduler_host.runner_standin")

_MAX_REQUEST_BYTES = 4 * 1024 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}


@dataclass(frozen=True)
class Execution:
    """One `POST /v1/execute` as received: headers (lower-case names) and the JSON body."""

    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float = field(default_factory=time.monotonic)

    @property
    def context(self) -> dict[str, Any]:
        context = self.body.get("context")
        return context if isinstance(context, dict) else {}

    @property
    def schedule_id(self) -> str:
        return str(self.context.get("schedule_id", ""))

    @property
    def idempotency_key(self) -> str:
        return self.headers.get("x-idempotency-key", "")


@dataclass(frozen=True)
class Reply:
    """What the stand-in answers; the default is the Runner's success envelope."""

    status: int = 200
    body: bytes = b'{"status":200,"headers":{},"body":null}'
    content_type: str = "application/json"
    # Send the body without Content-Length and close after it (a streamed body of unknown size).
    omit_length: bool = False


Responder = Callable[[Execution], Awaitable[Reply]]


async def answer_success(_execution: Execution) -> Reply:
    return Reply()


class StandInRunner:
    """An HTTP/1.1 server (keep-alive, Content-Length bodies) with one useful route."""

    def __init__(self, responder: Responder = answer_success) -> None:
        self.responder = responder
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        # A dispatcher's burst opens many connections at once; asyncio's default queue is 100.
        self._server = await asyncio.start_server(self._connection, host, port, backlog=1024)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the client went away or spoke something other than HTTP/1.1
        except asyncio.CancelledError:
            # stop(): end quietly; asyncio's stream callback would log a cancelled handler.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection stays open for another."""
        request_line = await reader.readline()
        if not request_line:
            return False
        method, path, _ = request_line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > _MAX_REQUEST_BYTES:
            await self._write(writer, Reply(413, b'{"error":"too large"}'), close=True)
            return False
        raw = await reader.readexactly(length) if length else b""
        keep_alive = headers.get("connection", "").lower() != "close"
        if method != "POST" or path.split("?")[0] != "/v1/execute":
            await self._write(writer, Reply(404, b'{"error":"not found"}'), close=not keep_alive)
            return keep_alive
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await self._write(writer, Reply(400, b'{"error":"bad json"}'), close=not keep_alive)
            return keep_alive
        execution = Execution(headers, body)
        http = body.get("http")
        if not isinstance(http, dict):
            http = {}
        log.info(
            "runner stand-in: execute %s %s for tenant %s install %s schedule %s "
            "(trigger %s, idempotency key %s)",
            http.get("method"),
            http.get("path"),
            execution.context.get("tenant_id"),
            execution.context.get("install_id"),
            execution.schedule_id,
            execution.context.get("trigger"),
            execution.idempotency_key,
        )
        reply = await self.responder(execution)
        await self._write(writer, reply, close=not keep_alive or reply.omit_length)
        return keep_alive and not reply.omit_length

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, reply: Reply, *, close: bool) -> None:
        reason = _REASONS.get(reply.status, "Status")
        length = "" if reply.omit_length else f"Content-Length: {len(reply.body)}\r\n"
        head = (
            f"HTTP/1.1 {reply.status} {reason}\r\n"
            f"Content-Type: {reply.content_type}\r\n{length}"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + reply.body)
        await writer.drain()
