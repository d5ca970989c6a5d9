"""What the operator commands print: tables for people, and for scripts the proto3 JSON mapping of
the messages (the shape grpcurl and buf curl print)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from google.protobuf import json_format
from google.protobuf.message import Message
from schedulerhost.v1 import schedule_pb2, scheduler_admin_pb2
from tabulate import tabulate

from scheduler_host_client import schedule_payload

Row = Sequence[object]


def message_json(message: Message) -> dict[str, Any]:
    """The message as proto3 JSON (lowerCamelCase names), with fields at their zero value too."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def echo_table(headers: Sequence[str], rows: Iterable[Row]) -> None:
    click.echo(
        tabulate(list(rows), headers=list(headers), tablefmt="simple", disable_numparse=True)
    )


def echo_fields(rows: Iterable[Row]) -> None:
    """One `name  value` line per row."""
    click.echo(tabulate(list(rows), tablefmt="plain", disable_numparse=True))


def when(message: Message, field: str) -> str:
    """A Timestamp field as `2026-03-08T07:00:00Z`; empty when unset."""
    if not message.HasField(field):
        return ""
    stamp: datetime = getattr(message, field).ToDatetime(UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def span(value: timedelta) -> str:
    """A duration for people: `90s`, `5m`, `1h30m`, `1d`."""
    seconds = value.total_seconds()
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    out, rest = "", int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out or "0s"


def enum_label(name: str, prefix: str) -> str:
    """`RUN_STATUS_SUCCESS` → `success`; the unspecified value → empty."""
    label = name.removeprefix(prefix).lower()
    return "" if label == "unspecified" else label


def run_status(schedule: schedule_pb2.Schedule) -> str:
    return enum_label(schedule_pb2.RunStatus.Name(schedule.last_run_status), "RUN_STATUS_")


def cadence(schedule: schedule_pb2.Schedule) -> str:
    """`0 * * * * Europe/Berlin` for a recurring schedule, `once 2030-01-01T09:00:00Z` else."""
    if schedule.cron:
        return f"{schedule.cron} {schedule.timezone or 'UTC'}"
    return f"once {when(schedule, 'run_at')}"


def enabled_label(schedule: schedule_pb2.Schedule) -> str:
    if not schedule.HasField("enabled"):
        return ""
    return "yes" if schedule.enabled else "no"


def schedules_table(schedules: Sequence[schedule_pb2.Schedule]) -> None:
    echo_table(
        ("ID", "NAME", "ENDPOINT", "WHEN", "ENABLED", "NEXT RUN", "LAST RUN"),
        (
            (
                s.id,
                s.name,
                s.endpoint,
                cadence(s),
                enabled_label(s),
                when(s, "next_run_time"),
                " ".join(filter(None, (run_status(s), when(s, "last_run_time")))),
            )
            for s in schedules
        ),
    )


def schedule_fields(schedule: schedule_pb2.Schedule) -> None:
    payload = schedule_payload(schedule)
    rows: list[Row] = [
        ("id", schedule.id),
        ("name", schedule.name),
        ("endpoint", schedule.endpoint),
        ("endpoint id", schedule.endpoint_id),
        ("cron", schedule.cron),
        ("timezone", schedule.timezone),
        ("run at", when(schedule, "run_at")),
        ("start time", when(schedule, "start_time")),
        ("end time", when(schedule, "end_time")),
        ("jitter", span(schedule.jitter.ToTimedelta()) if schedule.HasField("jitter") else ""),
        ("enabled", enabled_label(schedule)),
        ("payload", "" if payload is None else json.dumps(payload, ensure_ascii=False)),
        ("next run", when(schedule, "next_run_time")),
        ("last run", when(schedule, "last_run_time")),
        ("last status", run_status(schedule)),
        ("last error", schedule.last_error),
        ("created", when(schedule, "create_time")),
        ("updated", when(schedule, "update_time")),
        ("etag", schedule.etag),
    ]
    echo_fields((k, v) for k, v in rows if v != "" or k in {"id", "enabled"})


def install_fields(install: scheduler_admin_pb2.Install) -> None:
    echo_fields(
        (
            ("install id", install.install_id),
            ("tenant id", install.tenant_id),
            ("registry id", install.registry_id),
            ("version id", install.version_id),
            ("content hash", install.content_hash),
            ("enabled", "yes" if install.enabled else "no"),
            ("capabilities", ", ".join(install.granted_capabilities)),
            ("created", when(install, "create_time")),
            ("updated", when(install, "update_time")),
        )
    )
    click.echo()
    echo_table(
        ("METHOD", "PATH", "HANDLER"), ((e.method, e.path, e.handler) for e in install.endpoints)
    )


def _run_row(run: schedule_pb2.ScheduleRun) -> Row:
    return (
        run.id,
        enum_label(schedule_pb2.RunTrigger.Name(run.trigger), "RUN_TRIGGER_"),
        when(run, "scheduled_time"),
        when(run, "start_time"),
        when(run, "finish_time"),
        enum_label(schedule_pb2.RunState.Name(run.status), "RUN_STATE_"),
        run.attempt,
        run.error,
    )


RUN_HEADERS = ("ID", "TRIGGER", "SCHEDULED", "STARTED", "FINISHED", "STATUS", "ATTEMPTS", "ERROR")


def runs_table(runs: Sequence[schedule_pb2.ScheduleRun]) -> None:
    echo_table(RUN_HEADERS, (_run_row(r) for r in runs))


def run_fields(run: schedule_pb2.ScheduleRun) -> None:
    row = dict(zip(RUN_HEADERS, _run_row(run), strict=True))
    lateness = span(run.lateness.ToTimedelta()) if run.HasField("lateness") else ""
    echo_fields(
        (
            ("id", run.id),
            ("schedule id", run.schedule_id),
            ("trigger", row["TRIGGER"]),
            ("status", row["STATUS"]),
            ("scheduled", row["SCHEDULED"]),
            ("started", row["STARTED"]),
            ("finished", row["FINISHED"]),
            ("lateness", lateness),
            ("attempts", run.attempt),
            ("error", run.error),
        )
    )
