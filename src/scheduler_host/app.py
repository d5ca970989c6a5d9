"""Composition root: builds the engine, use-case dependencies and the server from Settings."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler_host.adapters import migrations
from scheduler_host.adapters.db.dispatch_store import SqlDispatchStore
from scheduler_host.adapters.db.engine import POOL_SIZE, build_engine, database_answers
from scheduler_host.adapters.db.pg_pool import PgPool
from scheduler_host.adapters.db.pg_unit_of_work import (
    PgUnitOfWorkFactory,
    traced_connection_class,
)
from scheduler_host.adapters.db.service_keys import PAGE_TOKEN_KEY, load_key
from scheduler_host.adapters.db.unit_of_work import SqlUnitOfWorkFactory
from scheduler_host.adapters.runner_http import HttpRunnerClient
from scheduler_host.config import Settings
from scheduler_host.service.access import InstallContextCache
from scheduler_host.service.dispatch import RUN_HISTORY_LIMIT, DispatchDeps, Dispatcher
from scheduler_host.service.page_tokens import SignedPageTokens
from scheduler_host.service.ports import Clock, UnitOfWorkFactory
from scheduler_host.telemetry import (
    Metrics,
    build_metrics,
    serve_metrics,
    trace_database,
    tracer_provider_from_environment,
)
from scheduler_host.transport.server import RunningServer, start_server

log = logging.getLogger("scheduler_host")


class StartupError(RuntimeError):
    """The service cannot start; `str()` is the one line shown to the operator."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Application:
    settings: Settings
    engine: AsyncEngine
    deps: DispatchDeps
    server: RunningServer
    metrics: Metrics
    health_watch: asyncio.Task[None] | None = None
    stop_metrics: Callable[[], None] | None = None
    # PostgreSQL: the raw-asyncpg connections of the API's use cases (the engine serves the
    # migrations, the health watch, the page-token key and the dispatcher).
    api_pool: PgPool | None = None

    @property
    def dispatcher(self) -> Dispatcher:
        return self.deps.dispatcher

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self) -> None:
        if self.health_watch is not None:
            self.health_watch.cancel()
            await asyncio.gather(self.health_watch, return_exceptions=True)
        grace = self.settings.shutdown_grace_seconds
        # The dispatcher finishes or releases its claims within the same grace period.
        await asyncio.gather(self.server.stop(grace), self.dispatcher.stop(grace))
        await self.dispatcher.close()
        if self.api_pool is not None:
            await self.api_pool.close()
        await self.engine.dispose()
        if self.stop_metrics is not None:
            self.stop_metrics()


async def prepare_database(settings: Settings, *, migrate: bool) -> None:
    try:
        if migrate:
            await migrations.upgrade_database(settings.database_url)
        elif not await migrations.database_is_current(settings.database_url):
            raise StartupError(
                "the database is not migrated to this version; run `scheduler-host migrate` "
                "or start with `scheduler-host serve --migrate`"
            )
    except migrations.MigrationError as exc:
        raise StartupError(str(exc)) from None


async def watch_database(engine: AsyncEngine, server: RunningServer, interval: float) -> None:
    """Health follows the database: NOT_SERVING while it does not answer, SERVING once it does."""
    serving = True
    while True:
        await asyncio.sleep(interval)
        answers = await database_answers(engine, within=max(interval, 1.0))
        if answers != serving and not server.boundary.draining:
            serving = answers
            await server.set_serving(serving)
            log.warning(
                "database %s; health %s",
                *(("answers again", "SERVING") if serving else ("does not answer", "NOT_SERVING")),
            )


def api_pool_for(engine: AsyncEngine, tracer_provider: Any | None) -> PgPool | None:
    """On PostgreSQL, the API's own asyncpg pool, connected as the engine connects, as large as
    the engine's pool with its overflow; None on SQLite (the API keeps the engine there)."""
    if engine.dialect.name != "postgresql":
        return None
    _, params = engine.dialect.create_connect_args(engine.url)
    connection_class = None
    if tracer_provider is not None:
        from opentelemetry import trace

        tracer = trace.get_tracer("scheduler_host.db", tracer_provider=tracer_provider)
        connection_class = traced_connection_class(tracer, str(params.get("database") or ""))
    return PgPool(params, size=2 * POOL_SIZE, connection_class=connection_class)


async def start_application(
    settings: Settings,
    *,
    migrate: bool = False,
    clock: Clock = utc_now,
    listen: str | None = None,
    tracer_provider: Any | None = None,
) -> Application:
    """Build and start everything; `tracer_provider` overrides the one the OTEL_* variables give."""
    await prepare_database(settings, migrate=migrate)
    engine = build_engine(settings.database_url)
    metrics = build_metrics()
    tracer_provider = tracer_provider or tracer_provider_from_environment()
    if tracer_provider is not None:
        trace_database(engine.sync_engine, tracer_provider)
    install_cache = InstallContextCache(settings.install_cache_seconds)
    api_pool = api_pool_for(engine, tracer_provider)
    uow_factory: UnitOfWorkFactory = (
        SqlUnitOfWorkFactory(engine)
        if api_pool is None
        else PgUnitOfWorkFactory(api_pool, endpoint_cache=install_cache)
    )
    try:
        key = await load_key(engine, PAGE_TOKEN_KEY)
        dispatcher = Dispatcher(
            SqlDispatchStore(engine, RUN_HISTORY_LIMIT),
            HttpRunnerClient(settings.runner_base_url, settings.dispatch_max_in_flight),
            settings,
            clock,
            observe=metrics.record_run,
        )
        deps = DispatchDeps(
            uow_factory=uow_factory,
            settings=settings,
            clock=clock,
            page_tokens=SignedPageTokens(key),
            install_cache=install_cache,
            dispatcher=dispatcher,
        )
        try:
            server = await start_server(
                settings, deps, listen, metrics=metrics, tracer_provider=tracer_provider
            )
        except RuntimeError as exc:  # grpc reports a port it cannot bind this way
            await dispatcher.close()
            raise StartupError(f"cannot listen on {listen or settings.listen}: {exc}") from None
    except Exception:
        if api_pool is not None:
            await api_pool.close()
        await engine.dispose()
        raise
    app = Application(settings, engine, deps, server, metrics, api_pool=api_pool)
    if settings.metrics_listen:
        try:
            app.stop_metrics = serve_metrics(metrics, settings.metrics_listen)
        except OSError as exc:
            await app.stop()
            raise StartupError(
                f"cannot serve metrics on {settings.metrics_listen}: {exc}"
            ) from None
    app.health_watch = asyncio.create_task(
        watch_database(engine, server, settings.health_check_seconds), name="health-watch"
    )
    if settings.dispatcher_enabled:
        dispatcher.start()
    return app


async def serve(settings: Settings, *, migrate: bool) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    app = await start_application(settings, migrate=migrate)
    log.info("scheduler-host listening on %s (port %d)", settings.listen, app.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: grace period %.1f s", settings.shutdown_grace_seconds)
    await app.stop()
    log.info("stopped")
