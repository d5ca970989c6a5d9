"""The server's interceptor chain: error boundary → auth → rate limit → quota → servicer.

Each link wraps the unary handlers of this service's methods; the servicers never read metadata.
Links raise domain errors; only the boundary turns them into a google.rpc.Status.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
from grpc_status import rpc_status

from scheduler_host.domain.errors import MalformedRequest, SchedulerError, ShuttingDown
from scheduler_host.domain.install import InstallContext
from scheduler_host.service import access
from scheduler_host.service.deps import UseCaseDeps
from scheduler_host.transport import status

log = logging.getLogger("scheduler_host.rpc")

HOST_SERVICE = "/schedulerhost.v1.SchedulerHost/"
ADMIN_SERVICE = "/schedulerhost.v1.SchedulerAdmin/"
MUTATING_METHODS = frozenset(
    HOST_SERVICE + m for m in ("CreateSchedule", "UpdateSchedule", "DeleteSchedule")
)
CREATE_METHOD = HOST_SERVICE + "CreateSchedule"

Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # subscriptable for type checkers only
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"

current_install: contextvars.ContextVar[InstallContext] = contextvars.ContextVar("current_install")


def metadata_value(context: Context, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


class _Link(grpc.aio.ServerInterceptor):
    """One link of the chain: `around` runs for the methods `applies` selects."""

    def applies(self, method: str) -> bool:
        return method.startswith((HOST_SERVICE, ADMIN_SERVICE))

    async def around(self, request: Any, context: Context, inner: Behavior) -> Any:
        raise NotImplementedError

    def deserializer(self, handler: Handler) -> Callable[[bytes], Any] | None:
        return handler.request_deserializer

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = cast(str, getattr(handler_call_details, "method", ""))
        if handler is None or handler.unary_unary is None or not self.applies(method):
            return handler
        inner = cast(Behavior, handler.unary_unary)

        async def behavior(request: Any, context: Context) -> Any:
            return await self.around(request, context, inner)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=self.deserializer(handler),
            response_serializer=handler.response_serializer,
        )


class _Malformed:
    """Stands in for a request whose bytes did not decode, so the boundary can answer it."""


_MALFORMED = _Malformed()


async def abort_with(context: Context, st: Any) -> None:
    converted = rpc_status.to_status(st)
    await context.abort(converted.code, converted.details, converted.trailing_metadata)


class ErrorBoundary(_Link):
    """Outermost link: undecodable requests, domain errors and crashes become a Status."""

    def __init__(self) -> None:
        self.draining = False

    def deserializer(self, handler: Handler) -> Callable[[bytes], Any]:
        decode = handler.request_deserializer

        def tolerant_decode(data: bytes) -> Any:
            # grpc.aio would answer UNKNOWN with the exception text; the boundary answers instead.
            try:
                return decode(data) if decode else data
            except Exception:
                return _MALFORMED

        return tolerant_decode

    async def around(self, request: Any, context: Context, inner: Behavior) -> Any:
        try:
            if self.draining:
                raise ShuttingDown()
            if request is _MALFORMED:
                raise MalformedRequest("the request bytes do not decode as the method's message")
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except SchedulerError as error:
            await abort_with(context, status.to_status(error))
        except Exception:
            log.exception("unhandled error")
            await abort_with(context, status.internal_status())


class RunnerAuth(_Link):
    """SchedulerHost: runner token, then the install named by x-install-id and its rights."""

    def __init__(self, deps: UseCaseDeps) -> None:
        self._deps = deps

    def applies(self, method: str) -> bool:
        return method.startswith(HOST_SERVICE)

    async def around(self, request: Any, context: Context, inner: Behavior) -> Any:
        deps = self._deps
        access.check_token(metadata_value(context, "x-runner-auth"), deps.settings.runner_tokens)
        ctx = await access.authorize_install(
            metadata_value(context, "x-install-id"),
            uow_factory=deps.uow_factory,
            cache=deps.install_cache,
        )
        token = current_install.set(ctx)
        try:
            return await inner(request, context)
        finally:
            current_install.reset(token)


class AdminAuth(_Link):
    """SchedulerAdmin: `authorization: Bearer <admin token>`; runner tokens are not accepted."""

    def __init__(self, deps: UseCaseDeps) -> None:
        self._deps = deps

    def applies(self, method: str) -> bool:
        return method.startswith(ADMIN_SERVICE)

    async def around(self, request: Any, context: Context, inner: Behavior) -> Any:
        token = access.bearer_token(metadata_value(context, "authorization"))
        access.check_token(token, (self._deps.settings.admin_token,))
        return await inner(request, context)


class RateLimit(_Link):
    """Mutating SchedulerHost calls per install per rolling minute, counted in the database."""

    def __init__(self, deps: UseCaseDeps) -> None:
        self._deps = deps

    def applies(self, method: str) -> bool:
        return method in MUTATING_METHODS

    async def around(self, request: Any, context: Context, inner: Behavior) -> Any:
        ctx = current_install.get()
        await access.count_call(
            f"mutations:{ctx.install_id}",
            ctx.tenant_id,
            self._deps.settings.rate_limit_per_minute,
            "changes to schedules",
            uow_factory=self._deps.uow_factory,
            clock=self._deps.clock,
        )
        return await inner(request, context)


class Quota(_Link):
    """Refuses CreateSchedule early when the install is full (the transaction re-checks)."""

    def __init__(self, deps: UseCaseDeps) -> None:
        self._deps = deps

    def applies(self, method: str) -> bool:
        return method == CREATE_METHOD

    async def around(self, request: Any, context: Context, inner: Behavior) -> Any:
        await access.check_quota_early(
            current_install.get(),
            request.request_id,
            self._deps.settings.max_schedules_per_install,
            uow_factory=self._deps.uow_factory,
            clock=self._deps.clock,
        )
        return await inner(request, context)
