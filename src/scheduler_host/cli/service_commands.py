"""`scheduler-host serve | migrate | dev`: the commands that run the service itself, configured by
SCHEDULER_HOST_* (they ignore the operator options of the command group)."""

from __future__ import annotations

import sys
from typing import Literal

import click

from scheduler_host.config import ConfigError, load_settings
from scheduler_host.telemetry import configure_logging
from scheduler_host.transport import event_loop

ServiceCommand = Literal["serve", "migrate", "dev"]


def run_service(command: ServiceCommand, *, migrate: bool = False) -> int:
    """Runs one service command to its end and returns its exit code: 2 for a bad setting (one
    line naming the variable, nothing touched), 1 for a start that failed, 130 on Ctrl-C."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"scheduler-host: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)

    # Imported once the settings are good: a bad setting answers before the service loads.
    from scheduler_host import app, dev
    from scheduler_host.adapters import migrations

    try:
        if command == "migrate":
            event_loop.run(app.migrate_database(settings))
            print("scheduler-host: database migrated", file=sys.stderr)
        elif command == "serve":
            event_loop.run(app.serve(settings, migrate=migrate))
        else:
            event_loop.run(dev.run_dev(settings))
    except (app.StartupError, migrations.MigrationError) as exc:
        print(f"scheduler-host: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"scheduler-host: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


@click.command(help="Run the gRPC service (configured by SCHEDULER_HOST_*).")
@click.option("--migrate", is_flag=True, help="Apply database migrations before serving.")
@click.pass_context
def serve(ctx: click.Context, migrate: bool) -> None:
    ctx.exit(run_service("serve", migrate=migrate))


@click.command(help="Apply database migrations and exit.")
@click.pass_context
def migrate(ctx: click.Context) -> None:
    ctx.exit(run_service("migrate"))


@click.command(
    short_help="Try it out: embedded SQLite, a demo install, a stand-in Runner.",
    help="Embedded SQLite, a demo install and a stand-in Runner, for trying it out.",
)
@click.pass_context
def dev(ctx: click.Context) -> None:
    ctx.exit(run_service("dev"))


COMMANDS = (serve, migrate, dev)
