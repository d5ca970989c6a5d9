"""The grpc.aio server: services, health, reflection, TLS, limits and graceful stop."""

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
from scheduler_host.telemetry import Metrics
from scheduler_host.transport.admin_servicer import SchedulerAdminServicer
from scheduler_host.transport.host_servicer import SchedulerHostServicer
from scheduler_host.transport.interceptors import (
    AdminAuth,
    ErrorBoundary,
    InterceptorChain,
    Quota,
    RateLimit,
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


async def start_server(
    settings: Settings,
    deps: UseCaseDeps,
    listen: str | None = None,
    *,
    metrics: Metrics | None = None,
    tracer_provider: Any | None = None,
) -> RunningServer:
    boundary = ErrorBoundary(metrics)
    chain: list[grpc.aio.ServerInterceptor] = [
        InterceptorChain(
            [boundary, RunnerAuth(deps), AdminAuth(deps), RateLimit(deps), Quota(deps)]
        )
    ]
    if tracer_provider is not None:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        # First in the chain, so the span covers auth, limits and the database work.
        chain.insert(0, aio_server_interceptor(tracer_provider=tracer_provider))  # type: ignore[no-untyped-call]
    server = grpc.aio.server(
        interceptors=chain,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    scheduler_host_pb2_grpc.add_SchedulerHostServicer_to_server(SchedulerHostServicer(deps), server)
    scheduler_admin_pb2_grpc.add_SchedulerAdminServicer_to_server(
        SchedulerAdminServicer(deps), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
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
