"""Per-deployment keys that every server process shares, read from the database."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler_host.adapters.db.tables import service_keys

PAGE_TOKEN_KEY = "page_token"  # noqa: S105 - a key name, not a secret


async def load_key(engine: AsyncEngine, name: str) -> bytes:
    async with engine.connect() as conn:
        value = (
            await conn.execute(sa.select(service_keys.c.value).where(service_keys.c.name == name))
        ).scalar_one_or_none()
    if not isinstance(value, bytes):
        raise RuntimeError(f"service key {name!r} is missing; run `scheduler-host migrate`")
    return value
