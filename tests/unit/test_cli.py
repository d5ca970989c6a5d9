"""`scheduler-host` without a service: its help, how it refuses bad input before sending anything,
where the admin token comes from, and the local preview."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler_host.cli import main
from scheduler_host.cli.operator_commands import admin_token_from_environment
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_help_names_every_command_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in (
        "serve",
        "migrate",
        "dev",
        "installs",
        "schedules",
        "runs",
        "preview",
        "health",
    ):
        assert f"  {command} " in out, command
    for option in ("--target", "--token", "--tls-ca", "--tls-cert", "--tls-key", "--output"):
        assert option in out, option
    assert "67 INVALID_ARGUMENT" in out
    assert "80 UNAUTHENTICATED" in out


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scheduler_host.cli", "schedules", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "list" in done.stdout
    assert "run-now" in done.stdout


def test_preview_help_says_how_it_is_computed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Computed locally" in out
    assert "scheduler_host.domain.occurrences" in out


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("install_id: [unclosed", "not valid JSON or YAML"),
        ("- just\n- a list\n", "expected a mapping of Install fields"),
        ("install_id: x\nsurprise: 1\n", "surprise"),
    ],
)
def test_a_bad_install_file_exits_2_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    source = tmp_path / "install.yaml"
    source.write_text(text)
    # Nothing listens there: a call would end 78 (UNAVAILABLE), not 2.
    code = main(["--target", f"127.0.0.1:{free_port()}", "installs", "upsert", "-f", str(source)])
    assert code == 2
    err = capsys.readouterr().err
    assert problem in err
    assert "install.yaml" in err


def test_the_admin_token_comes_from_the_servers_variables() -> None:
    assert admin_token_from_environment({"SCHEDULER_HOST_ADMIN_TOKENS": " ,a , b"}) == "a"
    assert (
        admin_token_from_environment(
            {"SCHEDULER_HOST_ADMIN_TOKENS": "", "SCHEDULER_HOST_ADMIN_TOKEN": " single "}
        )
        == "single"
    )
    both = {"SCHEDULER_HOST_ADMIN_TOKENS": "first", "SCHEDULER_HOST_ADMIN_TOKEN": "second"}
    assert admin_token_from_environment(both) == "first"
    assert admin_token_from_environment({}) == "local-admin-key"


def test_preview_across_a_daylight_saving_jump(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["preview", "30 2 * * *", "-z", "America/New_York", "-n", "3"]
    assert main([*args, "--start", "2026-03-07T00:00:00Z"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "UTC", "LOCAL", "(America/New_York)"]
    assert [line.split()[1:] for line in lines[2:5]] == [
        ["2026-03-07T07:30:00Z", "2026-03-07T02:30:00-05:00"],
        ["2026-03-08T07:00:00Z", "2026-03-08T03:00:00-04:00"],  # 02:30 does not exist: 03:00
        ["2026-03-09T06:30:00Z", "2026-03-09T02:30:00-04:00"],
    ]
    assert lines[-1] == "shortest interval: 1d"


def test_preview_refuses_what_create_would_refuse(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-o", "json", "preview", "*/4 * * * *", "-z", "../../etc/passwd"]) == 67
    captured = capsys.readouterr()
    assert captured.out == ""
    error = json.loads(captured.err)
    assert {v["field"]: v["reason"] for v in error["fieldViolations"]} == {
        "cron": "CRON_TOO_FREQUENT",
        "timezone": "TIMEZONE_INVALID",
    }
    # The minimum interval follows the server's setting.
    assert main(["preview", "*/4 * * * *", "--min-interval-seconds", "240", "-n", "1"]) == 0
