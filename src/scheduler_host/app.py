"""Composition root: from Settings, the database (the configured one or the embedded default),
the one pool, the use cases' dependencies and policies, the dispatcher and the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from scheduler_host.adapters import migrations
from scheduler_host.adapters.db.dispatch_store import PgDispatchStore
from scheduler_host.adapters.db.pool import DatabasePool, DatabaseProbe
from scheduler_host.adapters.db.service_keys import PAGE_TOKEN_KEY, load_key
from scheduler_host.adapters.db.unit_of_work import PgUnitOfWorkFactory, traced_connection_class
from scheduler_host.adapters.embedded_postgres import EmbeddedPostgres, EmbeddedPostgresMissing
from scheduler_host.adapters.runner_http import HttpRunnerClient
from scheduler_host.config import Settings
from scheduler_host.domain.errors import DatabaseUnavailable
from scheduler_host.service.access import InstallContextCache, ReadLimiter
from scheduler_host.service.deps import UseCaseDeps
from scheduler_host.service.dispatch import RUN_HISTORY_LIMIT, Dispatcher
from scheduler_host.service.housekeeping import prune_periodically
from scheduler_host.service.page_tokens import SignedPageTokens
from scheduler_host.service.policies import AccessPolicy, DispatchPolicy, SchedulePolicy
from scheduler_host.service.ports import Clock
from scheduler_host.telemetry import (
    Metrics,
    build_metrics,
    serve_metrics,
    tracer_provider_from_environment,
)
from scheduler_host.transport.server import RunningServer, start_server

log = logging.getLogger("scheduler_host")


class StartupError(RuntimeError):
    """The service cannot start; `str()` is the one line shown to the operator."""


def utc_now() -> datetime:
    return datetime.now(UTC)


# Policy fields named otherwise than the setting they are read from; every other field has the
# setting's name.
_SETTING_OF_POLICY_FIELD = {
    "mutations_per_minute": "rate_limit_per_minute",
    "reads_per_minute": "read_limit_per_minute",
    "lease_margin_seconds": "dispatch_lease_margin_seconds",
    "poll_seconds": "dispatch_poll_seconds",
    "batch_size": "dispatch_batch_size",
    "max_in_flight": "dispatch_max_in_flight",
}


_Policy = TypeVar("_Policy", SchedulePolicy, AccessPolicy, DispatchPolicy)


def _policy(policy: type[_Policy], settings: Settings) -> _Policy:
    """`policy` with each field read from its setting."""
    return policy(
        **{
            f.name: getattr(settings, _SETTING_OF_POLICY_FIELD.get(f.name, f.name))
            for f in fields(policy)
        }
    )


def schedule_policy(settings: Settings) -> SchedulePolicy:
    return _policy(SchedulePolicy, settings)


def access_policy(settings: Settings) -> AccessPolicy:
    return _policy(AccessPolicy, settings)


def dispatch_policy(settings: Settings) -> DispatchPolicy:
    return _policy(DispatchPolicy, settings)


@dataclass
class Application:
    settings: Settings
    database_url: str
    pool: DatabasePool
    deps: UseCaseDeps
    dispatcher: Dispatcher
    server: RunningServer
    metrics: Metrics
    embedded: EmbeddedPostgres | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop_metrics: Callable[[], None] | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        grace = self.settings.shutdown_grace_seconds
        # The dispatcher finishes or releases its claims within the same grace period.
        await asyncio.gather(self.server.stop(grace), self.dispatcher.stop(grace))
        await self.dispatcher.close()
        await self.pool.close()
        if self.stop_metrics is not None:
            self.stop_metrics()
        if self.embedded is not None:
            await self.embedded.stop()


async def database_url(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """The configured URL, or the embedded PostgreSQL's (started here)."""
    if settings.database_url:
        return settings.database_url, None
    embedded = EmbeddedPostgres(settings.embedded_data_dir)
    try:
        return await embedded.start(), embedded
    except EmbeddedPostgresMissing as exc:
        raise StartupError(str(exc)) from None
    except Exception as exc:
        raise StartupError(f"cannot start the embedded PostgreSQL: {exc}") from None


async def migrate_database(settings: Settings) -> None:
    """`scheduler-host migrate`: the configured database, or the embedded one (started for it)."""
    url, embedded = await database_url(settings)
    try:
        await migrations.upgrade_database(url)
    finally:
        if embedded is not None:
            await embedded.stop()


async def prepare_database(url: str, *, migrate: bool) -> None:
    try:
        if migrate:
            await migrations.upgrade_database(url)
        elif not await migrations.database_is_current(url):
            raise StartupError(
                "the database is not migrated to this version; run `scheduler-host migrate` "
                "or start with `scheduler-host serve --migrate`"
            )
    except migrations.MigrationError as exc:
        raise StartupError(str(exc)) from None


async def watch_database(probe: DatabaseProbe, server: RunningServer, interval: float) -> None:
    """Health follows the database: NOT_SERVING while it does not answer, SERVING once it does."""
    serving = True
    try:
        while True:
            await asyncio.sleep(interval)
            answers = await probe.answers(within=max(interval, 1.0))
            if answers != serving and not server.boundary.draining:
                serving = answers
                await server.set_serving(serving)
                log.warning(
                    "database %s; health %s",
                    *(
                        ("answers again", "SERVING")
                        if serving
                        else ("does not answer", "NOT_SERVING")
                    ),
                )
    finally:
        await probe.close()


async def open_pool(settings: Settings, url: str, tracer_provider: Any | None) -> DatabasePool:
    connection_class: Any = None
    if tracer_provider is not None:
        from opentelemetry import trace

        tracer = trace.get_tracer("scheduler_host.db", tracer_provider=tracer_provider)
        connection_class = traced_connection_class(tracer, url.rpartition("/")[2].split("?")[0])
    try:
        return await DatabasePool.open(
            url,
            size=settings.db_pool_size,
            max_waiters=settings.db_pool_max_waiters,
            acquire_timeout=settings.db_acquire_timeout_seconds,
            **({"connection_class": connection_class} if connection_class else {}),
        )
    except DatabaseUnavailable as exc:
        raise StartupError(f"cannot connect to the database: {exc.__cause__ or exc}") from None


def _warn_about_exposure(settings: Settings) -> None:
    if not settings.listens_on_loopback and not settings.tls_cert:
        log.warning(
            "listening on %s without TLS: calls and tokens cross the network in clear text "
            "unless a proxy or mesh in front terminates TLS (SCHEDULER_HOST_TLS_CERT/_KEY)",
            settings.listen,
        )


async def start_application(
    settings: Settings,
    *,
    migrate: bool = False,
    clock: Clock = utc_now,
    listen: str | None = None,
    tracer_provider: Any | None = None,
    reuse_port: bool = False,
) -> Application:
    """Build and start everything; `tracer_provider` overrides the one the OTEL_* variables give."""
    url, embedded = await database_url(settings)
    try:
        return await _start(
            settings, url, embedded, migrate, clock, listen, tracer_provider, reuse_port
        )
    except BaseException:
        if embedded is not None:
            await embedded.stop()
        raise


async def use_case_deps(settings: Settings, pool: DatabasePool, clock: Clock) -> UseCaseDeps:
    """What the use cases need: units of work on `pool`, the shared caches and the policies."""
    install_cache = InstallContextCache(settings.install_cache_seconds)
    return UseCaseDeps(
        uow_factory=PgUnitOfWorkFactory(pool, endpoint_cache=install_cache),
        clock=clock,
        page_tokens=SignedPageTokens(await load_key(pool, PAGE_TOKEN_KEY)),
        install_cache=install_cache,
        read_limiter=ReadLimiter(settings.read_limit_per_minute),
        schedules=schedule_policy(settings),
        access=access_policy(settings),
    )


def build_dispatcher(
    settings: Settings, pool: DatabasePool, clock: Clock, metrics: Metrics
) -> Dispatcher:
    """The dispatcher on its own connections of `pool`, calling the Runner over HTTP."""
    return Dispatcher(
        PgDispatchStore(pool, RUN_HISTORY_LIMIT, settings.dispatch_connections),
        HttpRunnerClient(
            settings.runner_base_url,
            settings.dispatch_max_in_flight,
            call_token=settings.runner_call_token or None,
        ),
        dispatch_policy(settings),
        clock,
        observe=metrics.record_run,
    )


async def _serve_metrics(app: Application) -> None:
    """The Prometheus endpoint, when configured; the whole application stops if it cannot."""
    listen = app.settings.metrics_listen
    if not listen:
        return
    try:
        app.stop_metrics = serve_metrics(app.metrics, listen)
    except OSError as exc:
        await app.stop()
        raise StartupError(f"cannot serve metrics on {listen}: {exc}") from None


def _start_background_tasks(app: Application, clock: Clock) -> None:
    """Health that follows the database, housekeeping, and the dispatcher when enabled."""
    settings = app.settings
    app.tasks.append(
        asyncio.create_task(
            watch_database(
                DatabaseProbe(app.database_url), app.server, settings.health_check_seconds
            ),
            name="health-watch",
        )
    )
    app.tasks.append(
        asyncio.create_task(
            prune_periodically(uow_factory=app.deps.uow_factory, clock=clock), name="housekeeping"
        )
    )
    if settings.dispatcher_enabled:
        app.dispatcher.start()


async def _start(
    settings: Settings,
    url: str,
    embedded: EmbeddedPostgres | None,
    migrate: bool,
    clock: Clock,
    listen: str | None,
    tracer_provider: Any | None,
    reuse_port: bool,
) -> Application:
    await prepare_database(url, migrate=migrate)
    metrics = build_metrics()
    tracer_provider = tracer_provider or tracer_provider_from_environment()
    pool = await open_pool(settings, url, tracer_provider)
    deps = await use_case_deps(settings, pool, clock)
    dispatcher = build_dispatcher(settings, pool, clock, metrics)
    try:
        server = await start_server(
            settings,
            deps,
            dispatcher,
            listen,
            metrics=metrics,
            tracer_provider=tracer_provider,
            reuse_port=reuse_port,
        )
    except RuntimeError as exc:  # grpc reports a port it cannot bind this way
        await dispatcher.close()
        await pool.close()
        raise StartupError(f"cannot listen on {listen or settings.listen}: {exc}") from None
    app = Application(settings, url, pool, deps, dispatcher, server, metrics, embedded)
    await _serve_metrics(app)
    _warn_about_exposure(settings)
    _start_background_tasks(app, clock)
    return app


async def serve(settings: Settings, *, migrate: bool, reuse_port: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully; `reuse_port` when other processes of a
    group (serve --workers) listen on the same port."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await start_application(settings, migrate=migrate, reuse_port=reuse_port)
    log.info("scheduler-host listening on %s (port %d)", settings.listen, app.port)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    log.info("stopping: grace period %.1f s", settings.shutdown_grace_seconds)
    await app.stop()
    log.info("stopped")
