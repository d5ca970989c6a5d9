"""Operability through the real server: Prometheus metrics, trace spans, JSON logs, and health
that follows the database."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb

from scheduler_host.app import start_application
from tests.e2e.conftest import e2e_settings
from tests.support.grpc_status_details import rpc_failure
from tests.support.postgres import start_throwaway_cluster
from tests.support.runner_standin import RecordingRunner
from tests.support.server import (
    ADMIN_TOKEN,
    RUNNER_TOKEN,
    Stubs,
    admin_metadata,
    free_port,
    register_install,
    spawn_server,
    wait_until_serving,
)


@pytest.fixture
async def runner() -> AsyncIterator[RecordingRunner]:
    stand_in = RecordingRunner()
    await stand_in.start()
    try:
        yield stand_in
    finally:
        await stand_in.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(operation: str, tenant_id: str, code: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted({"operation": operation, "tenant_id": tenant_id, "grpc_code": code}.items())
    )


@pytest.mark.usefixtures("app")
async def test_metrics_endpoint_counts_calls_errors_durations_and_runs(
    e2e_database_url: str, runner: RecordingRunner
) -> None:
    metrics_port = free_port()
    served = await start_application(
        e2e_settings(
            e2e_database_url,
            metrics_listen=f"127.0.0.1:{metrics_port}",
            runner_base_url=runner.url,
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stubs = Stubs(channel)
            install = await register_install(stubs.admin)
            good = schedule_pb2.Schedule(endpoint="POST /sync", cron="0 * * * *")
            created = await stubs.host.CreateSchedule(
                pb.CreateScheduleRequest(schedule=good), metadata=install.metadata
            )
            for _ in range(2):
                await rpc_failure(
                    stubs.host.CreateSchedule(
                        pb.CreateScheduleRequest(
                            schedule=schedule_pb2.Schedule(endpoint="/sync", cron="* * * * *")
                        ),
                        metadata=install.metadata,
                    )
                )
            await rpc_failure(
                stubs.host.ListSchedules(
                    pb.ListSchedulesRequest(), metadata=(("x-runner-auth", "wrong"),)
                )
            )
            await stubs.admin.RunScheduleNow(
                admin_pb.RunScheduleNowRequest(
                    install_id=install.install_id, schedule_id=created.schedule.id
                ),
                metadata=admin_metadata(),
            )
        samples = scrape(metrics_port)
    finally:
        await served.stop()

    tenant = install.tenant_id
    ok = labels("CreateSchedule", tenant, "OK")
    invalid = labels("CreateSchedule", tenant, "INVALID_ARGUMENT")
    unauthenticated = labels("ListSchedules", "", "UNAUTHENTICATED")
    assert samples[("extension_scheduler_api_calls_total", ok)] == 1
    assert samples[("extension_scheduler_api_calls_total", invalid)] == 2
    assert samples[("extension_scheduler_api_errors_total", invalid)] == 2
    assert ("extension_scheduler_api_errors_total", ok) not in samples
    assert samples[("extension_scheduler_api_errors_total", unauthenticated)] == 1
    # The histogram has no tenant label: one series per operation and code, whatever the tenants.
    create_ok = (("grpc_code", "OK"), ("operation", "CreateSchedule"))
    assert samples[("extension_scheduler_api_duration_seconds_count", create_ok)] == 1
    assert samples[("extension_scheduler_api_duration_seconds_sum", create_ok)] > 0
    assert not any(
        name.startswith("extension_scheduler_api_duration") and "tenant_id" in dict(key)
        for name, key in samples
    )
    admin_run = labels("RunScheduleNow", "", "OK")
    assert samples[("extension_scheduler_api_calls_total", admin_run)] == 1
    assert samples[("extension_scheduler_runs_total", (("status", "success"),))] == 1
    assert samples[("extension_scheduler_run_lateness_seconds_count", ())] == 1


@pytest.mark.usefixtures("app")
async def test_each_rpc_is_a_server_span_with_database_spans_inside(e2e_database_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = await start_application(e2e_settings(e2e_database_url), tracer_provider=provider)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{traced.port}") as channel:
            stubs = Stubs(channel)
            install = await register_install(stubs.admin)
            exporter.clear()
            await stubs.host.ListSchedules(pb.ListSchedulesRequest(), metadata=install.metadata)
            await stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata)
    finally:
        await traced.stop()
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert sorted(s.name for s in servers) == [
        "/schedulerhost.v1.SchedulerHost/GetEndpoints",
        "/schedulerhost.v1.SchedulerHost/ListSchedules",
    ]
    for server in servers:
        children = [
            s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id
        ]
        assert children, f"no database span under {server.name}"
        assert all(c.context.trace_id == server.context.trace_id for c in children)
        assert any("SELECT" in c.name for c in children), [c.name for c in children]


@pytest.mark.usefixtures("app")
async def test_json_logs_carry_the_call_fields_and_no_token(
    e2e_database_url: str, tmp_path: Path
) -> None:
    server = spawn_server(
        e2e_database_url, tmp_path / "server.log", SCHEDULER_HOST_LOG_FORMAT="json"
    )
    try:
        await asyncio.to_thread(wait_until_serving, server)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = Stubs(channel)
            install = await register_install(stubs.admin)
            await stubs.host.ListSchedules(
                pb.ListSchedulesRequest(),
                metadata=(*install.metadata, ("x-request-id", "req-telemetry-1")),
            )
            await rpc_failure(
                stubs.host.GetSchedule(
                    pb.GetScheduleRequest(id="not-a-uuid"), metadata=install.metadata
                )
            )
    finally:
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    calls = [line for line in lines if line.get("logger") == "scheduler_host.rpc"]
    listed = next(line for line in calls if line.get("request_id") == "req-telemetry-1")
    assert listed["operation"] == "ListSchedules"
    assert listed["grpc_code"] == "OK"
    assert listed["install_id"] == install.install_id
    assert listed["tenant_id"] == install.tenant_id
    assert listed["duration_ms"] >= 0
    refused = next(line for line in calls if line.get("operation") == "GetSchedule")
    assert refused["grpc_code"] == "INVALID_ARGUMENT"
    assert refused["request_id"]
    text = server.log()
    assert RUNNER_TOKEN not in text
    assert ADMIN_TOKEN not in text


async def health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        return int(reply.status)


async def wait_for_health(target: str, wanted: int, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await health(target) == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health did not become {wanted} within {within} s")


async def test_health_is_not_serving_while_the_database_is_down() -> None:
    with start_throwaway_cluster() as cluster:
        url = cluster.server.url("postgres")
        served = await start_application(e2e_settings(url, health_check_seconds=0.2), migrate=True)
        target = f"127.0.0.1:{served.port}"
        try:
            assert await health(target) == health_pb2.HealthCheckResponse.SERVING
            await asyncio.to_thread(cluster.stop)
            await wait_for_health(target, health_pb2.HealthCheckResponse.NOT_SERVING, 10)
            await asyncio.to_thread(cluster.start)
            await wait_for_health(target, health_pb2.HealthCheckResponse.SERVING, 10)
        finally:
            await served.stop()
