"""Settings from SCHEDULER_HOST_* variables: one frozen dataclass (every default, and how each
variable is read, is defined there and only there), one error line per bad value, and the rules
that keep a start safe."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

# Development defaults; they work only in development on a loopback listen address.
DEFAULT_RUNNER_TOKEN = "local-runner-key"  # noqa: S105 - refused outside development
DEFAULT_ADMIN_TOKEN = "local-admin-key"  # noqa: S105 - refused outside development
WEAK_TOKENS = frozenset(
    {"", "changeme", "change-me", "secret", DEFAULT_RUNNER_TOKEN, DEFAULT_ADMIN_TOKEN}
)
# Shortest token accepted where the defaults are not (production, or a non-loopback address).
MIN_TOKEN_LENGTH = 32
ENVIRONMENTS = frozenset({"development", "production", "test"})

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A bad setting; `str()` is the one line shown to the operator, naming the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def _int(raw: str, variable: str, minimum: float) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(variable, f"expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(variable, f"must be at least {minimum:g}, got {value}")
    return value


def _float(raw: str, variable: str, minimum: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(variable, f"expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(variable, f"expected a finite number, got {raw!r}")
    if value < minimum:
        raise ConfigError(variable, f"must be at least {minimum:g}, got {value:g}")
    return value


def _bool(raw: str, variable: str, _minimum: float) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(variable, f"expected true or false, got {raw!r}")


def _address(raw: str, variable: str, _minimum: float) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(variable, f"expected host:port, got {raw!r}")
    return raw


def _file(raw: str, variable: str, _minimum: float) -> str:
    if not Path(raw).is_file():
        raise ConfigError(variable, f"file not found: {raw}")
    return raw


def _text(raw: str, _variable: str, _minimum: float) -> str:
    return raw


def _choice(choices: frozenset[str], transform: Callable[[str], str] = str) -> Any:
    def parse(raw: str, variable: str, _minimum: float) -> str:
        value = raw.lower()
        if value not in choices:
            raise ConfigError(
                variable, f"expected one of {', '.join(sorted(choices))}, got {raw!r}"
            )
        return transform(value)

    return parse


# How a variable's text is read: (text, variable, least value accepted) → the value, or ConfigError.
_Parser = Callable[[str, str, float], Any]


def _setting(default: _T, parse: _Parser, minimum: float = 0) -> _T:
    """A Settings field read from its variable (see `variable_of`) by `parse`, which refuses
    values below `minimum`; `default` when the variable is unset or empty."""
    return field(default=default, metadata={"parse": parse, "minimum": minimum})


@dataclass(frozen=True)
class Settings:
    # Fields without `_setting` (the database URL, the tokens, the Runner's URL) are read by
    # load_settings, by rules of their own.
    # Empty: the embedded PostgreSQL under `embedded_data_dir` (the extra scheduler-host[embedded]).
    database_url: str = ""
    embedded_data_dir: str = _setting("./var/pgdata", _text)
    listen: str = _setting("127.0.0.1:50051", _address)
    runner_tokens: tuple[str, ...] = (DEFAULT_RUNNER_TOKEN,)
    admin_tokens: tuple[str, ...] = (DEFAULT_ADMIN_TOKEN,)
    runner_base_url: str = "http://127.0.0.1:8090"
    # Sent to the Runner as `authorization: Bearer ...` with every execute call.
    runner_call_token: str = ""
    metrics_listen: str = _setting("", _address)
    environment: str = _setting("development", _choice(ENVIRONMENTS))
    min_interval_seconds: int = _setting(300, _int)
    max_schedules_per_install: int = _setting(50, _int, minimum=1)
    rate_limit_per_minute: int = _setting(10, _int, minimum=1)
    read_limit_per_minute: int = _setting(600, _int, minimum=1)
    manual_runs_per_minute: int = _setting(5, _int, minimum=1)
    catchup_seconds: int = _setting(600, _int)
    max_message_bytes: int = _setting(1024 * 1024, _int, minimum=200_000)
    max_concurrent_rpcs: int = _setting(1000, _int, minimum=1)
    keepalive_seconds: float = _setting(60.0, _float, minimum=1)
    min_client_ping_seconds: float = _setting(10.0, _float, minimum=1)
    max_connection_age_seconds: float = _setting(1800.0, _float)
    runner_timeout_seconds: float = _setting(30.0, _float, minimum=0.1)
    # First retry delay of a failed Runner call; each further retry waits twice as long.
    runner_retry_base_seconds: float = _setting(1.0, _float)
    shutdown_grace_seconds: float = _setting(10.0, _float)
    install_cache_seconds: float = _setting(1.0, _float)
    health_check_seconds: float = _setting(2.0, _float, minimum=0.05)
    db_pool_size: int = _setting(20, _int, minimum=2)
    # Calls that may wait for a pooled connection; more are refused at once.
    db_pool_max_waiters: int = _setting(200, _int)
    db_acquire_timeout_seconds: float = _setting(10.0, _float, minimum=0.1)
    dispatcher_enabled: bool = _setting(True, _bool)
    dispatch_poll_seconds: float = _setting(1.0, _float, minimum=0.01)
    dispatch_batch_size: int = _setting(100, _int, minimum=1)
    # Runs one process makes at once (each holds a Runner connection); the next batch is
    # claimed while they are in flight.
    dispatch_max_in_flight: int = _setting(500, _int, minimum=1)
    # Pooled connections the dispatcher may hold at once.
    dispatch_connections: int = _setting(6, _int, minimum=1)
    # Added to the longest a run can take (attempts, timeouts, backoff) to make its claim's lease.
    dispatch_lease_margin_seconds: float = _setting(30.0, _float, minimum=0.1)
    reflection: bool = _setting(True, _bool)
    tls_cert: str = _setting("", _file)
    tls_key: str = _setting("", _file)
    tls_client_ca: str = _setting("", _file)
    log_format: str = _setting("text", _choice(frozenset({"text", "json"})))
    log_level: str = _setting(
        "INFO", _choice(frozenset({"debug", "info", "warning", "error"}), str.upper)
    )

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def listens_on_loopback(self) -> bool:
        return is_loopback(self.listen.rpartition(":")[0])


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _default(name: str) -> Any:
    for f in fields(Settings):
        if f.name == name and f.default is not MISSING:
            return f.default
    raise KeyError(name)


# Variables named otherwise than after their field.
_VARIABLE_NAMES = {
    "dispatcher_enabled": "SCHEDULER_HOST_DISPATCHER",
    "environment": "SCHEDULER_HOST_ENV",
}


def variable_of(field: str) -> str:
    return _VARIABLE_NAMES.get(field, f"SCHEDULER_HOST_{field.upper()}")


def _tokens(raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    return tuple(t.strip() for t in raw.split(",") if t.strip())


def _database_url(env: Mapping[str, str]) -> str:
    url = env.get("SCHEDULER_HOST_DATABASE_URL", "").strip()
    if url and not url.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
        raise ConfigError(
            "SCHEDULER_HOST_DATABASE_URL",
            "expected a postgresql:// URL (or leave it unset for the embedded PostgreSQL)",
        )
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _check_tokens(
    name: str, tokens: tuple[str, ...] | None, default: str, strict: bool
) -> tuple[str, ...]:
    """`tokens` as configured, or the development default where that is allowed."""
    if tokens is None:
        if strict:
            raise ConfigError(name, "is required outside development on a loopback address")
        return (default,)
    if not tokens:
        raise ConfigError(name, "at least one token is required")
    if strict:
        for token in tokens:
            if token.lower() in WEAK_TOKENS:
                raise ConfigError(name, "a default or empty token is refused here")
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(
                    name, f"tokens must be at least {MIN_TOKEN_LENGTH} characters here"
                )
    return tokens


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every variable; raise ConfigError for the first bad one."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for setting in fields(Settings):
        if "parse" not in setting.metadata:
            continue  # read below, by rules of its own
        variable = variable_of(setting.name)
        raw = env.get(variable, "").strip()
        parse, minimum = setting.metadata["parse"], setting.metadata["minimum"]
        values[setting.name] = parse(raw, variable, minimum) if raw else setting.default
    values["database_url"] = _database_url(env)

    production = values["environment"] == "production"
    listen_host = str(values["listen"]).rpartition(":")[0]
    # The development tokens are public: only a development service on a loopback address
    # may accept them.
    strict = production or not is_loopback(listen_host)
    values["runner_tokens"] = _check_tokens(
        "SCHEDULER_HOST_RUNNER_TOKENS",
        _tokens(env.get("SCHEDULER_HOST_RUNNER_TOKENS")),
        DEFAULT_RUNNER_TOKEN,
        strict,
    )
    admin_variable = (
        "SCHEDULER_HOST_ADMIN_TOKENS"
        if "SCHEDULER_HOST_ADMIN_TOKENS" in env or "SCHEDULER_HOST_ADMIN_TOKEN" not in env
        else "SCHEDULER_HOST_ADMIN_TOKEN"
    )
    values["admin_tokens"] = _check_tokens(
        admin_variable, _tokens(env.get(admin_variable)), DEFAULT_ADMIN_TOKEN, strict
    )
    if set(values["admin_tokens"]) & set(values["runner_tokens"]):
        raise ConfigError(admin_variable, "admin tokens must differ from every runner token")

    call_token = env.get("SCHEDULER_HOST_RUNNER_CALL_TOKEN", "").strip()
    if production and len(call_token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            "SCHEDULER_HOST_RUNNER_CALL_TOKEN",
            f"production needs a token of at least {MIN_TOKEN_LENGTH} characters, so the "
            "Runner can tell the host's calls from forged ones",
        )
    if any(c in call_token for c in "\r\n\0"):
        raise ConfigError("SCHEDULER_HOST_RUNNER_CALL_TOKEN", "must be one line")
    values["runner_call_token"] = call_token

    base_url = env.get("SCHEDULER_HOST_RUNNER_BASE_URL", "").strip() or _default("runner_base_url")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError("SCHEDULER_HOST_RUNNER_BASE_URL", "expected an http:// or https:// URL")
    values["runner_base_url"] = base_url.rstrip("/")

    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        missing = "SCHEDULER_HOST_TLS_KEY" if values["tls_cert"] else "SCHEDULER_HOST_TLS_CERT"
        raise ConfigError(missing, "TLS needs both a certificate and a key")
    if values["tls_client_ca"] and not values["tls_cert"]:
        raise ConfigError("SCHEDULER_HOST_TLS_CLIENT_CA", "mTLS needs SCHEDULER_HOST_TLS_CERT too")
    return Settings(**values)
