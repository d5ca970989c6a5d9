"""The Runner over HTTP: one `POST /v1/execute` per call, with a total deadline and a size cap."""

from __future__ import annotations

import asyncio
import json

from scheduler_host.adapters.http1 import Http1Pool, TransportError
from scheduler_host.service.ports import RunnerRequest, RunnerResponse

EXECUTE_PATH = "/v1/execute"


class HttpRunnerClient:
    """Keeps one pool of keep-alive connections to the Runner for the life of the application."""

    def __init__(self, base_url: str, max_response_bytes: int, max_connections: int = 200) -> None:
        self._max_bytes = max_response_bytes
        self._pool = Http1Pool(base_url, max_connections=max_connections)

    async def execute(self, request: RunnerRequest, timeout_seconds: float) -> RunnerResponse:
        body = json.dumps(request.body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **request.headers}
        try:
            # The deadline covers the whole exchange, so a Runner that trickles bytes cannot
            # stretch it.
            async with asyncio.timeout(timeout_seconds):
                response = await self._pool.post(
                    EXECUTE_PATH, body, headers, max_body_bytes=self._max_bytes
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
