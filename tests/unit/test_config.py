"""load_settings: defaults defined once, one ConfigError line per bad variable, and the rules
that keep a start safe (tokens outside a development loopback, the Runner call token)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from scheduler_host.config import (
    DEFAULT_ADMIN_TOKEN,
    DEFAULT_RUNNER_TOKEN,
    MIN_TOKEN_LENGTH,
    ConfigError,
    Settings,
    load_settings,
    variable_of,
)

STRONG_RUNNER = "r-7f3a9c1e5b2d4f60a8e1-0123456789abcdef"
STRONG_ADMIN = "a-0c9e8d7b6a5f4e3d2c1b-0123456789abcdef"
STRONG_CALL = "c-5e4d3c2b1a0f9e8d7c6b-0123456789abcdef"


def production(**env: str) -> dict[str, str]:
    base = {
        "SCHEDULER_HOST_ENV": "production",
        "SCHEDULER_HOST_RUNNER_TOKENS": STRONG_RUNNER,
        "SCHEDULER_HOST_ADMIN_TOKENS": STRONG_ADMIN,
        "SCHEDULER_HOST_RUNNER_CALL_TOKEN": STRONG_CALL,
    }
    base.update(env)
    return {k: v for k, v in base.items() if v is not None}


def exposed(**env: str) -> dict[str, str]:
    """Development, but listening on every address."""
    return {"SCHEDULER_HOST_LISTEN": "0.0.0.0:50051", **env}


def config_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value


def assert_names(error: ConfigError, variable: str) -> None:
    text = str(error)
    assert error.variable == variable
    assert text.startswith(f"{variable}: "), text
    assert len(text) > len(variable) + 2, "the problem must be described"
    assert "\n" not in text, "one line for the operator"


# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    settings = load_settings({})

    assert settings == Settings()
    assert settings.database_url == "", "no URL: the embedded PostgreSQL"
    assert settings.embedded_data_dir == "./var/pgdata"
    assert settings.listen == "127.0.0.1:50051"
    assert settings.runner_tokens == (DEFAULT_RUNNER_TOKEN,)
    assert settings.admin_tokens == (DEFAULT_ADMIN_TOKEN,)
    assert settings.runner_call_token == ""
    assert settings.read_limit_per_minute == 600
    assert settings.max_concurrent_rpcs > 0
    assert settings.db_pool_max_waiters > 0
    assert settings.reflection is True
    assert settings.environment == "development"
    assert settings.min_interval_seconds == 300
    assert settings.max_schedules_per_install == 50
    assert settings.rate_limit_per_minute == 10
    assert settings.manual_runs_per_minute == 5
    assert settings.catchup_seconds == 600
    assert settings.max_message_bytes == 1024 * 1024
    assert settings.runner_timeout_seconds == 30.0
    assert settings.metrics_listen == ""
    assert settings.tls_cert == settings.tls_key == settings.tls_client_ca == ""
    assert settings.log_format == "text"
    assert settings.log_level == "INFO"


def test_every_variable_left_unset_takes_the_dataclass_default() -> None:
    """The defaults are defined once, on Settings: the loader has none of its own."""
    loaded = load_settings({})
    for f in fields(Settings):
        assert getattr(loaded, f.name) == f.default, f.name
        assert variable_of(f.name).startswith("SCHEDULER_HOST_")


def test_blank_values_count_as_unset() -> None:
    env = {
        "SCHEDULER_HOST_LISTEN": "  ",
        "SCHEDULER_HOST_MIN_INTERVAL_SECONDS": "",
        "SCHEDULER_HOST_DATABASE_URL": " ",
        "SCHEDULER_HOST_LOG_FORMAT": "",
    }
    assert load_settings(env) == Settings()


def test_without_an_argument_the_process_environment_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCHEDULER_HOST_LISTEN", "127.0.0.1:6000")
    monkeypatch.setenv("SCHEDULER_HOST_MAX_SCHEDULES_PER_INSTALL", "7")
    settings = load_settings()
    assert settings.listen == "127.0.0.1:6000"
    assert settings.max_schedules_per_install == 7


def test_good_values_are_read() -> None:
    settings = load_settings(
        {
            "SCHEDULER_HOST_LISTEN": "0.0.0.0:7000",
            "SCHEDULER_HOST_RUNNER_TOKENS": STRONG_RUNNER,
            "SCHEDULER_HOST_ADMIN_TOKENS": STRONG_ADMIN,
            "SCHEDULER_HOST_METRICS_LISTEN": "127.0.0.1:9464",
            "SCHEDULER_HOST_READ_LIMIT_PER_MINUTE": "30",
            "SCHEDULER_HOST_REFLECTION": "off",
            "SCHEDULER_HOST_MIN_INTERVAL_SECONDS": " 60 ",
            "SCHEDULER_HOST_MAX_SCHEDULES_PER_INSTALL": "3",
            "SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE": "25",
            "SCHEDULER_HOST_SHUTDOWN_GRACE_SECONDS": "2.5",
            "SCHEDULER_HOST_RUNNER_BASE_URL": "https://runner.internal:8443/",
            "SCHEDULER_HOST_LOG_FORMAT": "JSON",
            "SCHEDULER_HOST_LOG_LEVEL": "debug",
            "SCHEDULER_HOST_ENV": "test",
            "SCHEDULER_HOST_DISPATCHER": "false",
        }
    )
    assert settings.listen == "0.0.0.0:7000"
    assert settings.read_limit_per_minute == 30
    assert settings.reflection is False
    assert settings.metrics_listen == "127.0.0.1:9464"
    assert settings.min_interval_seconds == 60
    assert settings.max_schedules_per_install == 3
    assert settings.rate_limit_per_minute == 25
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.runner_base_url == "https://runner.internal:8443"
    assert settings.log_format == "json"
    assert settings.log_level == "DEBUG"
    assert settings.environment == "test"
    assert settings.dispatcher_enabled is False


# --------------------------------------------------------------------------------------------
# One bad variable -> one error naming it
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SCHEDULER_HOST_LISTEN", "nonsense"),
        ("SCHEDULER_HOST_LISTEN", "127.0.0.1"),
        ("SCHEDULER_HOST_LISTEN", ":50051"),
        ("SCHEDULER_HOST_LISTEN", "127.0.0.1:port"),
        ("SCHEDULER_HOST_LISTEN", "127.0.0.1:70000"),
        ("SCHEDULER_HOST_METRICS_LISTEN", "nonsense"),
        ("SCHEDULER_HOST_MIN_INTERVAL_SECONDS", "abc"),
        ("SCHEDULER_HOST_MIN_INTERVAL_SECONDS", "-1"),
        ("SCHEDULER_HOST_MAX_SCHEDULES_PER_INSTALL", "0"),
        ("SCHEDULER_HOST_MAX_SCHEDULES_PER_INSTALL", "1.5"),
        ("SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE", "0"),
        ("SCHEDULER_HOST_CATCHUP_SECONDS", "ten"),
        ("SCHEDULER_HOST_MAX_MESSAGE_BYTES", "1000"),
        ("SCHEDULER_HOST_SHUTDOWN_GRACE_SECONDS", "-1"),
        ("SCHEDULER_HOST_RUNNER_TIMEOUT_SECONDS", "soon"),
        ("SCHEDULER_HOST_DISPATCHER", "maybe"),
        ("SCHEDULER_HOST_DATABASE_URL", "mysql://x"),
        ("SCHEDULER_HOST_DATABASE_URL", "sqlite:///x.db"),
        ("SCHEDULER_HOST_DATABASE_URL", "not a url"),
        ("SCHEDULER_HOST_READ_LIMIT_PER_MINUTE", "0"),
        ("SCHEDULER_HOST_MAX_CONCURRENT_RPCS", "0"),
        ("SCHEDULER_HOST_DB_POOL_SIZE", "1"),
        ("SCHEDULER_HOST_KEEPALIVE_SECONDS", "nan"),
        ("SCHEDULER_HOST_REFLECTION", "sometimes"),
        ("SCHEDULER_HOST_RUNNER_BASE_URL", "ftp://runner"),
        ("SCHEDULER_HOST_LOG_FORMAT", "xml"),
        ("SCHEDULER_HOST_LOG_LEVEL", "verbose"),
        ("SCHEDULER_HOST_ENV", "staging"),
    ],
)
def test_a_bad_value_is_reported_naming_its_variable(variable: str, value: str) -> None:
    error = config_error({variable: value})
    assert_names(error, variable)


def test_the_error_shows_the_bad_value() -> None:
    assert "nonsense" in str(config_error({"SCHEDULER_HOST_LISTEN": "nonsense"}))
    assert "abc" in str(config_error({"SCHEDULER_HOST_MIN_INTERVAL_SECONDS": "abc"}))
    assert "staging" in str(config_error({"SCHEDULER_HOST_ENV": "staging"}))


def test_a_config_error_is_a_value_error() -> None:
    assert isinstance(config_error({"SCHEDULER_HOST_ENV": "staging"}), ValueError)


def test_tls_cert_pointing_nowhere(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cert.pem"
    error = config_error({"SCHEDULER_HOST_TLS_CERT": str(missing)})
    assert_names(error, "SCHEDULER_HOST_TLS_CERT")
    assert str(missing) in str(error)


def test_tls_key_and_client_ca_pointing_nowhere(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("cert")
    key_error = config_error(
        {"SCHEDULER_HOST_TLS_CERT": str(cert), "SCHEDULER_HOST_TLS_KEY": str(tmp_path / "no.key")}
    )
    assert_names(key_error, "SCHEDULER_HOST_TLS_KEY")
    ca_error = config_error({"SCHEDULER_HOST_TLS_CLIENT_CA": str(tmp_path / "no-ca.pem")})
    assert_names(ca_error, "SCHEDULER_HOST_TLS_CLIENT_CA")


def test_tls_cert_pointing_at_a_directory(tmp_path: Path) -> None:
    assert_names(
        config_error({"SCHEDULER_HOST_TLS_CERT": str(tmp_path)}), "SCHEDULER_HOST_TLS_CERT"
    )


def test_tls_cert_without_key_names_the_missing_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("cert")
    error = config_error({"SCHEDULER_HOST_TLS_CERT": str(cert)})
    assert_names(error, "SCHEDULER_HOST_TLS_KEY")


def test_tls_key_without_cert_names_the_missing_cert(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("key")
    error = config_error({"SCHEDULER_HOST_TLS_KEY": str(key)})
    assert_names(error, "SCHEDULER_HOST_TLS_CERT")


def test_client_ca_without_cert(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    error = config_error({"SCHEDULER_HOST_TLS_CLIENT_CA": str(ca)})
    assert_names(error, "SCHEDULER_HOST_TLS_CLIENT_CA")


def test_tls_and_mtls_files_are_accepted(tmp_path: Path) -> None:
    files = {}
    for name in ("cert", "key", "ca"):
        path = tmp_path / f"{name}.pem"
        path.write_text(name)
        files[name] = str(path)
    tls = load_settings(
        {"SCHEDULER_HOST_TLS_CERT": files["cert"], "SCHEDULER_HOST_TLS_KEY": files["key"]}
    )
    assert (tls.tls_cert, tls.tls_key, tls.tls_client_ca) == (files["cert"], files["key"], "")
    mtls = load_settings(
        {
            "SCHEDULER_HOST_TLS_CERT": files["cert"],
            "SCHEDULER_HOST_TLS_KEY": files["key"],
            "SCHEDULER_HOST_TLS_CLIENT_CA": files["ca"],
        }
    )
    assert mtls.tls_client_ca == files["ca"]


# --------------------------------------------------------------------------------------------
# Tokens: the development defaults only in development on a loopback address
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strict", [production, exposed], ids=["production", "non-loopback"])
@pytest.mark.parametrize(
    "tokens",
    [
        "",
        "   ",
        ",",
        "changeme",
        "change-me",
        "secret",
        "local-runner-key",
        " changeme ",
        "CHANGEME",
        "a" * (MIN_TOKEN_LENGTH - 1),
        f"{STRONG_RUNNER},changeme",
        f"secret, {STRONG_RUNNER}",
    ],
)
def test_weak_or_short_runner_tokens_are_refused_outside_development_on_loopback(
    strict: Callable[..., dict[str, str]], tokens: str
) -> None:
    env = strict(
        SCHEDULER_HOST_RUNNER_TOKENS=tokens,
        SCHEDULER_HOST_ADMIN_TOKENS=STRONG_ADMIN,
        SCHEDULER_HOST_RUNNER_CALL_TOKEN=STRONG_CALL,
    )
    error = config_error(env)
    assert_names(error, "SCHEDULER_HOST_RUNNER_TOKENS")
    for weak in ("changeme", "secret", "local-runner-key", "a" * 10):
        assert weak not in str(error).lower().split(": ", 1)[1], "a token must not be echoed"


@pytest.mark.parametrize("strict", [production, exposed], ids=["production", "non-loopback"])
def test_missing_tokens_are_refused_outside_development_on_loopback(
    strict: Callable[..., dict[str, str]],
) -> None:
    runner_missing = strict(SCHEDULER_HOST_ADMIN_TOKENS=STRONG_ADMIN)
    runner_missing.pop("SCHEDULER_HOST_RUNNER_TOKENS", None)
    assert_names(config_error(runner_missing), "SCHEDULER_HOST_RUNNER_TOKENS")
    # Setting the runner tokens alone no longer leaves the admin token at its default.
    admin_missing = strict(SCHEDULER_HOST_RUNNER_TOKENS=STRONG_RUNNER)
    admin_missing.pop("SCHEDULER_HOST_ADMIN_TOKENS", None)
    assert_names(config_error(admin_missing), "SCHEDULER_HOST_ADMIN_TOKENS")


@pytest.mark.parametrize(
    "token", ["", "  ", "changeme", "secret", "local-admin-key", "admin", "a" * 31]
)
def test_production_refuses_a_weak_admin_token_under_either_name(token: str) -> None:
    plural = config_error(production(SCHEDULER_HOST_ADMIN_TOKENS=token))
    assert_names(plural, "SCHEDULER_HOST_ADMIN_TOKENS")
    env = production(SCHEDULER_HOST_ADMIN_TOKEN=token)
    del env["SCHEDULER_HOST_ADMIN_TOKENS"]
    assert_names(config_error(env), "SCHEDULER_HOST_ADMIN_TOKEN")


def test_admin_tokens_rotate_and_the_singular_name_is_the_same_setting() -> None:
    rotated = load_settings(
        production(SCHEDULER_HOST_ADMIN_TOKENS=f"{STRONG_ADMIN}, {STRONG_CALL}x")
    )
    assert rotated.admin_tokens == (STRONG_ADMIN, f"{STRONG_CALL}x")
    env = production(SCHEDULER_HOST_ADMIN_TOKEN=STRONG_ADMIN)
    del env["SCHEDULER_HOST_ADMIN_TOKENS"]
    assert load_settings(env).admin_tokens == (STRONG_ADMIN,)


def test_production_requires_a_runner_call_token() -> None:
    env = production()
    del env["SCHEDULER_HOST_RUNNER_CALL_TOKEN"]
    assert_names(config_error(env), "SCHEDULER_HOST_RUNNER_CALL_TOKEN")
    assert_names(
        config_error(production(SCHEDULER_HOST_RUNNER_CALL_TOKEN="short")),
        "SCHEDULER_HOST_RUNNER_CALL_TOKEN",
    )


def test_a_runner_call_token_must_be_one_line() -> None:
    error = config_error({"SCHEDULER_HOST_RUNNER_CALL_TOKEN": "abc\r\nx-injected: 1"})
    assert_names(error, "SCHEDULER_HOST_RUNNER_CALL_TOKEN")


def test_production_starts_with_strong_tokens() -> None:
    settings = load_settings(production())
    assert settings.environment == "production"
    assert settings.runner_tokens == (STRONG_RUNNER,)
    assert settings.admin_tokens == (STRONG_ADMIN,)
    assert settings.runner_call_token == STRONG_CALL


def test_an_exposed_development_service_starts_with_strong_tokens() -> None:
    settings = load_settings(
        exposed(
            SCHEDULER_HOST_RUNNER_TOKENS=STRONG_RUNNER, SCHEDULER_HOST_ADMIN_TOKENS=STRONG_ADMIN
        )
    )
    assert not settings.listens_on_loopback
    assert settings.runner_call_token == "", "only production requires the call token"


@pytest.mark.parametrize("listen", ["127.0.0.1:50051", "localhost:7000", "[::1]:50051"])
def test_development_on_loopback_allows_the_default_tokens(listen: str) -> None:
    settings = load_settings({"SCHEDULER_HOST_ENV": "development", "SCHEDULER_HOST_LISTEN": listen})
    assert settings.listens_on_loopback
    assert settings.runner_tokens == (DEFAULT_RUNNER_TOKEN,)
    assert settings.admin_tokens == (DEFAULT_ADMIN_TOKEN,)


def test_several_runner_tokens_are_split_and_trimmed() -> None:
    settings = load_settings(
        {"SCHEDULER_HOST_RUNNER_TOKENS": "  first-token , second-token,third-token  ,, "}
    )
    assert settings.runner_tokens == ("first-token", "second-token", "third-token")


def test_several_runner_tokens_in_production() -> None:
    settings = load_settings(
        production(SCHEDULER_HOST_RUNNER_TOKENS=f" {STRONG_RUNNER} ,  {STRONG_RUNNER}-next ")
    )
    assert settings.runner_tokens == (STRONG_RUNNER, f"{STRONG_RUNNER}-next")


def test_an_explicitly_empty_runner_token_list_is_refused_everywhere() -> None:
    error = config_error({"SCHEDULER_HOST_RUNNER_TOKENS": " , "})
    assert_names(error, "SCHEDULER_HOST_RUNNER_TOKENS")


def test_an_admin_token_must_not_be_a_runner_token() -> None:
    error = config_error(production(SCHEDULER_HOST_RUNNER_TOKENS=f"{STRONG_RUNNER},{STRONG_ADMIN}"))
    assert_names(error, "SCHEDULER_HOST_ADMIN_TOKENS")
    assert STRONG_ADMIN not in str(error)


# --------------------------------------------------------------------------------------------
# Database URL
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/sched", "postgresql://u:p@db:5432/sched"),
        ("postgresql+asyncpg://u@db/sched", "postgresql://u@db/sched"),
        ("  postgresql://db/sched  ", "postgresql://db/sched"),
        ("postgres://db/sched", "postgresql://db/sched"),
    ],
)
def test_database_urls_are_read_as_postgresql_urls(given: str, expected: str) -> None:
    assert load_settings({"SCHEDULER_HOST_DATABASE_URL": given}).database_url == expected


def test_a_database_url_error_does_not_echo_the_password() -> None:
    error = config_error({"SCHEDULER_HOST_DATABASE_URL": "mysql://user:hunter2@db/x"})
    assert_names(error, "SCHEDULER_HOST_DATABASE_URL")
    assert "hunter2" not in str(error)
