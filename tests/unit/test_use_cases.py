"""The use cases of the service layer on in-memory fakes of their ports: what each does, in one
unit of work, with the domain's rules (the same cases run on PostgreSQL in tests/integration)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from scheduler_host.app import access_policy, schedule_policy
from scheduler_host.config import Settings
from scheduler_host.domain.errors import (
    EtagMismatch,
    InstallNotFound,
    NameInUse,
    QuotaExceeded,
    RateLimited,
    RemapFailed,
    ScheduleNotFound,
    ValidationFailed,
)
from scheduler_host.domain.install import InstallContext
from scheduler_host.domain.remap import MISSING_ENDPOINT_ON_UPDATE
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service import access, installs, schedules
from scheduler_host.service.housekeeping import prune_expired
from scheduler_host.service.installs import EndpointSpecInput, InstallInput
from scheduler_host.service.page_tokens import SignedPageTokens
from scheduler_host.service.schedule_input import ScheduleFields
from tests.unit.fakes import FakeUnitOfWorkFactory

T0 = datetime(2026, 3, 7, 17, 2, tzinfo=UTC)
POLICY = schedule_policy(Settings())
TOKENS = SignedPageTokens(b"k" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def install_input(
    install_id: uuid.UUID,
    *,
    version: str = "v1",
    endpoints: tuple[tuple[str, str], ...] = (("POST", "/sync"), ("GET", "/status")),
    enabled: bool | None = True,
    tenant: str = "tenant-a",
) -> InstallInput:
    return InstallInput(
        install_id=str(install_id),
        tenant_id=tenant,
        registry_id="ext",
        version_id=version,
        content_hash="sha256:x",
        enabled=enabled,
        granted_capabilities=("cap:scheduler.manage",),
        endpoints=tuple(EndpointSpecInput(m, p, p.strip("/")) for m, p in endpoints),
    )


class World:
    """An install registered through its use case, on fakes, with a clock the test moves."""

    def __init__(self) -> None:
        self.uow = FakeUnitOfWorkFactory()
        self.clock = Clock()
        self.cache = access.InstallContextCache(0)
        self.install_id = uuid.uuid4()

    async def register(self, **kwargs: object) -> InstallContext:
        install, _ = await installs.upsert_install(
            install_input(self.install_id, **kwargs),  # type: ignore[arg-type]
            False,
            uow_factory=self.uow,
            clock=self.clock,
            install_cache=self.cache,
        )
        return install.context()

    async def create(self, ctx: InstallContext, request_id: str = "", **fields: object) -> Schedule:
        values: dict[str, object] = {"endpoint": "POST /sync", "cron": "*/5 * * * *"}
        values.update(fields)
        return await schedules.create_schedule(
            ctx,
            ScheduleFields(**values, present=frozenset(values)),  # type: ignore[arg-type]
            request_id,
            uow_factory=self.uow,
            policy=POLICY,
            clock=self.clock,
        )


@pytest.fixture
async def world() -> World:
    return World()


# --- create -------------------------------------------------------------------------------------


async def test_create_stores_the_schedule_with_its_next_run(world: World) -> None:
    ctx = await world.register()
    created = await world.create(ctx, name="sync", payload={"a": 1}, timezone="Europe/Berlin")
    assert created.endpoint == "POST /sync"
    assert created.enabled
    assert created.revision == 1
    assert created.next_run_time == T0.replace(minute=5)
    stored = await schedules.get_schedule(ctx, str(created.id), uow_factory=world.uow)
    assert stored == created


async def test_create_reports_every_violation_at_once(world: World) -> None:
    ctx = await world.register()
    with pytest.raises(ValidationFailed) as refused:
        await world.create(
            ctx, "not-a-uuid", endpoint="PUT /nowhere", cron="*/4 * * * *", timezone="Mars/X"
        )
    fields = {v.field: v.reason for v in refused.value.violations}
    assert fields == {
        "schedule.cron": "CRON_TOO_FREQUENT",
        "schedule.timezone": "TIMEZONE_INVALID",
        "schedule.endpoint": "ENDPOINT_NOT_FOUND",
        "request_id": "ID_INVALID",
    }
    assert world.uow.data.schedules == {}


async def test_the_quota_holds_and_a_retried_create_returns_the_first_result(world: World) -> None:
    ctx = await world.register()
    rid = str(uuid.uuid4())
    first = await world.create(ctx, rid)
    for _ in range(POLICY.max_schedules_per_install - 1):
        await world.create(ctx)
    with pytest.raises(QuotaExceeded):
        await world.create(ctx)
    # The retry still answers with the schedule it made, full as the install is.
    assert (await world.create(ctx, rid)).id == first.id
    assert len(world.uow.data.schedules) == POLICY.max_schedules_per_install


async def test_a_taken_name_is_name_in_use_and_stores_nothing(world: World) -> None:
    ctx = await world.register()
    await world.create(ctx, name="daily")
    with pytest.raises(NameInUse):
        await world.create(ctx, name="daily")
    assert len(world.uow.data.schedules) == 1


async def test_create_times_follow_creation_order_when_the_clock_lags(world: World) -> None:
    ctx = await world.register()
    first = await world.create(ctx)
    world.clock.now = T0 - timedelta(seconds=5)  # another process's clock, behind
    second = await world.create(ctx)
    assert second.create_time > first.create_time


# --- list, update, delete -----------------------------------------------------------------------


async def test_pages_follow_creation_order_and_carry_the_total(world: World) -> None:
    ctx = await world.register()
    made = []
    for n in range(5):
        world.clock.now = T0 + timedelta(seconds=n)
        made.append((await world.create(ctx)).id)
    page = await schedules.list_schedules(ctx, 2, "", uow_factory=world.uow, tokens=TOKENS)
    seen = [s.id for s in page.schedules]
    while page.next_page_token:
        page = await schedules.list_schedules(
            ctx, 2, page.next_page_token, uow_factory=world.uow, tokens=TOKENS
        )
        seen += [s.id for s in page.schedules]
    assert seen == made
    assert page.total_size == 5


async def test_update_changes_only_the_masked_fields_and_the_etag(world: World) -> None:
    ctx = await world.register()
    created = await world.create(ctx, name="keep", payload={"a": 1})
    updated = await schedules.update_schedule(
        ctx,
        str(created.id),
        created.etag,
        ScheduleFields(cron="0 * * * *", name="ignored", present=frozenset({"cron", "name"})),
        ["cron"],
        uow_factory=world.uow,
        policy=POLICY,
        clock=world.clock,
    )
    assert (updated.cron, updated.name, updated.payload) == ("0 * * * *", "keep", {"a": 1})
    assert updated.etag != created.etag
    assert updated.next_run_time == T0.replace(hour=18, minute=0)
    with pytest.raises(EtagMismatch):
        await schedules.update_schedule(
            ctx,
            str(created.id),
            created.etag,
            ScheduleFields(enabled=False, present=frozenset({"enabled"})),
            None,
            uow_factory=world.uow,
            policy=POLICY,
            clock=world.clock,
        )


async def test_delete_with_a_stale_etag_is_refused_and_without_one_applies(world: World) -> None:
    ctx = await world.register()
    created = await world.create(ctx)
    with pytest.raises(EtagMismatch):
        await schedules.delete_schedule(
            ctx, str(created.id), f"7-{created.id.hex[:8]}", uow_factory=world.uow
        )
    await schedules.delete_schedule(ctx, str(created.id), "", uow_factory=world.uow)
    with pytest.raises(ScheduleNotFound):
        await schedules.delete_schedule(ctx, str(created.id), "", uow_factory=world.uow)


async def test_another_install_sees_nothing_of_a_schedule(world: World) -> None:
    ctx = await world.register()
    created = await world.create(ctx)
    other = World()
    other.uow = world.uow
    other_ctx = await other.register(tenant="tenant-b")
    with pytest.raises(ScheduleNotFound):
        await schedules.get_schedule(other_ctx, str(created.id), uow_factory=world.uow)


# --- installs -----------------------------------------------------------------------------------


async def test_an_upgrade_remaps_schedules_or_fails_when_one_would_be_orphaned(
    world: World,
) -> None:
    ctx = await world.register()
    kept = await world.create(ctx)
    gone = await world.create(ctx, endpoint="GET /status")
    v2 = install_input(world.install_id, version="v2", endpoints=(("POST", "/sync"),))
    with pytest.raises(RemapFailed):
        await installs.upsert_install(
            v2, False, uow_factory=world.uow, clock=world.clock, install_cache=world.cache
        )
    assert world.uow.data.installs[world.install_id].version_id == "v1", "nothing written"
    _, disabled = await installs.upsert_install(
        v2, True, uow_factory=world.uow, clock=world.clock, install_cache=world.cache
    )
    assert disabled == [gone.id]
    after = world.uow.data.schedules
    assert after[kept.id].endpoint_id != kept.endpoint_id
    assert after[kept.id].enabled
    assert not after[gone.id].enabled
    assert after[gone.id].last_error == MISSING_ENDPOINT_ON_UPDATE
    assert after[gone.id].revision == gone.revision + 1


async def test_a_reenabled_install_continues_from_now(world: World) -> None:
    ctx = await world.register()
    created = await world.create(ctx)
    await world.register(enabled=False)
    world.clock.now = T0 + timedelta(hours=3, minutes=1)
    await world.register(enabled=True)
    assert world.uow.data.schedules[created.id].next_run_time == T0.replace(hour=20, minute=5)


async def test_an_install_cannot_change_tenant(world: World) -> None:
    await world.register()
    with pytest.raises(ValidationFailed):
        await world.register(tenant="tenant-b")


async def test_upsert_and_delete_refresh_the_cached_context(world: World) -> None:
    world.cache = access.InstallContextCache(60)
    await world.register()
    first = await access.authorize_install(
        str(world.install_id), uow_factory=world.uow, cache=world.cache
    )
    await world.register(version="v2")
    refreshed = await access.authorize_install(
        str(world.install_id), uow_factory=world.uow, cache=world.cache
    )
    assert (first.version_id, refreshed.version_id) == ("v1", "v2")
    await installs.delete_install(
        str(world.install_id), uow_factory=world.uow, install_cache=world.cache
    )
    with pytest.raises(InstallNotFound):
        await access.authorize_install(
            str(world.install_id), uow_factory=world.uow, cache=world.cache
        )


async def test_deleting_an_install_drops_its_keys_and_rate_limit_hits(world: World) -> None:
    ctx = await world.register()
    await world.create(ctx, str(uuid.uuid4()))
    await access.count_call(
        access.mutations_scope(ctx.install_id),
        ctx.tenant_id,
        10,
        "calls",
        uow_factory=world.uow,
        clock=world.clock,
    )
    await installs.delete_install(
        str(world.install_id), uow_factory=world.uow, install_cache=world.cache
    )
    assert world.uow.data.keys == {}
    assert world.uow.data.hits == {}


# --- limits -------------------------------------------------------------------------------------


async def test_the_rate_limit_counts_every_call_and_says_how_long_to_wait(world: World) -> None:
    policy = access_policy(Settings())
    for _ in range(policy.mutations_per_minute):
        await access.count_call(
            "scope",
            "t",
            policy.mutations_per_minute,
            "calls",
            uow_factory=world.uow,
            clock=world.clock,
        )
    world.clock.now = T0 + timedelta(seconds=20)
    with pytest.raises(RateLimited) as refused:
        await access.count_call(
            "scope",
            "t",
            policy.mutations_per_minute,
            "calls",
            uow_factory=world.uow,
            clock=world.clock,
        )
    assert timedelta(seconds=39) < refused.value.retry_after <= timedelta(seconds=40)


def test_the_read_limit_is_per_install_and_frees_as_the_window_rolls() -> None:
    now = [0.0]
    limiter = access.ReadLimiter(3, ticker=lambda: now[0])
    first, second = uuid.uuid4(), uuid.uuid4()
    for _ in range(3):
        limiter.hit(first)
    limiter.hit(second)  # another install has its own budget
    with pytest.raises(RateLimited) as refused:
        limiter.hit(first)
    assert refused.value.retry_after == timedelta(seconds=60)
    now[0] = 60.5
    limiter.hit(first)


def test_the_install_cache_expires_on_the_clock_it_is_given() -> None:
    now = [0.0]
    cache = access.InstallContextCache(1.0, ticker=lambda: now[0])
    ctx = InstallContext(uuid.uuid4(), "t", "r", "v", "h", True, frozenset())
    cache.put(ctx.install_id, ctx)
    assert cache.get(ctx.install_id) == (True, ctx)
    now[0] = 1.5
    assert cache.get(ctx.install_id) == (False, None)


async def test_prune_removes_expired_keys_and_hits_only(world: World) -> None:
    ctx = await world.register()
    await world.create(ctx, str(uuid.uuid4()))
    world.clock.now = T0 + timedelta(hours=23)
    await world.create(ctx, str(uuid.uuid4()))
    world.clock.now = T0 + timedelta(hours=24, seconds=30)
    await access.count_call("scope", "t", 10, "calls", uow_factory=world.uow, clock=world.clock)
    # The first key is past its 24 h; the second key and the hit are fresh.
    assert await prune_expired(uow_factory=world.uow, clock=world.clock) == 1
    assert len(world.uow.data.keys) == 1
    assert len(world.uow.data.hits["scope"]) == 1
    world.clock.now += timedelta(minutes=2)
    assert await prune_expired(uow_factory=world.uow, clock=world.clock) == 1  # the hit
