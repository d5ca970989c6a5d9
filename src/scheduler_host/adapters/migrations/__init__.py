"""Schema migrations (Alembic), configured in code (no alembic.ini).

Every function opens its own short-lived async engine and disposes it before returning.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import URL, Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "HEAD_REVISION",
    "MigrationError",
    "current_revision",
    "database_is_current",
    "downgrade_database",
    "upgrade_database",
]

# The newest revision in versions/; a test checks it against the scripts.
HEAD_REVISION = "0003"

_SCRIPT_LOCATION = Path(__file__).resolve().parent

_T = TypeVar("_T")

# alembic.context and alembic.op are process-wide proxies, and run_sync yields to the event loop
# on every query, so two migrations interleaving in one loop would clobber each other.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


class MigrationError(RuntimeError):
    """A migration or revision lookup failed; the message is one line and hides passwords."""


def _migration_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


def _config(connection: Connection) -> Config:
    config = Config()
    # Config values go through ConfigParser interpolation, so a literal "%" must be doubled.
    config.set_main_option("script_location", str(_SCRIPT_LOCATION).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _one_line(exc: BaseException) -> str:
    # SQLAlchemy errors append the SQL and a documentation link on further lines.
    lines = str(exc).strip().splitlines()
    detail = lines[0] if lines else "(no message)"
    return f"{type(exc).__name__}: {detail}"


def _parse(url: str, action: str) -> URL:
    try:
        # Alembic runs on SQLAlchemy's asyncpg dialect, whatever driver the URL names.
        return make_url(url).set(drivername="postgresql+asyncpg")
    except Exception as exc:
        # The URL itself may carry a password, so it is not repeated here.
        raise MigrationError(f"cannot {action}: invalid database URL ({_one_line(exc)})") from exc


async def _run(url: URL, action: str, work: Callable[[Connection], _T]) -> _T:
    """Run ``work`` on a sync connection inside one transaction, committed on success."""
    shown = url.render_as_string(hide_password=True)
    try:
        # NullPool: one connection for one job; nothing should stay open after dispose().
        engine = create_async_engine(url, poolclass=NullPool)
    except Exception as exc:
        raise MigrationError(f"cannot {action} on {shown}: {_one_line(exc)}") from exc
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(work)
    except Exception as exc:
        raise MigrationError(f"cannot {action} on {shown}: {_one_line(exc)}") from exc
    finally:
        await engine.dispose()


async def _migrate(url: str, action: str, step: Callable[[Config, str], None], to: str) -> None:
    parsed = _parse(url, action)

    def work(connection: Connection) -> None:
        step(_config(connection), to)

    async with _migration_lock():
        await _run(parsed, action, work)


async def upgrade_database(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (a no-op when already there)."""
    await _migrate(url, f"upgrade to {revision}", command.upgrade, revision)


async def downgrade_database(url: str, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision``; "base" drops every table."""
    await _migrate(url, f"downgrade to {revision}", command.downgrade, revision)


async def current_revision(url: str) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    parsed = _parse(url, "read the schema revision")

    def work(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    return await _run(parsed, "read the schema revision", work)


async def database_is_current(url: str) -> bool:
    """Whether the database is at HEAD_REVISION (False when older, newer or never migrated)."""
    return await current_revision(url) == HEAD_REVISION
