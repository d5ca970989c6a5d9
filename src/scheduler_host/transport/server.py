"""The grpc.aio server: services, health, reflection, TLS, limits on load and graceful stop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from schedulerhost.v1 import (
    scheduler_admin_pb2,
    scheduler_admin_pb2_grpc,
    scheduler_host_pb2,
    scheduler_host_pb2_grpc,
)

from scheduler_host.config import Settings
from scheduler_host.service.deps import UseCaseDeps
from scheduler_host.service.dispatch import Dispatcher
from scheduler_host.telemetry import Metrics
from scheduler_host.transport.admin_servicer import SchedulerAdminServicer
from scheduler_host.transport.host_servicer import SchedulerHostServicer
from scheduler_host.transport.interceptors import (
    AdminAuth,
    ErrorBoundary,
    InterceptorChain,
    Quota,
    RateLimit,
    ReadLimit,
    RunnerAuth,
)

HOST_SERVICE_NAME = scheduler_host_pb2.DESCRIPTOR.services_by_name["SchedulerHost"].full_name
ADMIN_SERVICE_NAME = scheduler_admin_pb2.DESCRIPTOR.services_by_name["SchedulerAdmin"].full_name
SERVICE_NAMES = (HOST_SERVICE_NAME, ADMIN_SERVICE_NAME)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    boundary: ErrorBoundary
    port: int

    async def set_serving(self, serving: bool) -> None:
        state = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, state)

    async def stop(self, grace_seconds: float) -> None:
        """Health turns NOT_SERVING, new calls are refused, calls in flight get the grace period."""
        await self.set_serving(False)
        self.boundary.draining = True
        await self.server.stop(grace_seconds)


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    key = Path(settings.tls_key).read_bytes()
    cert = Path(settings.tls_cert).read_bytes()
    ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _options(settings: Settings, reuse_port: bool) -> list[tuple[str, Any]]:
    """Message size, keepalive in both directions, and connection age."""
    ms = 1000
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Off unless a group of workers shares the port: a second server must not silently take
        # half of another's calls.
        ("grpc.so_reuseport", int(reuse_port)),
        # The server pings idle connections, so a dead peer's connection is dropped.
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * ms)),
        ("grpc.keepalive_timeout_ms", 20 * ms),
        # Clients may ping no more often than this; a client that pings more is disconnected.
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(settings.min_client_ping_seconds * ms),
        ),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if settings.max_connection_age_seconds > 0:
        # Long-lived connections are closed (gracefully) now and then, so load spreads again
        # over the processes behind a balancer.
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * ms)),
            ("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace_seconds * ms)),
        ]
    return options


async def start_server(
    settings: Settings,
    deps: UseCaseDeps,
    dispatcher: Dispatcher,
    listen: str | None = None,
    *,
    metrics: Metrics | None = None,
    tracer_provider: Any | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    boundary = ErrorBoundary(metrics)
    links = [
        boundary,
        RunnerAuth(deps),
        AdminAuth(deps),
        ReadLimit(deps),
        RateLimit(deps),
        Quota(deps),
    ]
    chain: list[grpc.aio.ServerInterceptor] = [InterceptorChain(links)]
    if tracer_provider is not None:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        # First in the chain, so the span covers auth, limits and the database work.
        chain.insert(0, aio_server_interceptor(tracer_provider=tracer_provider))  # type: ignore[no-untyped-call]
    server = grpc.aio.server(
        interceptors=chain,
        options=_options(settings, reuse_port),
        # Calls beyond this are refused with RESOURCE_EXHAUSTED instead of queueing without end.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    scheduler_host_pb2_grpc.add_SchedulerHostServicer_to_server(SchedulerHostServicer(deps), server)
    scheduler_admin_pb2_grpc.add_SchedulerAdminServicer_to_server(
        SchedulerAdminServicer(deps, dispatcher), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    address = listen or settings.listen
    creds = _credentials(settings)
    port = (
        server.add_secure_port(address, creds)
        if creds is not None
        else server.add_insecure_port(address)
    )
    await server.start()
    running = RunningServer(server, health_servicer, boundary, port)
    await running.set_serving(True)
    return running
