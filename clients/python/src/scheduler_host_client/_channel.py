"""What both clients share: the channel, its retry policy, deadlines and error conversion."""

# `timeout` is the gRPC deadline of the call, named as grpc's own API names it.
# ruff: noqa: ASYNC109

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TypeVar

import grpc

from scheduler_host_client.errors import error_from_rpc

DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_ATTEMPTS = 3

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

Metadata = tuple[tuple[str, str], ...]

# Methods whose repetition is harmless after an UNAVAILABLE: every SchedulerHost call is one
# transaction (an UNAVAILABLE from the server means it was rolled back) and creates carry a
# request_id. RunScheduleNow calls the Runner, so it is never repeated by the channel.
_RETRIED_METHODS = (
    {"service": "schedulerhost.v1.SchedulerHost"},
    *(
        {"service": "schedulerhost.v1.SchedulerAdmin", "method": name}
        for name in (
            "UpsertInstall",
            "GetInstall",
            "DeleteInstall",
            "ListScheduleRuns",
            "GetSchedule",
            "ListSchedules",
        )
    ),
)


def service_config(max_attempts: int) -> str:
    """gRPC service config: UNAVAILABLE is retried with exponential backoff (0.2 s, 0.4 s, ...)."""
    if max_attempts <= 1:
        return json.dumps({})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": list(_RETRIED_METHODS),
                    "retryPolicy": {
                        "maxAttempts": min(max_attempts, 5),
                        "initialBackoff": "0.2s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    max_attempts: int,
    options: Sequence[tuple[str, str | int]] = (),
) -> grpc.aio.Channel:
    channel_options: list[tuple[str, str | int]] = [
        ("grpc.enable_retries", 1 if max_attempts > 1 else 0),
        ("grpc.service_config", service_config(max_attempts)),
        *options,
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=channel_options)
    return grpc.aio.secure_channel(target, credentials, options=channel_options)


class ClientBase:
    """A channel (owned when made from a target string), default deadline and call metadata."""

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        metadata: Metadata,
        *,
        credentials: grpc.ChannelCredentials | None,
        timeout: float | None,
        max_attempts: int,
        options: Sequence[tuple[str, str | int]],
    ) -> None:
        if isinstance(target, str):
            self._channel = open_channel(target, credentials, max_attempts, options)
            self._owns_channel = True
        else:
            if credentials is not None or options:
                raise ValueError("credentials and options apply only when a target string is given")
            self._channel = target
            self._owns_channel = False
        self._metadata = metadata
        self.timeout = timeout

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    async def close(self) -> None:
        """Closes the channel if this client opened it; a channel passed in is left open."""
        if self._owns_channel:
            await self._channel.close()

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        try:
            return await method(
                request,
                metadata=self._metadata,
                timeout=self.timeout if timeout is None else timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from error
