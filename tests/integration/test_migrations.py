"""The Alembic migrations against real PostgreSQL and SQLite: schema parity with tables.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from scheduler_host.adapters import migrations
from scheduler_host.adapters.db import tables
from scheduler_host.adapters.migrations import (
    HEAD_REVISION,
    MigrationError,
    current_revision,
    database_is_current,
    downgrade_database,
    upgrade_database,
)

_T = TypeVar("_T")

APPLICATION_TABLES = {t.name for t in tables.metadata.sorted_tables}


def _schema_diff(connection: sa.Connection) -> list[Any]:
    # compare_type is on: UtcDateTime compares as its DateTime(timezone=True) impl and the JSON
    # variant as JSONB on PostgreSQL, so a wrong column type shows up here too.
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, tables.metadata))


def _index_predicates(connection: sa.Connection, schema: str | None = None) -> dict[str, str]:
    """Index name -> WHERE clause as the database reports it, for every partial index."""
    inspector = sa.inspect(connection)
    key = f"{connection.dialect.name}_where"
    found: dict[str, str] = {}
    for table in APPLICATION_TABLES:
        for index in inspector.get_indexes(table, schema=schema):
            predicate = index.get("dialect_options", {}).get(key)
            if predicate is not None:
                found[str(index["name"])] = str(predicate)
    return found


def _declared_index_predicates(connection: sa.Connection) -> dict[str, str]:
    """The same for tables.metadata, built on this server so both sides are printed alike."""
    if connection.dialect.name == "sqlite":
        reference = sa.create_engine("sqlite://")
        try:
            with reference.begin() as scratch:
                tables.metadata.create_all(scratch)
                return _index_predicates(scratch)
        finally:
            reference.dispose()
    # PostgreSQL reprints predicates (casts, IN as = ANY (ARRAY[...])), so let it reprint the
    # declared ones too: build them in a scratch schema and roll it all back.
    try:
        connection.execute(sa.text("CREATE SCHEMA parity_reference"))
        translated = connection.execution_options(schema_translate_map={None: "parity_reference"})
        tables.metadata.create_all(translated, checkfirst=False)
        return _index_predicates(connection, schema="parity_reference")
    finally:
        connection.rollback()


async def _inspect(url: str, work: Callable[[sa.Connection], _T]) -> _T:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


async def _page_token_key(url: str) -> bytes:
    def read(connection: sa.Connection) -> bytes:
        rows = connection.execute(
            sa.select(tables.service_keys.c.tenant_id, tables.service_keys.c.value).where(
                tables.service_keys.c.name == "page_token"
            )
        ).all()
        assert len(rows) == 1
        assert rows[0].tenant_id == "*"
        value = rows[0].value
        assert isinstance(value, bytes)
        return value

    return await _inspect(url, read)


async def _assert_schema_matches_tables(url: str) -> None:
    assert await _inspect(url, _schema_diff) == []
    # Alembic does not compare partial-index predicates; check those separately.
    live = await _inspect(url, _index_predicates)
    assert set(live) == {
        "uq_schedules_install_name",
        "ix_schedules_due",
        "ix_schedule_runs_open_lease",
    }
    assert live == await _inspect(url, _declared_index_predicates)


def test_head_revision_is_the_newest_script() -> None:
    config = Config()
    config.set_main_option("script_location", migrations.__path__[0])
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


async def test_upgrade_creates_exactly_the_declared_schema(empty_database_url: str) -> None:
    url = empty_database_url
    assert await current_revision(url) is None
    assert await database_is_current(url) is False

    await upgrade_database(url)

    assert await current_revision(url) == HEAD_REVISION
    assert await database_is_current(url) is True
    await _assert_schema_matches_tables(url)
    assert len(await _page_token_key(url)) == 32


async def test_schema_check_notices_a_missing_index(empty_database_url: str) -> None:
    # Guards the parity check above against silently comparing nothing.
    await upgrade_database(empty_database_url)

    def drop_and_diff(connection: sa.Connection) -> list[Any]:
        connection.execute(sa.text("DROP INDEX ix_installs_tenant_id"))
        return _schema_diff(connection)

    diff = await _inspect(empty_database_url, drop_and_diff)
    assert [(d[0], d[1].name) for d in diff] == [("add_index", "ix_installs_tenant_id")]


async def test_upgrading_twice_is_a_no_op(empty_database_url: str) -> None:
    url = empty_database_url
    await upgrade_database(url)
    key = await _page_token_key(url)

    await upgrade_database(url)

    assert await current_revision(url) == HEAD_REVISION
    assert await _page_token_key(url) == key
    await _assert_schema_matches_tables(url)


async def test_downgrade_to_base_drops_everything_and_upgrade_works_again(
    empty_pg_url: str,
) -> None:
    url = empty_pg_url
    await upgrade_database(url)
    first_key = await _page_token_key(url)

    await downgrade_database(url)

    assert await current_revision(url) is None
    assert await database_is_current(url) is False
    remaining = await _inspect(url, lambda c: set(sa.inspect(c).get_table_names()))
    assert remaining <= {"alembic_version"}

    await upgrade_database(url)

    assert await current_revision(url) == HEAD_REVISION
    await _assert_schema_matches_tables(url)
    # A fresh deployment gets a fresh signing key.
    assert await _page_token_key(url) != first_key


async def test_sqlite_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "var" / "nested" / "scheduler-host.db"
    url = f"sqlite+aiosqlite:///{path}"
    # Asking for the revision of a missing file must not create it.
    assert await current_revision(url) is None
    assert not path.parent.exists()

    await upgrade_database(url)

    assert path.is_file()
    assert await database_is_current(url) is True


async def test_unreachable_database_raises_one_line_migration_error() -> None:
    # Port 1 on loopback refuses at once; the password must not leak into the message.
    url = "postgresql+asyncpg://someone:s3cret@127.0.0.1:1/nowhere"
    calls: list[Callable[[str], Awaitable[object]]] = [
        upgrade_database,
        current_revision,
        downgrade_database,
    ]
    for call in calls:
        with pytest.raises(MigrationError) as raised:
            await call(url)
        message = str(raised.value)
        assert "\n" not in message
        assert "s3cret" not in message
        assert "127.0.0.1:1" in message


async def test_unknown_revision_raises_migration_error(empty_sqlite_url: str) -> None:
    with pytest.raises(MigrationError, match="9999"):
        await upgrade_database(empty_sqlite_url, "9999")


async def _rate_limit_function_exists(url: str) -> bool:
    def read(connection: sa.Connection) -> bool:
        return bool(
            connection.execute(
                sa.text("SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'rate_limit_hit')")
            ).scalar_one()
        )

    return await _inspect(url, read)


async def test_0002_adds_the_rate_limit_function_and_takes_it_back(empty_pg_url: str) -> None:
    url = empty_pg_url
    await upgrade_database(url, "0001")
    assert await _rate_limit_function_exists(url) is False
    await upgrade_database(url)
    assert await current_revision(url) == "0002"
    assert await _rate_limit_function_exists(url) is True
    await downgrade_database(url, "0001")
    assert await current_revision(url) == "0001"
    assert await _rate_limit_function_exists(url) is False
    await _assert_schema_matches_tables(url)


async def test_0002_is_a_no_op_on_sqlite(empty_sqlite_url: str) -> None:
    await upgrade_database(empty_sqlite_url)
    assert await current_revision(empty_sqlite_url) == "0002"
    await downgrade_database(empty_sqlite_url, "0001")
    assert await current_revision(empty_sqlite_url) == "0001"
