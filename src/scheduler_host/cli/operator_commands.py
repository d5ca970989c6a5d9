"""The operator commands of `scheduler-host`: installs, schedules, runs, preview and health.

They speak gRPC to a running service (SchedulerAdmin through scheduler-host-client, and
grpc.health.v1), never to its database. `preview` needs no service: it computes run times with
this package's own scheduling rules (`scheduler_host.domain`), the code the server runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TypeVar

import click
import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from schedulerhost.v1 import scheduler_admin_pb2, scheduler_host_pb2

from scheduler_host.cli import rendering
from scheduler_host.cli.failures import GRPC_EXIT_BASE, report
from scheduler_host.config import DEFAULT_ADMIN_TOKEN, Settings
from scheduler_host.domain.cron import CronError, shortest_interval, validate_cron
from scheduler_host.domain.occurrences import next_occurrences
from scheduler_host.domain.schedule import validate_timezone
from scheduler_host_client import SchedulerAdminClient, errors

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_SECONDS = 10.0
# RunScheduleNow answers once the run has finished: up to three Runner calls of 30 s and backoff.
RUN_NOW_TIMEOUT_SECONDS = 120.0

_Message = TypeVar("_Message", bound=Message)


def admin_token_from_environment(env: Mapping[str, str] = os.environ) -> str:
    """The first of SCHEDULER_HOST_ADMIN_TOKENS, else SCHEDULER_HOST_ADMIN_TOKEN, else the
    development default (which a server accepts only on loopback in development)."""
    for token in env.get("SCHEDULER_HOST_ADMIN_TOKENS", "").split(","):
        if token.strip():
            return token.strip()
    return env.get("SCHEDULER_HOST_ADMIN_TOKEN", "").strip() or DEFAULT_ADMIN_TOKEN


@dataclass(frozen=True)
class Connection:
    """Where and how the operator commands call: the global options of `scheduler-host`."""

    target: str
    token: str | None
    tls: bool
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None
    tls_server_name: str | None
    output: str
    timeout: float | None

    def credentials(self) -> grpc.ChannelCredentials | None:
        if (self.tls_cert and not self.tls_key) or (self.tls_key and not self.tls_cert):
            raise click.UsageError("--tls-cert and --tls-key go together (a client certificate)")
        if not (self.tls or self.tls_ca or self.tls_cert):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.tls_ca).read_bytes() if self.tls_ca else None,
            private_key=Path(self.tls_key).read_bytes() if self.tls_key else None,
            certificate_chain=Path(self.tls_cert).read_bytes() if self.tls_cert else None,
        )

    def channel_options(self) -> tuple[tuple[str, str | int], ...]:
        if self.tls_server_name:
            return (("grpc.ssl_target_name_override", self.tls_server_name),)
        return ()

    def admin(self, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> SchedulerAdminClient:
        return SchedulerAdminClient(
            self.target,
            self.token or admin_token_from_environment(),
            credentials=self.credentials(),
            options=self.channel_options(),
            timeout=self.timeout or timeout,
        )

    def channel(self) -> grpc.aio.Channel:
        credentials, options = self.credentials(), list(self.channel_options())
        if credentials is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        return grpc.aio.secure_channel(self.target, credentials, options=options)

    @property
    def json(self) -> bool:
        return self.output == "json"


def connection(ctx: click.Context) -> Connection:
    found = ctx.find_object(Connection)
    assert found is not None, "the scheduler-host group sets the connection"
    return found


def call_admin(
    ctx: click.Context,
    work: Callable[[SchedulerAdminClient, Connection], Awaitable[None]],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> None:
    """Runs `work` with an admin client; a failed call ends the command with its exit code."""
    conn = connection(ctx)

    async def go() -> None:
        async with conn.admin(timeout) as admin:
            await work(admin, conn)

    try:
        asyncio.run(go())
    except errors.SchedulerHostError as exc:
        ctx.exit(report(exc, conn.output))


def show_answer(
    ctx: click.Context,
    ask: Callable[[SchedulerAdminClient], Awaitable[_Message]],
    describe: Callable[[_Message], None],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> None:
    """Runs `ask` with an admin client and shows its answer: as proto3 JSON for scripts, or as
    `describe` prints it for people."""

    async def work(admin: SchedulerAdminClient, conn: Connection) -> None:
        answer = await ask(admin)
        if conn.json:
            rendering.echo_json(rendering.message_json(answer))
        else:
            describe(answer)

    call_admin(ctx, work, timeout=timeout)


install_option = click.option(
    "--install", "install_id", required=True, metavar="ID", help="The install's UUID."
)
schedule_option = click.option(
    "--schedule", "schedule_id", required=True, metavar="ID", help="The schedule's UUID."
)


# --- installs -------------------------------------------------------------------------------


@click.group(help="Register, read and delete installs (SchedulerAdmin).")
def installs() -> None:
    pass


def read_install(source: IO[str]) -> scheduler_admin_pb2.Install:
    """An Install from a JSON or YAML mapping of its fields (proto or JSON names)."""
    name = getattr(source, "name", "-")
    text = source.read()
    try:
        data = json.loads(text) if str(name).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise click.BadParameter(
            f"{name}: not valid JSON or YAML: {exc}", param_hint="-f"
        ) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{name}: expected a mapping of Install fields", param_hint="-f")
    try:
        return json_format.ParseDict(data, scheduler_admin_pb2.Install())
    except json_format.ParseError as exc:
        raise click.BadParameter(f"{name}: {exc}", param_hint="-f") from None


@installs.command(
    "upsert",
    help="""Create or replace an install from a JSON or YAML file (`-` reads stdin): the fields
    of schedulerhost.v1.Install (install_id, tenant_id, registry_id, version_id, content_hash,
    enabled, granted_capabilities, endpoints of method, path and handler).""",
)
@click.option(
    "-f",
    "--file",
    "source",
    type=click.File("r", encoding="utf-8"),
    required=True,
    help="install.yaml, install.json, or - for stdin.",
)
@click.option(
    "--disable-missing-schedules",
    is_flag=True,
    help="On a version change, disable schedules whose endpoint is gone instead of failing.",
)
@click.pass_context
def installs_upsert(ctx: click.Context, source: IO[str], disable_missing_schedules: bool) -> None:
    install = read_install(source)

    async def work(admin: SchedulerAdminClient, conn: Connection) -> None:
        response = await admin.upsert_install(
            install, disable_missing_schedules=disable_missing_schedules
        )
        if conn.json:
            rendering.echo_json(rendering.message_json(response))
            return
        rendering.install_fields(response.install)
        for schedule_id in response.disabled_schedule_ids:
            click.echo(f"disabled schedule {schedule_id}: its endpoint is gone")

    call_admin(ctx, work)


@installs.command("get", help="Show an install with its endpoints.")
@click.argument("install_id", metavar="INSTALL_ID")
@click.pass_context
def installs_get(ctx: click.Context, install_id: str) -> None:
    show_answer(ctx, lambda admin: admin.get_install(install_id), rendering.install_fields)


@installs.command("delete", help="Delete an install with its schedules and their runs.")
@click.argument("install_id", metavar="INSTALL_ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def installs_delete(ctx: click.Context, install_id: str, yes: bool) -> None:
    if not yes:
        click.confirm(
            f"Delete install {install_id} with its schedules and runs?", abort=True, err=True
        )

    async def work(admin: SchedulerAdminClient, conn: Connection) -> None:
        await admin.delete_install(install_id)
        if conn.json:
            rendering.echo_json({})
        else:
            click.echo(f"deleted install {install_id}")

    call_admin(ctx, work)


# --- schedules ------------------------------------------------------------------------------


@click.group(help="Read an install's schedules and run one now (SchedulerAdmin).")
def schedules() -> None:
    pass


@schedules.command(
    "list", help="Every schedule of an install, in creation order, whatever the install's state."
)
@install_option
@click.pass_context
def schedules_list(ctx: click.Context, install_id: str) -> None:
    async def work(admin: SchedulerAdminClient, conn: Connection) -> None:
        every = scheduler_admin_pb2.SchedulerAdminListSchedulesResponse()
        token = ""
        while True:
            page = await admin.list_schedules(install_id, page_size=100, page_token=token)
            every.schedules.extend(page.schedules)
            every.total_size = page.total_size
            token = page.next_page_token
            if not token:
                break
        if conn.json:
            rendering.echo_json(rendering.message_json(every))
            return
        rendering.schedules_table(every.schedules)
        click.echo(f"\n{len(every.schedules)} schedule(s)")

    call_admin(ctx, work)


@schedules.command("get", help="Show one schedule of an install.")
@install_option
@schedule_option
@click.pass_context
def schedules_get(ctx: click.Context, install_id: str, schedule_id: str) -> None:
    show_answer(
        ctx, lambda admin: admin.get_schedule(install_id, schedule_id), rendering.schedule_fields
    )


@schedules.command(
    "run-now",
    help="""Run a schedule at once (trigger manual) and show the run in its final state. The
    Runner is called; at most 5 such runs per tenant per minute.""",
)
@install_option
@schedule_option
@click.pass_context
def schedules_run_now(ctx: click.Context, install_id: str, schedule_id: str) -> None:
    show_answer(
        ctx,
        lambda admin: admin.run_schedule_now(install_id, schedule_id),
        rendering.run_fields,
        timeout=RUN_NOW_TIMEOUT_SECONDS,
    )


# --- runs -----------------------------------------------------------------------------------


@click.group(help="Read run history (SchedulerAdmin).")
def runs() -> None:
    pass


@runs.command("list", help="The runs of a schedule, newest first.")
@install_option
@schedule_option
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Most runs shown; 0 for every kept run.",
)
@click.pass_context
def runs_list(ctx: click.Context, install_id: str, schedule_id: str, limit: int) -> None:
    async def work(admin: SchedulerAdminClient, conn: Connection) -> None:
        shown = scheduler_admin_pb2.ListScheduleRunsResponse()
        token = ""
        while True:
            wanted = 100 if limit == 0 else min(100, limit - len(shown.runs))
            page = await admin.list_schedule_runs(
                install_id, schedule_id, page_size=wanted, page_token=token
            )
            shown.runs.extend(page.runs)
            token = page.next_page_token
            if not token or (limit and len(shown.runs) >= limit):
                break
        shown.next_page_token = token  # set when more runs exist than were shown
        if conn.json:
            rendering.echo_json(rendering.message_json(shown))
            return
        rendering.runs_table(shown.runs)
        more = " (more exist: raise --limit)" if token else ""
        click.echo(f"\n{len(shown.runs)} run(s){more}")

    call_admin(ctx, work)


# --- preview --------------------------------------------------------------------------------


def parse_instant(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@click.command(
    short_help="Next run times of a cron expression (computed locally).",
    help="""Show the next run times of a cron expression in a time zone, exactly as the
    dispatcher fires them (daylight saving included), and its shortest interval.

    Computed locally, without a service or an install: PreviewSchedule is an install-scoped call
    that needs a runner token, so this command runs the same scheduling rules the server runs
    (scheduler_host.domain.occurrences, from this same package) and validates the expression as
    CreateSchedule does. An invalid expression or time zone exits 67 (INVALID_ARGUMENT) with its
    field violations. A stored schedule's jitter and time bounds are not applied here: preview
    those with the install's PreviewSchedule(schedule_id).""",
)
@click.argument("cron")
@click.option("-z", "--timezone", default="UTC", show_default=True, help="IANA time zone.")
@click.option(
    "-n",
    "--count",
    type=click.IntRange(1, 100),
    default=10,
    show_default=True,
    help="How many run times.",
)
@click.option(
    "--start",
    callback=parse_instant,
    metavar="TIME",
    help="Run times strictly after this ISO 8601 instant (UTC without an offset); default now.",
)
@click.option(
    "--min-interval-seconds",
    type=click.IntRange(min=0),
    envvar="SCHEDULER_HOST_MIN_INTERVAL_SECONDS",
    default=Settings.min_interval_seconds,
    show_default=True,
    help="Shortest allowed gap, as the server's SCHEDULER_HOST_MIN_INTERVAL_SECONDS.",
)
@click.pass_context
def preview(
    ctx: click.Context,
    cron: str,
    timezone: str,
    count: int,
    start: datetime | None,
    min_interval_seconds: int,
) -> None:
    conn = connection(ctx)
    violations: dict[str, errors.FieldViolation] = {}
    expression = None
    try:
        expression = validate_cron(cron.strip(), min_interval_seconds)
    except CronError as exc:
        violations["cron"] = errors.FieldViolation("cron", exc.reason, str(exc))
    zone = validate_timezone(timezone, "timezone")
    if not isinstance(zone, str):
        violations["timezone"] = errors.FieldViolation(zone.field, zone.reason, zone.description)
    times: list[datetime] = []
    if expression is not None and isinstance(zone, str):
        try:
            times = next_occurrences(
                expression, zoneinfo.ZoneInfo(zone), start or datetime.now(UTC), count
            )
        except OverflowError:
            violations["start_time"] = errors.FieldViolation(
                "start_time", "START_TIME_INVALID", "start is too close to the calendar's edge"
            )
    if violations:
        invalid = errors.InvalidArgument(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the expression cannot be scheduled (checked locally)",
            reason="VALIDATION_FAILED",
            field_violations=violations,
        )
        ctx.exit(report(invalid, conn.output))
    assert expression is not None
    assert isinstance(zone, str)

    answer = scheduler_host_pb2.PreviewScheduleResponse()
    for instant in times:
        answer.run_times.add().FromDatetime(instant)
    answer.min_interval.FromTimedelta(shortest_interval(expression))
    if conn.json:
        rendering.echo_json(rendering.message_json(answer))
        return
    local = zoneinfo.ZoneInfo(zone)
    rendering.echo_table(
        ("#", "UTC", f"LOCAL ({zone})"),
        (
            (
                i,
                t.isoformat(timespec="seconds").replace("+00:00", "Z"),
                t.astimezone(local).isoformat(timespec="seconds"),
            )
            for i, t in enumerate(times, 1)
        ),
    )
    click.echo(f"\nshortest interval: {rendering.span(shortest_interval(expression))}")


# --- health ---------------------------------------------------------------------------------


@click.command(
    short_help="Whether the service serves (grpc.health.v1).",
    help="""Ask grpc.health.v1 whether the service serves: prints SERVING and exits 0, or
    prints the status and exits 78 (UNAVAILABLE). NOT_SERVING means the database does not answer
    or the server is stopping.""",
)
@click.option(
    "--service",
    default="",
    help="Empty for the whole server, or schedulerhost.v1.SchedulerHost or "
    "schedulerhost.v1.SchedulerAdmin.",
)
@click.pass_context
def health(ctx: click.Context, service: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    conn = connection(ctx)

    async def check() -> health_pb2.HealthCheckResponse:
        async with conn.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return await stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=conn.timeout or DEFAULT_TIMEOUT_SECONDS,
            )

    try:
        reply = asyncio.run(check())
    except grpc.aio.AioRpcError as exc:
        ctx.exit(report(errors.error_from_rpc(exc), conn.output))
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if conn.json:
        rendering.echo_json(rendering.message_json(reply))
    else:
        click.echo(status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        ctx.exit(GRPC_EXIT_BASE + grpc.StatusCode.UNAVAILABLE.value[0])


COMMANDS = (installs, schedules, runs, preview, health)
