"""The use cases of service/schedules.py and service/installs.py on real PostgreSQL under
concurrency. Several pools stand for several server processes; each is wired as app.py wires
one (the install-context cache doubling as the endpoint cache, policies from Settings)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from typing_extensions import override

from scheduler_host.adapters.db.buckets import bucket_of
from scheduler_host.adapters.db.dispatch_store import PgDispatchStore
from scheduler_host.adapters.db.pool import DatabasePool
from scheduler_host.adapters.db.unit_of_work import PgUnitOfWorkFactory
from scheduler_host.app import schedule_policy
from scheduler_host.config import Settings
from scheduler_host.domain.endpoints import endpoint_id
from scheduler_host.domain.errors import (
    EtagMismatch,
    InstallNotFound,
    NameInUse,
    QuotaExceeded,
    ScheduleNotFound,
    ValidationFailed,
)
from scheduler_host.domain.install import InstallContext
from scheduler_host.domain.remap import MISSING_ENDPOINT_ON_UPDATE
from scheduler_host.domain.runs import RunState
from scheduler_host.domain.schedule import Schedule
from scheduler_host.service import installs, schedules
from scheduler_host.service.access import InstallContextCache, authorize_install
from scheduler_host.service.installs import EndpointSpecInput, InstallInput
from scheduler_host.service.ports import ClaimedRun, PageTokens, RunOutcome
from scheduler_host.service.schedule_input import ScheduleFields
from tests.support.storage import Db, connect, wait_for_lock_waiters

_T = TypeVar("_T")

SETTINGS = Settings()
POLICY = schedule_policy(SETTINGS)
TENANT = "tenant-a"
V1_ENDPOINTS = (("POST", "/sync"), ("GET", "/status"), ("POST", "/old"))
V2_ENDPOINTS = (("POST", "/sync"), ("GET", "/status"))
LEASE = timedelta(minutes=10)


def clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Process:
    """One server process: its pool, its caches, its units of work and its dispatcher store."""

    pool: DatabasePool
    cache: InstallContextCache
    factory: PgUnitOfWorkFactory
    store: PgDispatchStore

    async def context(self, install_id: uuid.UUID) -> InstallContext:
        """What the interceptors hand a SchedulerHost call."""
        return await authorize_install(str(install_id), uow_factory=self.factory, cache=self.cache)

    async def upsert(
        self,
        install_id: uuid.UUID,
        version: str,
        endpoints: tuple[tuple[str, str], ...],
        *,
        disable_missing: bool = True,
    ) -> list[uuid.UUID]:
        _, disabled = await installs.upsert_install(
            install_input(install_id, version, endpoints),
            disable_missing,
            uow_factory=self.factory,
            clock=clock,
            install_cache=self.cache,
        )
        return disabled

    async def create(
        self, ctx: InstallContext, *, name: str = "", request_id: str = "", **more: Any
    ) -> Schedule:
        return await schedules.create_schedule(
            ctx,
            fields(name=name, **more),
            request_id,
            uow_factory=self.factory,
            policy=POLICY,
            clock=clock,
        )

    async def update(
        self,
        ctx: InstallContext,
        s: Schedule,
        changes: ScheduleFields,
        mask: list[str],
        etag: str = "",
    ) -> Schedule:
        return await schedules.update_schedule(
            ctx,
            str(s.id),
            etag,
            changes,
            mask,
            uow_factory=self.factory,
            policy=POLICY,
            clock=clock,
        )

    async def get(self, ctx: InstallContext, s: Schedule) -> Schedule:
        return await schedules.get_schedule(ctx, str(s.id), uow_factory=self.factory)

    async def count(self, ctx: InstallContext) -> int:
        page = await schedules.list_schedules(
            ctx, 1, "", uow_factory=self.factory, tokens=_NoTokens()
        )
        return page.total_size

    async def manual_run(self, s: Schedule) -> ClaimedRun:
        target = await self.store.load_target(s.tenant_id, s.install_id, s.id)
        assert target is not None
        now = clock()
        claim = await self.store.start_manual_run(target, now, now, now + LEASE)
        assert claim is not None
        return claim


def install_input(
    install_id: uuid.UUID, version: str, endpoints: tuple[tuple[str, str], ...]
) -> InstallInput:
    return InstallInput(
        install_id=str(install_id),
        tenant_id=TENANT,
        registry_id="registry-ext",
        version_id=version,
        content_hash=f"sha256:{version}",
        enabled=None,
        granted_capabilities=("cap:scheduler.manage",),
        endpoints=tuple(EndpointSpecInput(m, p, f"handler{p}") for m, p in endpoints),
    )


class _NoTokens(PageTokens):
    @override
    def encode(self, scope: str, position: Any) -> str:
        return "next"

    @override
    def decode(self, scope: str, token: str) -> list[str] | None:
        return None


def fields(
    *,
    name: str = "",
    endpoint: str = "POST /sync",
    cron: str = "0 * * * *",
    enabled: bool | None = None,
    payload: Any = None,
) -> ScheduleFields:
    return ScheduleFields(
        endpoint=endpoint,
        cron=cron,
        name=name,
        enabled=enabled,
        payload=payload,
        present=frozenset({"endpoint", "cron", "name", "payload", "enabled"}),
    )


@pytest.fixture
async def processes(pg_url: str) -> AsyncIterator[list[Process]]:
    pools = [
        await DatabasePool.open(pg_url, size=5, max_waiters=500, acquire_timeout=120)
        for _ in range(3)
    ]
    out = []
    for pool in pools:
        cache = InstallContextCache(SETTINGS.install_cache_seconds)
        out.append(
            Process(
                pool,
                cache,
                PgUnitOfWorkFactory(pool, endpoint_cache=cache),
                PgDispatchStore(pool, 100),
            )
        )
    try:
        yield out
    finally:
        for pool in pools:
            await pool.close()


@pytest.fixture
async def install_id(processes: list[Process]) -> uuid.UUID:
    iid = uuid.uuid4()
    assert await processes[0].upsert(iid, "v1", V1_ENDPOINTS) == []
    return iid


async def outcomes(calls: list[Awaitable[_T]]) -> list[_T | Exception]:
    return list(await asyncio.gather(*calls, return_exceptions=True))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Creates
# --------------------------------------------------------------------------------------------


async def test_200_simultaneous_creates_for_one_install_leave_exactly_the_quota(
    processes: list[Process], install_id: uuid.UUID
) -> None:
    contexts = [await p.context(install_id) for p in processes]
    results = await outcomes(
        [processes[n % 3].create(contexts[n % 3], request_id=str(uuid.uuid4())) for n in range(200)]
    )
    made = [r for r in results if isinstance(r, Schedule)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(made) + len(refused) == 200, [r for r in results if isinstance(r, Exception)][:3]
    assert len(made) == POLICY.max_schedules_per_install == 50
    assert len({s.id for s in made}) == 50
    assert await processes[0].count(contexts[0]) == 50
    # Create times follow commit order: strictly increasing, so no page cursor skips one.
    times = sorted(s.create_time for s in made)
    assert len(set(times)) == 50


async def test_creates_retried_with_one_request_id_make_one_schedule(
    processes: list[Process], install_id: uuid.UUID, db: Db
) -> None:
    contexts = [await p.context(install_id) for p in processes]
    request_id = str(uuid.uuid4())
    results = await outcomes(
        [processes[n % 3].create(contexts[n % 3], request_id=request_id) for n in range(30)]
    )
    assert all(isinstance(r, Schedule) for r in results), results[:3]
    assert len({r.id for r in results if isinstance(r, Schedule)}) == 1
    assert await processes[0].count(contexts[0]) == 1
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1


async def test_retries_of_one_request_id_among_other_creates_keep_the_quota(
    processes: list[Process], install_id: uuid.UUID
) -> None:
    contexts = [await p.context(install_id) for p in processes]
    retried = str(uuid.uuid4())

    def attempt(n: int) -> Awaitable[Schedule]:
        rid = retried if n % 10 == 0 else str(uuid.uuid4())
        return processes[n % 3].create(contexts[n % 3], request_id=rid)

    results = await outcomes([attempt(n) for n in range(90)])
    assert all(isinstance(r, Schedule | QuotaExceeded) for r in results), results
    made = {r.id for r in results if isinstance(r, Schedule)}
    same = {r.id for n, r in enumerate(results) if n % 10 == 0 and isinstance(r, Schedule)}
    assert len(made) == 50
    assert len(same) == 1, "every retry of one request id returns its one schedule"
    assert await processes[0].count(contexts[0]) == 50


async def test_a_taken_name_on_create_or_update_is_name_in_use(
    processes: list[Process], install_id: uuid.UUID
) -> None:
    a, b = processes[0], processes[1]
    ctx = await a.context(install_id)
    await a.create(ctx, name="nightly")
    with pytest.raises(NameInUse):
        await b.create(await b.context(install_id), name="nightly")
    other = await a.create(ctx, name="free")
    with pytest.raises(NameInUse):
        await b.update(ctx, other, ScheduleFields(name="nightly"), ["name"])
    assert await a.get(ctx, other) == other
    assert await a.count(ctx) == 2


async def test_creates_racing_the_install_s_delete_leave_nothing_behind(
    processes: list[Process], install_id: uuid.UUID, db: Db
) -> None:
    contexts = [await p.context(install_id) for p in processes]
    creates = [processes[n % 3].create(contexts[n % 3]) for n in range(40)]
    delete = installs.delete_install(
        str(install_id), uow_factory=processes[2].factory, install_cache=processes[2].cache
    )
    results = await outcomes([*creates[:20], delete, *creates[20:]])
    assert results[20] is None
    # A create that reads the install's endpoints after the delete finds none: refused as such.
    answers = (Schedule, InstallNotFound, ValidationFailed)
    assert [r for r in results[:20] + results[21:] if not isinstance(r, answers)] == []
    assert await db.fetchval("SELECT count(*) FROM schedules") == 0
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert await db.fetchval("SELECT count(*) FROM install_directory") == 0


# --------------------------------------------------------------------------------------------
# Updates and deletes
# --------------------------------------------------------------------------------------------


async def test_optimistic_updates_racing_each_other_lose_nothing(
    processes: list[Process], install_id: uuid.UUID
) -> None:
    contexts = [await p.context(install_id) for p in processes]
    created = await processes[0].create(contexts[0], name="before")

    def update(n: int) -> Awaitable[Schedule]:
        if n == 0:
            changes, mask = ScheduleFields(name="renamed"), ["name"]
        elif n == 1:
            changes, mask = ScheduleFields(cron="30 2 * * *"), ["cron"]
        else:
            changes, mask = ScheduleFields(payload={"n": n}), ["payload"]
        return processes[n % 3].update(contexts[n % 3], created, changes, mask)

    results = await outcomes([update(n) for n in range(24)])
    stored = [r for r in results if isinstance(r, Schedule)]
    assert len(stored) == 24, [r for r in results if isinstance(r, Exception)][:3]
    final = await processes[0].get(contexts[0], created)
    # Every update changed something, so each made one revision: none was lost or doubled.
    assert sorted(r.revision for r in stored) == list(range(2, 26))
    assert final.revision == 25
    assert (final.name, final.cron) == ("renamed", "30 2 * * *")
    assert final.payload == max(stored, key=lambda r: r.revision).payload
    assert final.next_run_time is not None
    assert (
        final.next_run_time.hour,
        final.next_run_time.minute,
    ) == (2, 30)
    assert_one_content_per_etag([created, *stored, final])


async def test_updates_with_one_etag_let_one_through(
    processes: list[Process], install_id: uuid.UUID
) -> None:
    contexts = [await p.context(install_id) for p in processes]
    created = await processes[0].create(contexts[0])
    results = await outcomes(
        [
            processes[n % 3].update(
                contexts[n % 3],
                created,
                ScheduleFields(payload={"n": n}),
                ["payload"],
                created.etag,
            )
            for n in range(12)
        ]
    )
    assert sum(isinstance(r, Schedule) for r in results) == 1
    assert sum(isinstance(r, EtagMismatch) for r in results) == 11


async def test_deletes_answer_not_found_and_etag_mismatch(
    processes: list[Process], install_id: uuid.UUID
) -> None:
    p = processes[0]
    ctx = await p.context(install_id)
    s = await p.create(ctx)

    async def delete(etag: str) -> None:
        await schedules.delete_schedule(ctx, str(s.id), etag, uow_factory=p.factory)

    stale = replace(s, revision=s.revision + 1).etag  # the form of an etag, another revision
    for etag in (stale, "garbage", f"{s.revision}-00000000"):
        with pytest.raises(EtagMismatch):
            await delete(etag)
    await delete(s.etag)
    for etag in ("", s.etag, "garbage"):
        with pytest.raises(ScheduleNotFound):
            await delete(etag)
    other = await p.create(ctx)
    await schedules.delete_schedule(ctx, str(other.id), "", uow_factory=p.factory)
    with pytest.raises(ScheduleNotFound):
        await p.get(ctx, other)


# --------------------------------------------------------------------------------------------
# An upgrade racing updates and the dispatcher
# --------------------------------------------------------------------------------------------


def content(s: Schedule) -> tuple[Any, ...]:
    """What an etag names: the definition (not the dispatcher's last/next run fields)."""
    return (
        s.endpoint_id,
        s.endpoint_method,
        s.endpoint_path,
        s.name,
        s.cron,
        s.run_at,
        s.start_time,
        s.end_time,
        s.jitter,
        s.timezone,
        s.enabled,
        json.dumps(s.payload, sort_keys=True),
        s.update_time,
    )


def assert_one_content_per_etag(seen: list[Schedule]) -> None:
    named: dict[tuple[uuid.UUID, str], set[tuple[Any, ...]]] = {}
    for s in seen:
        named.setdefault((s.id, s.etag), set()).add(content(s))
    doubles = {key: found for key, found in named.items() if len(found) > 1}
    assert doubles == {}, "an etag names two contents"


async def test_an_upgrade_racing_updates_and_finishes_overwrites_nothing(
    processes: list[Process], install_id: uuid.UUID, db: Db
) -> None:
    # The remap reads the install's schedules under lock and writes only what it changes; an
    # update (optimistic, on the revision) and a finish (its own columns) neither are overwritten
    # by it nor overwrite it.
    admin, api, dispatcher = processes
    ctx = await api.context(install_id)
    # Disabled schedules take updates of their payload while the upgrade moves their endpoint.
    updated = [await api.create(ctx, name=f"u{n}", enabled=False) for n in range(4)]
    # Enabled ones keep their endpoint, which moves to the new version's.
    kept = [await api.create(ctx, name=f"k{n}") for n in range(4)]
    # And those on an endpoint the new version drops are disabled.
    dropped = [await api.create(ctx, name=f"d{n}", endpoint="POST /old") for n in range(4)]
    everything = updated + kept + dropped
    claims = [await dispatcher.manual_run(s) for s in everything]
    seen: list[Schedule] = list(everything)
    writers_done = asyncio.Event()

    async def read_all_along() -> None:
        while not writers_done.is_set():
            for s in everything:
                seen.append(await admin.get(ctx, s))

    async def update(s: Schedule, n: int) -> Schedule:
        caller = await api.context(install_id)
        return await api.update(caller, s, ScheduleFields(payload={"n": n}), ["payload"])

    async def finish(claim: ClaimedRun) -> list[Any]:
        return await dispatcher.store.finish_runs(
            [RunOutcome(claim, RunState.SUCCESS, None, 1, clock())]
        )

    async def writers() -> list[Any]:
        try:
            return await outcomes(
                [
                    admin.upsert(install_id, "v2", V2_ENDPOINTS),
                    *(update(s, n) for s in updated for n in range(5)),
                    *(finish(c) for c in claims),
                ]
            )
        finally:
            writers_done.set()

    results, _ = await asyncio.gather(writers(), read_all_along())

    failures = [r for r in results if isinstance(r, Exception)]
    assert failures == []
    disabled, update_results = results[0], results[1:21]
    assert sorted(disabled) == sorted(s.id for s in dropped)
    assert all(len(r) == 1 and r[0] is not None for r in results[21:]), "every finish written"
    seen += [r for r in update_results if isinstance(r, Schedule)]
    final = {s.id: await admin.get(ctx, s) for s in everything}
    seen += final.values()

    def v2(s: Schedule) -> uuid.UUID:
        return endpoint_id(install_id, "v2", s.endpoint_method, s.endpoint_path)

    by_schedule: dict[uuid.UUID, list[Schedule]] = {}
    for r in update_results:
        assert isinstance(r, Schedule)
        by_schedule.setdefault(r.id, []).append(r)
    for s in updated:
        f = final[s.id]
        newest = max(by_schedule[s.id], key=lambda r: r.revision)
        assert f.endpoint_id == v2(s), "the remap's move was kept"
        assert f.payload == newest.payload, "the newest update was kept"
        assert f.revision == 1 + 5 + 1, "five updates and the remap, each one revision"
        assert (f.enabled, f.last_run_status) == (False, "success"), "the finish was kept"
    for s in kept:
        f = final[s.id]
        assert (f.endpoint_id, f.revision, f.enabled) == (v2(s), 2, True)
        assert (f.last_run_status, f.payload, f.name) == ("success", s.payload, s.name)
        assert f.next_run_time == s.next_run_time
    for s in dropped:
        f = final[s.id]
        assert (f.endpoint_id, f.revision, f.enabled, f.next_run_time) == (
            s.endpoint_id,
            2,
            False,
            None,
        )
        assert f.last_run_status == "success"
        # The disable's reason, unless the run's (successful) finish came after it.
        assert f.last_error in (MISSING_ENDPOINT_ON_UPDATE, None)
    assert_one_content_per_etag(seen)
    open_runs = await db.fetchval(
        "SELECT count(*) FROM schedule_runs WHERE status <> 'success' OR lease_until IS NOT NULL"
    )
    assert open_runs == 0
    assert await db.fetchval("SELECT count(*) FROM schedules WHERE running_run_id IS NOT NULL") == 0


async def test_an_update_with_a_context_cached_before_an_upgrade_keeps_the_remapped_endpoint(
    processes: list[Process], install_id: uuid.UUID
) -> None:
    # Another process upgrades the install; this one still holds the install's context (and the
    # endpoints of its version) for up to install_cache_seconds, as app.py wires it.
    admin, api = processes[0], processes[1]
    ctx = await api.context(install_id)
    s = await api.create(ctx)  # reads (and keeps) the endpoints of v1
    await admin.upsert(install_id, "v2", V1_ENDPOINTS)
    moved = await admin.get(await admin.context(install_id), s)
    v2_sync = endpoint_id(install_id, "v2", "POST", "/sync")
    assert (moved.endpoint_id, moved.revision) == (v2_sync, 2)

    stale = await api.context(install_id)
    assert stale.version_id == "v1", "the context is still the cached one"
    stored = await api.update(stale, s, ScheduleFields(payload={"n": 1}), ["payload"])

    assert (stored.payload, stored.revision) == ({"n": 1}, 3)
    assert stored.endpoint_id == v2_sync, "the update wrote the old version's endpoint id back"


async def test_an_update_with_a_context_read_just_before_an_upgrade_is_not_refused(
    processes: list[Process], install_id: uuid.UUID
) -> None:
    # No caching at all: the context is read for the call, then the upgrade commits, then the
    # update runs. The schedule's endpoint is in both versions.
    admin, api = processes[0], processes[1]
    fresh = Process(api.pool, InstallContextCache(0), PgUnitOfWorkFactory(api.pool), api.store)
    ctx = await fresh.context(install_id)
    s = await fresh.create(ctx)
    await admin.upsert(install_id, "v2", V1_ENDPOINTS)

    try:
        stored = await fresh.update(ctx, s, ScheduleFields(payload={"n": 1}), ["payload"])
    except ValidationFailed as exc:
        pytest.fail(f"refused: {exc}")
    assert stored.endpoint_id == endpoint_id(install_id, "v2", "POST", "/sync")
    assert (stored.payload, stored.revision) == ({"n": 1}, 3)


async def test_two_registrations_of_one_new_install_for_two_tenants_leave_one_install(
    processes: list[Process], db: Db, pg_url: str
) -> None:
    # Two operators register the same new install id at once, for two tenants (in two buckets).
    # Done one after the other, the second is refused ("an install cannot change tenant").
    first, second = processes[0], processes[1]
    iid = uuid.uuid4()
    blocker = await connect(pg_url)
    try:
        # Holds the first registration after it wrote the directory entry and its install row.
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE endpoints IN SHARE MODE")
            registering = asyncio.create_task(first.upsert(iid, "v1", V1_ENDPOINTS))
            await wait_for_lock_waiters(db, 1)
            other = asyncio.create_task(
                installs.upsert_install(
                    replace(install_input(iid, "v1", V1_ENDPOINTS), tenant_id="tenant-b"),
                    True,
                    uow_factory=second.factory,
                    clock=clock,
                    install_cache=second.cache,
                )
            )
            await wait_for_lock_waiters(db, 2)
        results = await outcomes([registering, other])
    finally:
        await blocker.close()

    rows = await db.fetch("SELECT bucket, tenant_id FROM installs WHERE id = $1", iid)
    directory = await db.fetch("SELECT bucket, tenant_id FROM install_directory")
    assert [tuple(r) for r in directory] == [(bucket_of(TENANT), TENANT)]
    assert [tuple(r) for r in rows] == [(bucket_of(TENANT), TENANT)], "one install, the first"
    assert results[0] == [], results
    assert isinstance(results[1], ValidationFailed), results
