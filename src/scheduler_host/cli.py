"""`scheduler-host serve | migrate | dev`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scheduler_host.config import ConfigError, load_settings
from scheduler_host.telemetry import configure_logging
from scheduler_host.transport import event_loop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scheduler-host", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC service (configured by SCHEDULER_HOST_*)")
    serve.add_argument(
        "--migrate", action="store_true", help="apply database migrations before serving"
    )
    sub.add_parser("migrate", help="apply database migrations and exit")
    sub.add_parser(
        "dev", help="embedded SQLite, a demo install and a stand-in Runner, for trying it out"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"scheduler-host: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)

    from scheduler_host import app, dev
    from scheduler_host.adapters import migrations

    try:
        if args.command == "migrate":
            event_loop.run(app.migrate_database(settings))
            print("scheduler-host: database migrated", file=sys.stderr)
        elif args.command == "serve":
            event_loop.run(app.serve(settings, migrate=args.migrate))
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


if __name__ == "__main__":
    sys.exit(main())
