"""End-to-end fixtures: the real server on a loopback port over a migrated PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from scheduler_host.adapters.db.pool import DatabasePool
from scheduler_host.app import Application, start_application
from scheduler_host.config import Settings
from tests.support.postgres import PostgresServer, scratch_database
from tests.support.routing import unrouted
from tests.support.server import (
    ADMIN_TOKEN,
    RUNNER_TOKEN,
    SECOND_RUNNER_TOKEN,
    InstallHandle,
    Stubs,
    register_install,
)


@pytest.fixture(scope="session")
def e2e_database_url(postgres: PostgresServer) -> Iterator[str]:
    with scratch_database(postgres, prefix="scheduler_host_e2e") as name:
        yield postgres.url(name)


def e2e_settings(database_url: str, **overrides: object) -> Settings:
    base = Settings(
        database_url=database_url,
        listen="127.0.0.1:0",
        runner_tokens=(RUNNER_TOKEN, SECOND_RUNNER_TOKEN),
        admin_tokens=(ADMIN_TOKEN,),
        environment="test",
        # Most tests make many changes quickly; the rate-limit tests start their own server.
        rate_limit_per_minute=100_000,
        install_cache_seconds=0,
        dispatcher_enabled=False,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
async def app(e2e_database_url: str) -> AsyncIterator[Application]:
    application = await start_application(e2e_settings(e2e_database_url), migrate=True)
    yield application
    await application.stop()


@pytest.fixture(scope="session")
async def stubs(app: Application) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield Stubs(channel)


@pytest.fixture
async def install(stubs: Stubs) -> InstallHandle:
    """A fresh enabled install with the scheduler capability and the default endpoints."""
    return await register_install(stubs.admin)


@pytest.fixture
async def other_install(stubs: Stubs) -> InstallHandle:
    return await register_install(stubs.admin)


# --- every statement the end-to-end suite sends routes to one bucket ----------------------------

_SENT: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def statements_route_to_one_bucket() -> Iterator[None]:
    """Records every statement sent by the pools this process opens (asyncpg's query logger) and,
    when the session ends, fails on any that a sharded PostgreSQL could not route to one shard."""
    original = DatabasePool.open

    async def recording_open(url: str, **kwargs: Any) -> DatabasePool:
        pool = await original(url, **kwargs)
        await pool.add_query_logger(lambda logged: _SENT.add(logged.query))
        return pool

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabasePool, "open", recording_open)
        yield
    problems = {sql: why for sql in _SENT if (why := unrouted(sql)) is not None}
    if problems:
        pytest.fail(
            f"{len(problems)} of {len(_SENT)} statements would not route to one bucket:\n"
            + "\n".join(f"- {why}: {' '.join(sql.split())[:300]}" for sql, why in problems.items())
        )
