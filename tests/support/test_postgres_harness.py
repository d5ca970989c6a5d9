"""Checks that the PostgreSQL test harness finds or starts a real server and cleans up."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from tests.support import postgres as harness
from tests.support.postgres import (
    ENV_DATABASE_URL,
    PostgresServer,
    postgres_server,
    scratch_database,
    server_from_url,
    start_throwaway_cluster,
)


async def _fetchval(dsn: str, query: str, *args: object) -> Any:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def _fetchval_sync(dsn: str, query: str, *args: object) -> Any:
    return asyncio.run(_fetchval(dsn, query, *args))


def _database_exists(server: PostgresServer, name: str) -> bool:
    count = _fetchval_sync(
        server.dsn("postgres"), "select count(*) from pg_database where datname = $1", name
    )
    return bool(count)


def test_server_from_url_parses_sqlalchemy_and_plain_urls() -> None:
    server = server_from_url("postgresql+asyncpg://alice@db.example:6543/whatever")
    assert server == PostgresServer(host="db.example", port=6543, user="alice")
    assert server.url("x") == "postgresql+asyncpg://alice@db.example:6543/x"
    assert server.dsn("x") == "postgresql://alice@db.example:6543/x"
    assert server_from_url("postgresql://h/db").port == 5432
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        server_from_url("mysql://root@h/db")


def test_scratch_database_is_usable_and_dropped() -> None:
    with postgres_server() as server:
        with scratch_database(server) as name:
            assert name.startswith("scheduler_host_test_")
            assert _fetchval_sync(server.dsn(name), "select 1") == 1
            # A connection still open at exit (e.g. a leaked pool) must not prevent the drop.
            loop = asyncio.new_event_loop()
            leaked = loop.run_until_complete(asyncpg.connect(server.dsn(name), timeout=10))
        try:
            assert not _database_exists(server, name)
        finally:
            leaked.terminate()
            loop.close()


def test_scratch_database_works_inside_a_running_event_loop() -> None:
    # Async fixtures call the sync helpers while a loop runs; asyncio.run would refuse to nest.
    async def body() -> str:
        with postgres_server() as server, scratch_database(server) as name:
            return name

    assert asyncio.run(body()).startswith("scheduler_host_test_")


def test_throwaway_cluster_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    with start_throwaway_cluster() as cluster:
        server = cluster.server
        assert server.port != 5432
        assert _fetchval_sync(server.dsn("postgres"), "select 1") == 1
        assert cluster.start_seconds > 0

        cluster.stop()
        with pytest.raises((OSError, asyncpg.PostgresError)):
            _fetchval_sync(server.dsn("postgres"), "select 1")

        cluster.start()
        assert _fetchval_sync(server.dsn("postgres"), "select 1") == 1

        # The env override must be honoured as is, even with :5432 answering.
        monkeypatch.setenv(ENV_DATABASE_URL, server.url("ignored"))
        with postgres_server() as chosen:
            assert chosen == server
            with scratch_database(chosen, prefix="harness") as name:
                assert _fetchval_sync(chosen.dsn(name), "select current_database()") == name

        data_dir = cluster.data_dir
    assert not data_dir.exists()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        _fetchval_sync(server.dsn("postgres"), "select 1")


def _no_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the :5432 probe miss by pointing it at a port nothing listens on."""
    monkeypatch.delenv(ENV_DATABASE_URL, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        unused_port = sock.getsockname()[1]
    monkeypatch.setattr(harness, "_LOCAL_PORT", unused_port)


def test_postgres_server_falls_back_to_throwaway_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_local_server(monkeypatch)
    with postgres_server() as server, scratch_database(server) as name:
        assert server.port not in (5432, harness._LOCAL_PORT)
        assert _fetchval_sync(server.dsn(name), "select 1") == 1


def test_postgres_server_raises_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_local_server(monkeypatch)

    def no_binaries() -> Path:
        raise RuntimeError("no PostgreSQL server binaries found")

    monkeypatch.setattr(harness, "_find_bin_dir", no_binaries)
    with pytest.raises(RuntimeError) as excinfo, postgres_server():
        pass
    message = str(excinfo.value)
    assert ENV_DATABASE_URL in message
    assert f"127.0.0.1:{harness._LOCAL_PORT}" in message
    assert "throwaway cluster: no PostgreSQL server binaries found" in message
