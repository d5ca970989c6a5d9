"""`scheduler-host serve | migrate | dev`: the commands that run the service itself, configured by
SCHEDULER_HOST_* (they ignore the operator options of the command group)."""

from __future__ import annotations

import gc
import sys
from typing import Literal

import click

from scheduler_host.config import ConfigError, load_settings
from scheduler_host.telemetry import configure_logging
from scheduler_host.transport import event_loop
from scheduler_host.workers import run_group, worker_count

ServiceCommand = Literal["serve", "migrate", "dev"]

# Allocations between young-generation collections while serving. Every call allocates messages,
# coroutines and records that die with it; at the default (700) a collection ran every few calls
# and each one also walked the objects that had just survived.
SERVING_GEN0_THRESHOLD = 7000


def _settle_heap_for_serving() -> None:
    """Moves what start-up allocated (modules, settings, tables) out of the collector's sight with
    gc.freeze(): those objects live as long as the process, and scanning them again on every older
    collection was pure pause time. Then collects young objects less often (above)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(SERVING_GEN0_THRESHOLD, gen1, gen2)


def run_service(
    command: ServiceCommand,
    *,
    migrate: bool = False,
    workers: str = "1",
    group_member: int | None = None,
) -> int:
    """Runs one service command to its end and returns its exit code: 2 for a bad setting (one
    line naming the variable, nothing touched), 1 for a start that failed, 130 on Ctrl-C."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"scheduler-host: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        count = worker_count(workers)
    except ValueError:
        print(
            f"scheduler-host: --workers expects auto or a number of at least 1, got {workers!r}",
            file=sys.stderr,
        )
        return 2
    if count > 1 and settings.listen.rpartition(":")[2] == "0":
        print(
            "scheduler-host: configuration error: SCHEDULER_HOST_LISTEN: workers share one "
            "port, so it cannot be 0",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_format, settings.log_level)

    # Imported once the settings are good: a bad setting answers before the service loads.
    from scheduler_host import app, dev
    from scheduler_host.adapters import migrations

    try:
        if command == "migrate":
            event_loop.run(app.migrate_database(settings))
            print("scheduler-host: database migrated", file=sys.stderr)
        elif command == "serve" and count > 1 and group_member is None:
            return event_loop.run(run_group(settings, count, migrate=migrate))
        elif command == "serve":
            _settle_heap_for_serving()
            event_loop.run(
                app.serve(settings, migrate=migrate, reuse_port=group_member is not None)
            )
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
@click.option(
    "--workers",
    default="1",
    envvar="SCHEDULER_HOST_WORKERS",
    show_default=True,
    metavar="N|auto",
    help="Server processes sharing the port (SO_REUSEPORT); auto: one per core. Each has its "
    "share of the pool and its own dispatcher; worker i serves metrics on the metrics port + i.",
)
@click.option("--group-member", type=int, hidden=True)
@click.pass_context
def serve(ctx: click.Context, migrate: bool, workers: str, group_member: int | None) -> None:
    ctx.exit(run_service("serve", migrate=migrate, workers=workers, group_member=group_member))


@click.command(help="Apply database migrations and exit.")
@click.pass_context
def migrate(ctx: click.Context) -> None:
    ctx.exit(run_service("migrate"))


@click.command(
    short_help="Try it out: embedded PostgreSQL, a demo install, a stand-in Runner.",
    help="The embedded PostgreSQL, a demo install and a stand-in Runner, for trying it out.",
)
@click.pass_context
def dev(ctx: click.Context) -> None:
    ctx.exit(run_service("dev"))


COMMANDS = (serve, migrate, dev)
