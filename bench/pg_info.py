"""The PostgreSQL the run used: version, the settings that matter here, and what one round trip
and one durable commit cost from a client on this machine (the floor under every RPC)."""

from __future__ import annotations

import time
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]

SETTINGS = (
    "fsync",
    "synchronous_commit",
    "shared_buffers",
    "max_connections",
    "work_mem",
    "random_page_cost",
)
ROUNDS = 300


async def probe(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        version = str(await conn.fetchval("SELECT version()"))
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
            list(SETTINGS),
        )
        settings = {
            r["name"]: f"{r['setting']}{' x ' + r['unit'] if r['unit'] else ''}" for r in rows
        }
        started = time.perf_counter()
        for _ in range(ROUNDS):
            await conn.fetchval("SELECT 1")
        round_trip = (time.perf_counter() - started) / ROUNDS
        await conn.execute("CREATE TABLE bench_commit_probe (n int)")
        try:
            started = time.perf_counter()
            for n in range(ROUNDS):
                async with conn.transaction():
                    await conn.execute("INSERT INTO bench_commit_probe VALUES ($1)", n)
            commit = (time.perf_counter() - started) / ROUNDS
        finally:
            await conn.execute("DROP TABLE bench_commit_probe")
    finally:
        await conn.close()
    return {
        "version": " ".join(version.split()[:2]),
        "settings": settings,
        "round_trip_ms": round(round_trip * 1000, 3),
        "insert_transaction_ms": round(commit * 1000, 3),
    }
