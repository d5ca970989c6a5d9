"""`scheduler-host dev`: the embedded PostgreSQL with a demo install, ready to call."""

from __future__ import annotations

import asyncio
import signal
import uuid
from dataclasses import replace

from scheduler_host.app import start_application
from scheduler_host.config import Settings
from scheduler_host.domain.install import SCHEDULER_CAPABILITY
from scheduler_host.runner_standin import StandInRunner
from scheduler_host.service.installs import EndpointSpecInput, InstallInput, upsert_install

DEMO_INSTALL_ID = uuid.UUID("00000000-0000-4000-8000-00000000d3e0")
# The tenant of the README's calls and install.yaml, so that they work on the same data.
DEMO_TENANT = "t1"
DEMO_ENDPOINTS = (
    EndpointSpecInput("POST", "/sync", "sync"),
    EndpointSpecInput("GET", "/status", "status"),
    EndpointSpecInput("GET", "/report", "report_get"),
    EndpointSpecInput("POST", "/report", "report_post"),
    EndpointSpecInput("PUT", "/items/{id}", "update_item"),
)


async def run_dev(settings: Settings) -> None:
    if settings.database_url:
        print(f"dev: using {settings.database_url.split('@')[-1]}")
    # Runs go to a stand-in Runner on loopback that logs them, so they can be seen happening.
    runner = StandInRunner()
    await runner.start()
    settings = replace(settings, environment="development", runner_base_url=runner.url)
    app = await start_application(settings, migrate=True)
    await upsert_install(
        InstallInput(
            install_id=str(DEMO_INSTALL_ID),
            tenant_id=DEMO_TENANT,
            registry_id="demo-extension",
            version_id="v1",
            content_hash="sha256:demo",
            enabled=True,
            granted_capabilities=(SCHEDULER_CAPABILITY,),
            endpoints=DEMO_ENDPOINTS,
        ),
        True,
        uow_factory=app.deps.uow_factory,
        clock=app.deps.clock,
        install_cache=app.deps.install_cache,
    )
    host = settings.listen
    token = settings.runner_tokens[0]
    print(
        f"""
scheduler-host dev is listening on {host}
  install id     {DEMO_INSTALL_ID}
  runner token   {token}        (metadata x-runner-auth)
  admin token    {settings.admin_tokens[0]}        (metadata authorization: Bearer ...)
  stand-in Runner {runner.url}   (logs each execution it receives)

Try it:
  npx buf curl --protocol grpc --http2-prior-knowledge \\
    -H 'x-runner-auth: {token}' -H 'x-install-id: {DEMO_INSTALL_ID}' \\
    -d '{{"schedule": {{"endpoint": "POST /sync", "cron": "*/5 * * * *", \\
          "timezone": "Europe/Berlin", "payload": {{"full": true}}}}}}' \\
    http://{host}/schedulerhost.v1.SchedulerHost/CreateSchedule
  grpcurl -plaintext -H 'x-runner-auth: {token}' -H 'x-install-id: {DEMO_INSTALL_ID}' \\
    {host} schedulerhost.v1.SchedulerHost/ListSchedules
  grpcurl -plaintext -H 'authorization: Bearer {settings.admin_tokens[0]}' \\
    -d '{{"install_id": "{DEMO_INSTALL_ID}", "schedule_id": "<id from CreateSchedule>"}}' \\
    {host} schedulerhost.v1.SchedulerAdmin/RunScheduleNow
""",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await app.stop()
    await runner.stop()
