"""The server's interceptor chain: error boundary → auth → rate limit → quota → servicer.

Each link wraps the unary handlers of this service's methods; a method of ours of another kind
(streaming) is refused, so it cannot bypass the links. The servicers never read metadata. Links
raise domain errors; only the boundary turns them into a google.rpc.Status.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import grpc
from grpc_status import rpc_status

from scheduler_host.domain.errors import (
    MalformedRequest,
    NotSupported,
    SchedulerError,
    ShuttingDown,
)
from scheduler_host.domain.install import InstallContext
from scheduler_host.service import access
from scheduler_host.service.deps import UseCaseDeps
from scheduler_host.telemetry import Metrics
from scheduler_host.transport import status

log = logging.getLogger("scheduler_host.rpc")

HOST_SERVICE = "/schedulerhost.v1.SchedulerHost/"
ADMIN_SERVICE = "/schedulerhost.v1.SchedulerAdmin/"
MUTATING_METHODS = frozenset(
    HOST_SERVICE + m for m in ("CreateSchedule", "UpdateSchedule", "DeleteSchedule")
)
READ_METHODS = frozenset(
    HOST_SERVICE + m
    for m in (
        "GetSchedule",
        "ListSchedules",
        "GetEndpoints",
        "PreviewSchedule",
        "ListScheduleRuns",
    )
)
CREATE_METHOD = HOST_SERVICE + "CreateSchedule"
# Credentials and the install: a call that sends one twice is refused before anything else,
# since which of the two counts would be a guess.
SINGLE_VALUED_KEYS = frozenset({"x-runner-auth", "x-install-id", "authorization"})

Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # subscriptable for type checkers only
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"

current_install: contextvars.ContextVar[InstallContext] = contextvars.ContextVar("current_install")


def metadata_value(context: Context, key: str) -> str | None:
    """The first text value of `key` in the call's metadata (read once per call, then looked up)."""
    info = current_call.get(None)
    if info is None:
        return _metadata_of(context).get(key)
    if info.metadata is None:
        info.metadata = _metadata_of(context)
    return info.metadata.get(key)


def _metadata_of(context: Context) -> dict[str, str]:
    found: dict[str, str] = {}
    for k, v in context.invocation_metadata() or ():
        if k in found and k in SINGLE_VALUED_KEYS:
            raise MalformedRequest(f"metadata {k} is sent more than once")
        if isinstance(v, str):
            found.setdefault(k, v)
        else:
            found.setdefault(k, "")  # binary (-bin) values are never a credential or an id
    return found


class _Link:
    """One link of the chain: `around` runs for the methods `applies` selects, which are those
    under `services`, or only those named in `methods` when a link sets it."""

    services: tuple[str, ...] = (HOST_SERVICE, ADMIN_SERVICE)
    methods: frozenset[str] | None = None

    def applies(self, method: str) -> bool:
        if self.methods is not None:
            return method in self.methods
        return method.startswith(self.services)

    async def around(self, method: str, request: Any, context: Context, inner: Behavior) -> Any:
        raise NotImplementedError

    def deserializer(self, decode: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        return decode

    def bind(self, method: str, inner: Behavior) -> Behavior:
        around = self.around

        async def behavior(request: Any, context: Context) -> Any:
            return await around(method, request, context, inner)

        return behavior


class InterceptorChain(grpc.aio.ServerInterceptor):
    """The links as one grpc.aio interceptor, outermost first.

    A method's wrapped handler is built once and reused: grpc.aio asks the interceptors for a
    handler on every call, and building one per link per call was measurable per-call overhead.
    """

    def __init__(self, links: Sequence[_Link]) -> None:
        self._links = tuple(links)
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = cast(str, getattr(handler_call_details, "method", ""))
        if handler is None:
            return handler
        if handler.unary_unary is None:
            if method.startswith((HOST_SERVICE, ADMIN_SERVICE)):
                return _refusing(handler)
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        links = [link for link in self._links if link.applies(method)]
        if not links:
            return handler
        behavior = cast(Behavior, handler.unary_unary)
        decode = handler.request_deserializer
        for link in reversed(links):
            behavior = link.bind(method, behavior)
            decode = link.deserializer(decode)
        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=decode,
            response_serializer=handler.response_serializer,
        )


def _refusing(handler: Handler) -> Handler:
    """A handler of the same kind that answers UNIMPLEMENTED / NOT_SUPPORTED."""
    st = status.to_status(NotSupported("streaming methods are not supported by this server"))

    async def refuse(_request: Any, context: Context) -> Any:
        await abort_with(context, st)

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **kw)
    return grpc.stream_stream_rpc_method_handler(refuse, **kw)


class _Malformed:
    """Stands in for a request whose bytes did not decode, so the boundary can answer it."""


_MALFORMED = _Malformed()


async def abort_with(context: Context, st: Any) -> None:
    converted = rpc_status.to_status(st)
    await context.abort(converted.code, converted.details, converted.trailing_metadata)


@dataclass
class CallInfo:
    """What the log line and metrics of one call say; inner links fill in the install."""

    operation: str
    request_id: str = ""
    install: InstallContext | None = None
    tenant_id: str = ""
    metadata: dict[str, str] | None = None

    @property
    def install_id(self) -> str:
        # Made into text only for a line that is written (str of a UUID is pure Python).
        return "" if self.install is None else str(self.install.install_id)


current_call: contextvars.ContextVar[CallInfo] = contextvars.ContextVar("current_call")


class ErrorBoundary(_Link):
    """Outermost link: undecodable requests, domain errors and crashes become a Status, and
    every call is reported once (a log line and the API metrics)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.draining = False
        self._metrics = metrics

    def deserializer(self, decode: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        def tolerant_decode(data: bytes) -> Any:
            # grpc.aio would answer UNKNOWN with the exception text; the boundary answers instead.
            try:
                return decode(data) if decode else data
            except Exception:
                return _MALFORMED

        return tolerant_decode

    async def around(self, method: str, request: Any, context: Context, inner: Behavior) -> Any:
        info = CallInfo(operation=method.rsplit("/", 1)[-1])
        token = current_call.set(info)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if self.draining:
                raise ShuttingDown()
            # A caller's id is kept; otherwise a random one.
            info.request_id = metadata_value(context, "x-request-id") or _new_request_id()
            if request is _MALFORMED:
                raise MalformedRequest("the request bytes do not decode as the method's message")
            return await inner(request, context)
        except grpc.aio.AbortError:
            code = grpc.StatusCode.UNKNOWN  # not reached: every abort goes through this link
            raise
        except SchedulerError as error:
            code = status.code_of(error)
            await abort_with(context, status.to_status(error))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error", extra=_fields(info))
            await abort_with(context, status.internal_status())
        finally:
            current_call.reset(token)
            if not info.request_id:  # refused before its metadata could be read
                info.request_id = _new_request_id()
            self._report(info, code, time.perf_counter() - started)

    def _report(self, info: CallInfo, code: grpc.StatusCode, seconds: float) -> None:
        name = code.name
        if self._metrics is not None:
            self._metrics.record_call(info.operation, info.tenant_id, name, seconds)
        # The record and its fields are built only for a line that is written.
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %.1f ms",
                info.operation,
                name,
                seconds * 1000,
                extra={**_fields(info), "grpc_code": name, "duration_ms": round(seconds * 1000, 3)},
            )


def _new_request_id() -> str:
    """32 hex digits that tell one call's lines apart. A correlation id, not a secret: the
    process's PRNG (reseeded in a forked child) serves, where os.urandom was a system call on
    every call that came without an id (uuid4's object cost more still)."""
    return f"{random.getrandbits(128):032x}"


def _fields(info: CallInfo) -> dict[str, str]:
    return {
        "request_id": info.request_id,
        "install_id": info.install_id,
        "tenant_id": info.tenant_id,
        "operation": info.operation,
    }


class _UseCaseLink(_Link):
    """A link that calls the use cases (access checks, counters) with their dependencies."""

    def __init__(self, deps: UseCaseDeps) -> None:
        self._deps = deps


class RunnerAuth(_UseCaseLink):
    """SchedulerHost: runner token, then the install named by x-install-id and its rights."""

    services = (HOST_SERVICE,)

    async def around(self, method: str, request: Any, context: Context, inner: Behavior) -> Any:
        deps = self._deps
        access.check_token(metadata_value(context, "x-runner-auth"), deps.access.runner_tokens)
        ctx = await access.authorize_install(
            metadata_value(context, "x-install-id"),
            uow_factory=deps.uow_factory,
            cache=deps.install_cache,
        )
        info = current_call.get(None)
        if info is not None:
            info.install, info.tenant_id = ctx, ctx.tenant_id
        token = current_install.set(ctx)
        try:
            return await inner(request, context)
        finally:
            current_install.reset(token)


class AdminAuth(_UseCaseLink):
    """SchedulerAdmin: `authorization: Bearer <admin token>`; runner tokens are not accepted."""

    services = (ADMIN_SERVICE,)

    async def around(self, method: str, request: Any, context: Context, inner: Behavior) -> Any:
        token = access.bearer_token(metadata_value(context, "authorization"))
        access.check_token(token, self._deps.access.admin_tokens)
        return await inner(request, context)


class RateLimit(_UseCaseLink):
    """Mutating SchedulerHost calls per install per rolling minute, counted in the database."""

    methods = MUTATING_METHODS

    async def around(self, method: str, request: Any, context: Context, inner: Behavior) -> Any:
        ctx = current_install.get()
        await access.count_call(
            access.mutations_scope(ctx.install_id),
            ctx.tenant_id,
            self._deps.access.mutations_per_minute,
            "changes to schedules",
            uow_factory=self._deps.uow_factory,
            clock=self._deps.clock,
        )
        return await inner(request, context)


class ReadLimit(_UseCaseLink):
    """Reads per install per rolling minute, counted in this process (it protects the process)."""

    methods = READ_METHODS

    async def around(self, method: str, request: Any, context: Context, inner: Behavior) -> Any:
        self._deps.read_limiter.hit(current_install.get().install_id)
        return await inner(request, context)


class Quota(_UseCaseLink):
    """Refuses CreateSchedule early when the install is full (the transaction re-checks)."""

    methods = frozenset({CREATE_METHOD})

    async def around(self, method: str, request: Any, context: Context, inner: Behavior) -> Any:
        await access.check_quota_early(
            current_install.get(),
            request.request_id,
            self._deps.schedules.max_schedules_per_install,
            uow_factory=self._deps.uow_factory,
            clock=self._deps.clock,
        )
        return await inner(request, context)
