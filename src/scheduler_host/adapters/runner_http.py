"""The Runner over HTTP: one `POST /v1/execute` per call, with a total deadline and a size cap."""

from __future__ import annotations

import asyncio
import logging

import httpx

from scheduler_host.service.ports import RunnerRequest, RunnerResponse

EXECUTE_PATH = "/v1/execute"

# httpx logs every request at INFO; the dispatcher already logs one line per run.
logging.getLogger("httpx").setLevel(logging.WARNING)


class HttpRunnerClient:
    """Keeps one connection pool to the Runner for the life of the application."""

    def __init__(self, base_url: str, max_response_bytes: int) -> None:
        self._url = base_url.rstrip("/") + EXECUTE_PATH
        self._max_bytes = max_response_bytes
        # The deadline is enforced around the whole exchange (asyncio.timeout), so a Runner that
        # trickles bytes cannot stretch it; httpx's per-phase timeouts are off.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
            trust_env=False,
        )

    async def execute(self, request: RunnerRequest, timeout_seconds: float) -> RunnerResponse:
        try:
            async with asyncio.timeout(timeout_seconds):
                return await self._exchange(request)
        except (TimeoutError, httpx.TimeoutException):
            return RunnerResponse(
                transport_error=f"Runner request timed out after {timeout_seconds:g} s"
            )
        except httpx.HTTPError as exc:
            detail = str(exc).strip()
            name = type(exc).__name__
            return RunnerResponse(transport_error=f"{name}: {detail}" if detail else name)
        except OSError as exc:
            return RunnerResponse(transport_error=f"{type(exc).__name__}: {exc}")

    async def _exchange(self, request: RunnerRequest) -> RunnerResponse:
        async with self._client.stream(
            "POST", self._url, json=request.body, headers=request.headers
        ) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                return RunnerResponse(http_status=response.status_code, oversize=True)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    # Stop reading: closing the stream drops the connection instead of draining.
                    return RunnerResponse(
                        http_status=response.status_code, body=bytes(body), oversize=True
                    )
            return RunnerResponse(http_status=response.status_code, body=bytes(body))

    async def close(self) -> None:
        await self._client.aclose()
