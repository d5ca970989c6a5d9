"""Settings from SCHEDULER_HOST_* variables: one frozen dataclass, one error line per bad value."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/scheduler-host.db"
DEFAULT_LISTEN = "127.0.0.1:50051"
# Development defaults, refused in production (see WEAK_TOKENS).
DEFAULT_RUNNER_TOKEN = "local-runner-key"  # noqa: S105 - refused in production
DEFAULT_ADMIN_TOKEN = "local-admin-key"  # noqa: S105 - refused in production
WEAK_TOKENS = frozenset(
    {"", "changeme", "change-me", "secret", "local-runner-key", "local-admin-key"}
)


class ConfigError(ValueError):
    """A bad setting; `str()` is the one line shown to the operator, naming the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    listen: str = DEFAULT_LISTEN
    runner_tokens: tuple[str, ...] = (DEFAULT_RUNNER_TOKEN,)
    admin_token: str = DEFAULT_ADMIN_TOKEN
    runner_base_url: str = "http://127.0.0.1:8090"
    metrics_listen: str = ""
    environment: str = "development"
    min_interval_seconds: int = 300
    max_schedules_per_install: int = 50
    rate_limit_per_minute: int = 10
    manual_runs_per_minute: int = 5
    catchup_seconds: int = 600
    max_message_bytes: int = 1024 * 1024
    runner_timeout_seconds: float = 30.0
    # First retry delay of a failed Runner call; each further retry waits twice as long.
    runner_retry_base_seconds: float = 1.0
    shutdown_grace_seconds: float = 10.0
    install_cache_seconds: float = 1.0
    health_check_seconds: float = 2.0
    dispatcher_enabled: bool = True
    dispatch_poll_seconds: float = 1.0
    dispatch_batch_size: int = 100
    # Runs one process makes at once (each holds a Runner connection); the next batch is
    # claimed while they are in flight.
    dispatch_max_in_flight: int = 500
    # Added to the longest a run can take (attempts, timeouts, backoff) to make its claim's lease.
    dispatch_lease_margin_seconds: float = 30.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    log_format: str = "text"
    log_level: str = "INFO"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _address(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if not raw:
        return raw
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(name, f"expected host:port, got {raw!r}")
    return raw


def _choice(env: Mapping[str, str], name: str, default: str, choices: set[str]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(name, f"expected one of {', '.join(sorted(choices))}, got {raw!r}")
    return raw


def _file(env: Mapping[str, str], name: str) -> str:
    raw = env.get(name, "").strip()
    if raw and not Path(raw).is_file():
        raise ConfigError(name, f"file not found: {raw}")
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every variable; raise ConfigError for the first bad one."""
    env = os.environ if env is None else env
    environment = _choice(
        env, "SCHEDULER_HOST_ENV", "development", {"development", "production", "test"}
    )
    production = environment == "production"

    database_url = env.get("SCHEDULER_HOST_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
    if not database_url.startswith(("postgresql", "sqlite")):
        raise ConfigError(
            "SCHEDULER_HOST_DATABASE_URL",
            "expected a postgresql+asyncpg:// or sqlite+aiosqlite:// URL",
        )
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+asyncpg://" + database_url.removeprefix("postgresql://")
    if database_url.startswith("sqlite://"):
        database_url = "sqlite+aiosqlite://" + database_url.removeprefix("sqlite://")

    raw_tokens = env.get("SCHEDULER_HOST_RUNNER_TOKENS")
    runner_tokens = (
        (DEFAULT_RUNNER_TOKEN,)
        if raw_tokens is None and not production
        else tuple(t.strip() for t in (raw_tokens or "").split(",") if t.strip())
    )
    admin_token = env.get("SCHEDULER_HOST_ADMIN_TOKEN")
    if admin_token is None:
        admin_token = "" if production else DEFAULT_ADMIN_TOKEN
    admin_token = admin_token.strip()
    if not runner_tokens:
        raise ConfigError("SCHEDULER_HOST_RUNNER_TOKENS", "at least one token is required")
    if not admin_token:
        raise ConfigError("SCHEDULER_HOST_ADMIN_TOKEN", "a token is required")
    if production:
        if any(t.lower() in WEAK_TOKENS for t in runner_tokens):
            raise ConfigError(
                "SCHEDULER_HOST_RUNNER_TOKENS", "a default or empty token is refused in production"
            )
        if admin_token.lower() in WEAK_TOKENS:
            raise ConfigError(
                "SCHEDULER_HOST_ADMIN_TOKEN", "a default or empty token is refused in production"
            )
    if admin_token in runner_tokens:
        raise ConfigError("SCHEDULER_HOST_ADMIN_TOKEN", "must differ from every runner token")

    runner_base_url = env.get("SCHEDULER_HOST_RUNNER_BASE_URL", "").strip() or (
        "http://127.0.0.1:8090"
    )
    if not runner_base_url.startswith(("http://", "https://")):
        raise ConfigError("SCHEDULER_HOST_RUNNER_BASE_URL", "expected an http:// or https:// URL")

    tls_cert = _file(env, "SCHEDULER_HOST_TLS_CERT")
    tls_key = _file(env, "SCHEDULER_HOST_TLS_KEY")
    tls_client_ca = _file(env, "SCHEDULER_HOST_TLS_CLIENT_CA")
    if bool(tls_cert) != bool(tls_key):
        missing = "SCHEDULER_HOST_TLS_KEY" if tls_cert else "SCHEDULER_HOST_TLS_CERT"
        raise ConfigError(missing, "TLS needs both a certificate and a key")
    if tls_client_ca and not tls_cert:
        raise ConfigError("SCHEDULER_HOST_TLS_CLIENT_CA", "mTLS needs SCHEDULER_HOST_TLS_CERT too")

    return Settings(
        database_url=database_url,
        listen=_address(env, "SCHEDULER_HOST_LISTEN", DEFAULT_LISTEN),
        runner_tokens=runner_tokens,
        admin_token=admin_token,
        runner_base_url=runner_base_url.rstrip("/"),
        metrics_listen=_address(env, "SCHEDULER_HOST_METRICS_LISTEN", ""),
        environment=environment,
        min_interval_seconds=_int(env, "SCHEDULER_HOST_MIN_INTERVAL_SECONDS", 300, 0),
        max_schedules_per_install=_int(env, "SCHEDULER_HOST_MAX_SCHEDULES_PER_INSTALL", 50, 1),
        rate_limit_per_minute=_int(env, "SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE", 10, 1),
        manual_runs_per_minute=_int(env, "SCHEDULER_HOST_MANUAL_RUNS_PER_MINUTE", 5, 1),
        catchup_seconds=_int(env, "SCHEDULER_HOST_CATCHUP_SECONDS", 600, 0),
        max_message_bytes=_int(env, "SCHEDULER_HOST_MAX_MESSAGE_BYTES", 1024 * 1024, 200_000),
        runner_timeout_seconds=_float(env, "SCHEDULER_HOST_RUNNER_TIMEOUT_SECONDS", 30.0, 0.1),
        runner_retry_base_seconds=_float(env, "SCHEDULER_HOST_RUNNER_RETRY_BASE_SECONDS", 1.0, 0.0),
        shutdown_grace_seconds=_float(env, "SCHEDULER_HOST_SHUTDOWN_GRACE_SECONDS", 10.0, 0.0),
        install_cache_seconds=_float(env, "SCHEDULER_HOST_INSTALL_CACHE_SECONDS", 1.0, 0.0),
        health_check_seconds=_float(env, "SCHEDULER_HOST_HEALTH_CHECK_SECONDS", 2.0, 0.05),
        dispatcher_enabled=_bool(env, "SCHEDULER_HOST_DISPATCHER", True),
        dispatch_poll_seconds=_float(env, "SCHEDULER_HOST_DISPATCH_POLL_SECONDS", 1.0, 0.01),
        dispatch_batch_size=_int(env, "SCHEDULER_HOST_DISPATCH_BATCH_SIZE", 100, 1),
        dispatch_max_in_flight=_int(env, "SCHEDULER_HOST_DISPATCH_MAX_IN_FLIGHT", 500, 1),
        dispatch_lease_margin_seconds=_float(
            env, "SCHEDULER_HOST_DISPATCH_LEASE_MARGIN_SECONDS", 30.0, 0.1
        ),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        log_format=_choice(env, "SCHEDULER_HOST_LOG_FORMAT", "text", {"text", "json"}),
        log_level=_choice(
            env, "SCHEDULER_HOST_LOG_LEVEL", "info", {"debug", "info", "warning", "error"}
        ).upper(),
    )
