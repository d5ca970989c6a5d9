"""The `scheduler-host` command (Click): `serve`, `migrate` and `dev` run the service; `installs`,
`schedules`, `runs`, `preview` and `health` are the operator's commands, which call a running
service over gRPC. `main` is the console entry point; `python -m scheduler_host.cli` runs it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from scheduler_host.cli import operator_commands, service_commands
from scheduler_host.cli.failures import EXIT_CODES_HELP, EXIT_FAILURE
from scheduler_host.cli.operator_commands import DEFAULT_TARGET, Connection

_Command = TypeVar("_Command", bound=Callable[..., Any])


def _pem_file_option(name: str, help: str) -> Callable[[_Command], _Command]:
    """An option naming a PEM file that must exist."""
    return click.option(
        name, type=click.Path(exists=True, dir_okay=False), metavar="FILE", help=help
    )


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.option(
    "--target",
    default=DEFAULT_TARGET,
    show_default=True,
    metavar="HOST:PORT",
    help="The service the operator commands call.",
)
@click.option(
    "--token",
    metavar="TOKEN",
    help="Admin token (default: the first of $SCHEDULER_HOST_ADMIN_TOKENS, else "
    "$SCHEDULER_HOST_ADMIN_TOKEN, else the development default local-admin-key).",
)
@click.option("--tls", is_flag=True, help="Use TLS, trusting the system's root certificates.")
@_pem_file_option(
    "--tls-ca", "CA certificates (PEM) to trust for the server's certificate; implies --tls."
)
@_pem_file_option("--tls-cert", "Client certificate (PEM) for mTLS, with --tls-key; implies --tls.")
@_pem_file_option("--tls-key", "Private key (PEM) of the client certificate.")
@click.option(
    "--tls-server-name",
    metavar="NAME",
    help="Name the server's certificate must carry when it is not the target's host.",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Tables for people; JSON (proto3 JSON mapping, errors on stderr) for scripts.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Deadline of each call (default 10 s; 120 s for schedules run-now).",
)
@click.version_option(package_name="scheduler-host", prog_name="scheduler-host")
@click.pass_context
def cli(
    ctx: click.Context,
    target: str,
    token: str | None,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_server_name: str | None,
    output: str,
    timeout: float | None,
) -> None:
    """scheduler-host: run the service (serve, migrate, dev; configured by SCHEDULER_HOST_*), or
    operate a running one over gRPC (installs, schedules, runs, preview, health)."""
    ctx.obj = Connection(
        target=target,
        token=token,
        tls=tls,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_server_name=tls_server_name,
        output=output,
        timeout=timeout,
    )


for command in (*service_commands.COMMANDS, *operator_commands.COMMANDS):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `scheduler-host` with `argv` (default: the process's arguments); the exit code."""
    try:
        code = cli.main(
            args=None if argv is None else list(argv),
            prog_name="scheduler-host",
            standalone_mode=False,
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return EXIT_FAILURE
    return code if isinstance(code, int) else 0


__all__ = ["cli", "main"]
