"""Per-deployment keys that every server process shares, read from the database."""

from __future__ import annotations

from scheduler_host.adapters.db.pool import DatabasePool

PAGE_TOKEN_KEY = "page_token"  # noqa: S105 - a key name, not a secret

_KEY = "SELECT value FROM service_keys WHERE name = $1"


async def load_key(pool: DatabasePool, name: str) -> bytes:
    conn = await pool.acquire()
    try:
        value = await conn.fetchval(_KEY, name)
    finally:
        await pool.release(conn)
    if not isinstance(value, bytes):
        raise RuntimeError(f"service key {name!r} is missing; run `scheduler-host migrate`")
    return value
