"""Installs, their endpoints and the install directory on PostgreSQL: the statements, as constants.

A caller names an install by id alone; `install_directory` (a reference table) says which bucket
holds it. An install's entry never changes while it exists, so each process keeps those it read.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

from asyncpg import Record

from scheduler_host.adapters.db.buckets import bucket_of
from scheduler_host.adapters.db.pool import Connect, Repository
from scheduler_host.adapters.db.rows import (
    ENDPOINT_COLUMNS,
    INSTALL_COLUMNS,
    INSTALL_CONTEXT_COLUMNS,
    columns,
    endpoint_from_row,
    install_context_from_row,
    install_from_row,
    unnest_arrays,
)
from scheduler_host.domain.endpoints import Endpoint
from scheduler_host.domain.install import Install, InstallContext
from scheduler_host.service.ports import EndpointCache

_DIRECTORY = "SELECT bucket, tenant_id FROM install_directory WHERE install_id = $1"
_CONTEXT = f"SELECT {columns(INSTALL_CONTEXT_COLUMNS)} FROM installs WHERE bucket = $1 AND id = $2"
_INSTALL = f"SELECT {columns(INSTALL_COLUMNS)} FROM installs WHERE bucket = $1 AND id = $2"
_ENDPOINTS = f"""SELECT {columns(ENDPOINT_COLUMNS)} FROM endpoints
WHERE bucket = $1 AND install_id = $2 AND version_id = $3 ORDER BY path, method"""
# A registration racing another one for the same new install id waits for it, then reads its
# entry: a different tenant is refused (the row in the other bucket would be an orphan).
_REGISTER = """INSERT INTO install_directory (install_id, bucket, tenant_id) VALUES ($1, $2, $3)
ON CONFLICT (install_id) DO NOTHING"""
_SAVE = """INSERT INTO installs
    (bucket, id, tenant_id, registry_id, version_id, content_hash, enabled,
     granted_capabilities, create_time, update_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (bucket, id) DO UPDATE SET
    registry_id = excluded.registry_id, version_id = excluded.version_id,
    content_hash = excluded.content_hash, enabled = excluded.enabled,
    granted_capabilities = excluded.granted_capabilities, update_time = excluded.update_time"""
_LOCK = "SELECT true FROM installs WHERE bucket = $1 AND id = $2 FOR NO KEY UPDATE"
_DELETE_ENDPOINTS = "DELETE FROM endpoints WHERE bucket = $1 AND install_id = $2"
_INSERT_ENDPOINTS = """INSERT INTO endpoints
    (bucket, install_id, version_id, method, path, id, tenant_id, handler)
SELECT $1, $2, $3, e.method, e.path, e.id, $4, e.handler
FROM unnest($5::uuid[], $6::varchar[], $7::varchar[], $8::varchar[])
    AS e(id, method, path, handler)"""
# Schedules, runs, endpoints and idempotency keys go with it (ON DELETE CASCADE).
_DELETE = "DELETE FROM installs WHERE bucket = $1 AND id = $2 RETURNING true"
_UNREGISTER = "DELETE FROM install_directory WHERE install_id = $1"


class InstallDirectory:
    """The directory entries (bucket, tenant) this process has read, most recent kept."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[uuid.UUID, tuple[int, str]] = OrderedDict()
        self._max = max_entries

    def get(self, install_id: uuid.UUID) -> tuple[int, str] | None:
        return self._entries.get(install_id)

    def keep(self, install_id: uuid.UUID, entry: tuple[int, str]) -> None:
        self._entries[install_id] = entry
        self._entries.move_to_end(install_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, install_id: uuid.UUID) -> None:
        self._entries.pop(install_id, None)


class PgInstallRepository(Repository):
    __slots__ = ("_cache", "_directory")

    def __init__(
        self, connect: Connect, directory: InstallDirectory, cache: EndpointCache | None
    ) -> None:
        super().__init__(connect)
        self._directory = directory
        self._cache = cache

    async def _locate(
        self, install_id: uuid.UUID, *, fresh: bool = False
    ) -> tuple[int, str] | None:
        entry = None if fresh else self._directory.get(install_id)
        if entry is None:
            conn = await self._connect()
            row = await conn.fetchrow(_DIRECTORY, install_id)
            if row is None:
                self._directory.forget(install_id)
                return None
            entry = (int(row["bucket"]), str(row["tenant_id"]))
            self._directory.keep(install_id, entry)
        return entry

    async def _read(self, statement: str, install_id: uuid.UUID) -> tuple[int, Record] | None:
        """A row of the install by `statement`; a kept directory entry that proves stale (the
        install was deleted and registered again for another tenant) is read again."""
        for fresh in (False, True):
            entry = await self._locate(install_id, fresh=fresh)
            if entry is None:
                return None
            conn = await self._connect()
            row = await conn.fetchrow(statement, entry[0], install_id)
            if row is not None:
                return entry[0], row
        return None

    async def context(self, install_id: uuid.UUID) -> InstallContext | None:
        found = await self._read(_CONTEXT, install_id)
        return install_context_from_row(found[1]) if found is not None else None

    async def get(self, install_id: uuid.UUID) -> Install | None:
        found = await self._read(_INSTALL, install_id)
        if found is None:
            return None
        bucket, row = found
        endpoints = await self._read_endpoints(bucket, install_id, row["version_id"])
        return install_from_row(row, endpoints)

    async def lock(self, tenant_id: str, install_id: uuid.UUID) -> bool:
        conn = await self._connect()
        return bool(await conn.fetchval(_LOCK, bucket_of(tenant_id), install_id))

    async def endpoints(
        self, tenant_id: str, install_id: uuid.UUID, version_id: str
    ) -> list[Endpoint]:
        cache = self._cache
        if cache is not None:
            cached = cache.endpoints(install_id, version_id)
            if cached is not None:
                return cached
        eps = await self._read_endpoints(bucket_of(tenant_id), install_id, version_id)
        if cache is not None:
            cache.keep_endpoints(install_id, version_id, eps)
        return eps

    async def _read_endpoints(
        self, bucket: int, install_id: uuid.UUID, version_id: str
    ) -> list[Endpoint]:
        conn = await self._connect()
        rows = await conn.fetch(_ENDPOINTS, bucket, install_id, version_id)
        return [endpoint_from_row(r) for r in rows]

    async def save(self, install: Install) -> bool:
        conn = await self._connect()
        bucket = bucket_of(install.tenant_id)
        await conn.execute(_REGISTER, install.install_id, bucket, install.tenant_id)
        registered = await conn.fetchrow(_DIRECTORY, install.install_id)
        if registered is None or registered["tenant_id"] != install.tenant_id:
            return False
        await conn.execute(
            _SAVE,
            bucket,
            install.install_id,
            install.tenant_id,
            install.registry_id,
            install.version_id,
            install.content_hash,
            install.enabled,
            list(install.granted_capabilities),
            install.create_time,
            install.update_time,
        )
        # Only the current version's endpoints are kept; schedules store method and path.
        await conn.execute(_DELETE_ENDPOINTS, bucket, install.install_id)
        if eps := install.endpoints:
            await conn.execute(
                _INSERT_ENDPOINTS,
                bucket,
                install.install_id,
                install.version_id,
                install.tenant_id,
                *unnest_arrays(((e.id, e.method, e.path, e.handler) for e in eps), 4),
            )
        self._directory.keep(install.install_id, (bucket, install.tenant_id))
        return True

    async def delete(self, install_id: uuid.UUID) -> bool:
        entry = await self._locate(install_id, fresh=True)
        if entry is None:
            return False
        bucket = entry[0]
        conn = await self._connect()
        deleted = bool(await conn.fetchval(_DELETE, bucket, install_id))
        await conn.execute(_UNREGISTER, install_id)
        self._directory.forget(install_id)
        return deleted
