"""Buckets, one-time runs, time bounds and jitter; the statements that must be one each.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 17:00:00

Every tenant table gets `bucket` (computed from the tenant id by `buckets.bucket_of`), first in
every key, unique constraint, foreign key and index, so that the schema can be distributed by
bucket on a sharded PostgreSQL and each statement routed to one shard. `install_directory` maps an
install id to its bucket (the only lookup by id alone). `rate_limit_hits` loses its serial key
(hit times strictly increase within a scope instead). Schedules gain `run_at`, `start_time`,
`end_time`, `jitter_ms` and `payload_wire`; runs count their `takeovers`.

Functions, each one round trip and each taking the bucket first (a sharded PostgreSQL delegates
the call to the shard's node): `rate_limit_hit` (the rolling window), `create_schedule` (the
quota, idempotency and insert of a create under the install's lock), `finish_runs` (a bucket's
finished runs and their schedules' last-run fields), `claim_runs` (a claim's runs and new
states, on the schedules still as read), `cut_run_history` and `dispatch_poll` (which buckets have
due work: the one read over every bucket, lock-free, from `dispatch_buckets`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

from scheduler_host.adapters.db.buckets import BUCKETS, bucket_of
from scheduler_host.adapters.migrations.sql import RATE_LIMIT_HIT_START

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TENANT_TABLES = (
    "installs",
    "endpoints",
    "schedules",
    "schedule_runs",
    "idempotency_keys",
    "rate_limit_hits",
)

_UPGRADE_KEYS = """
ALTER TABLE schedule_runs DROP CONSTRAINT fk_schedule_runs_schedule_id_schedules;
ALTER TABLE schedules DROP CONSTRAINT fk_schedules_install_id_installs;
ALTER TABLE endpoints DROP CONSTRAINT fk_endpoints_install_id_installs;

ALTER TABLE installs DROP CONSTRAINT pk_installs;
DROP INDEX ix_installs_tenant_id;
ALTER TABLE installs ADD CONSTRAINT pk_installs PRIMARY KEY (bucket, id);

ALTER TABLE endpoints DROP CONSTRAINT pk_endpoints;
ALTER TABLE endpoints DROP CONSTRAINT uq_endpoints_install_id_version_id_method_path;
ALTER TABLE endpoints
    ADD CONSTRAINT pk_endpoints PRIMARY KEY (bucket, install_id, version_id, method, path);
ALTER TABLE endpoints ADD CONSTRAINT fk_endpoints_bucket_installs
    FOREIGN KEY (bucket, install_id) REFERENCES installs (bucket, id) ON DELETE CASCADE;

ALTER TABLE schedules DROP CONSTRAINT pk_schedules;
DROP INDEX ix_schedules_tenant_id_install_id_create_time_id;
DROP INDEX uq_schedules_install_name;
DROP INDEX ix_schedules_due;
ALTER TABLE schedules ADD CONSTRAINT pk_schedules PRIMARY KEY (bucket, id);
ALTER TABLE schedules ADD CONSTRAINT fk_schedules_bucket_installs
    FOREIGN KEY (bucket, install_id) REFERENCES installs (bucket, id) ON DELETE CASCADE;
CREATE INDEX ix_schedules_bucket_install_id_create_time_id
    ON schedules (bucket, install_id, create_time, id);
CREATE UNIQUE INDEX uq_schedules_install_name
    ON schedules (bucket, install_id, name) WHERE name IS NOT NULL;
CREATE INDEX ix_schedules_due
    ON schedules (bucket, next_run_time) WHERE enabled AND next_run_time IS NOT NULL;

ALTER TABLE schedule_runs DROP CONSTRAINT pk_schedule_runs;
ALTER TABLE schedule_runs DROP CONSTRAINT uq_schedule_runs_schedule_id_trigger_scheduled_time;
DROP INDEX ix_schedule_runs_tenant_id_schedule_id_scheduled_time;
DROP INDEX ix_schedule_runs_open_lease;
ALTER TABLE schedule_runs ADD CONSTRAINT pk_schedule_runs PRIMARY KEY (bucket, id);
ALTER TABLE schedule_runs ADD CONSTRAINT uq_schedule_runs_bucket_schedule_id_trigger_scheduled_time
    UNIQUE (bucket, schedule_id, trigger, scheduled_time);
ALTER TABLE schedule_runs ADD CONSTRAINT fk_schedule_runs_bucket_schedules
    FOREIGN KEY (bucket, schedule_id) REFERENCES schedules (bucket, id) ON DELETE CASCADE;
CREATE INDEX ix_schedule_runs_bucket_schedule_id_scheduled_time_id
    ON schedule_runs (bucket, schedule_id, scheduled_time, id);
CREATE INDEX ix_schedule_runs_open_lease
    ON schedule_runs (bucket, lease_until) WHERE status IN ('pending', 'running');

-- Keys of installs that no longer exist would block the foreign key; they match nothing anyway.
DELETE FROM idempotency_keys k
WHERE NOT EXISTS (SELECT 1 FROM installs i WHERE i.bucket = k.bucket AND i.id = k.install_id);
ALTER TABLE idempotency_keys DROP CONSTRAINT pk_idempotency_keys;
DROP INDEX ix_idempotency_keys_create_time;
ALTER TABLE idempotency_keys
    ADD CONSTRAINT pk_idempotency_keys PRIMARY KEY (bucket, install_id, request_id);
ALTER TABLE idempotency_keys ADD CONSTRAINT fk_idempotency_keys_bucket_installs
    FOREIGN KEY (bucket, install_id) REFERENCES installs (bucket, id) ON DELETE CASCADE;
CREATE INDEX ix_idempotency_keys_bucket_create_time ON idempotency_keys (bucket, create_time);

-- Hit times become a key within their scope: of two equal ones, one is enough.
DELETE FROM rate_limit_hits a USING rate_limit_hits b
WHERE a.scope = b.scope AND a.hit_time = b.hit_time AND a.id > b.id;
DROP INDEX ix_rate_limit_hits_scope_hit_time;
ALTER TABLE rate_limit_hits DROP CONSTRAINT pk_rate_limit_hits;
ALTER TABLE rate_limit_hits DROP COLUMN id;
ALTER TABLE rate_limit_hits ADD CONSTRAINT pk_rate_limit_hits PRIMARY KEY (bucket, scope, hit_time);

ALTER TABLE service_keys DROP COLUMN tenant_id;
"""

_UPGRADE_SCHEDULE_COLUMNS = """
ALTER TABLE schedules ADD COLUMN run_at timestamptz;
ALTER TABLE schedules ADD COLUMN start_time timestamptz;
ALTER TABLE schedules ADD COLUMN end_time timestamptz;
ALTER TABLE schedules ADD COLUMN jitter_ms integer NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN payload_wire bytea;
ALTER TABLE schedules ADD CONSTRAINT ck_schedules_cron_or_run_at
    CHECK ((cron <> '') <> (run_at IS NOT NULL));
ALTER TABLE schedule_runs ADD COLUMN takeovers integer NOT NULL DEFAULT 0;
"""

# The rolling window of 0002, per bucket: hits are counted in lock order and their times strictly
# increase within a scope (a caller whose clock lags the newest hit counts from just after it),
# so no wait exceeds the window. A hit is not worth a synchronous WAL flush: at worst a crash of
# the database forgets the hits of its last moments.
_RATE_LIMIT_HIT = f"""
CREATE FUNCTION rate_limit_hit(
    p_bucket smallint, p_tenant_id text, p_scope text, p_limit integer, p_window interval,
    p_now timestamptz
) {RATE_LIMIT_HIT_START}
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT greatest(p_now, max(hit_time) + interval '1 microsecond') INTO now_
    FROM rate_limit_hits WHERE bucket = p_bucket AND scope = p_scope;
    window_start := now_ - p_window;
    DELETE FROM rate_limit_hits
    WHERE bucket = p_bucket AND scope = p_scope AND hit_time <= window_start;
    -- The limit-th newest hit in the window is the one whose departure frees a slot.
    SELECT hit_time INTO freeing FROM rate_limit_hits
    WHERE bucket = p_bucket AND scope = p_scope AND hit_time > window_start
    ORDER BY hit_time DESC OFFSET p_limit - 1 LIMIT 1;
    IF freeing IS NOT NULL THEN
        RETURN greatest(freeing + p_window - now_, interval '1 millisecond');
    END IF;
    INSERT INTO rate_limit_hits (bucket, scope, hit_time, tenant_id)
    VALUES (p_bucket, p_scope, now_, p_tenant_id);
    RETURN NULL;
END
$$;
"""

# A create after the install's row lock (which serialises the creates of one install, so the
# quota and the idempotency check hold exactly across processes): an earlier create with the same
# request id wins, then the quota, then the insert with its key; the name index refuses a taken
# name. Create times follow commit order (just after the newest), so a page cursor opened before
# this create does not skip it. `outcome`: added | earlier | full | no-install | stale-version.
_CREATE_SCHEDULE = """
CREATE FUNCTION create_schedule(
    p_bucket smallint, p_install_id uuid, p_request_id uuid, p_since timestamptz,
    p_limit integer, p_now timestamptz, p_version_id text,
    p_id uuid, p_tenant_id text, p_endpoint_id uuid, p_endpoint_method text,
    p_endpoint_path text, p_name text, p_cron text, p_run_at timestamptz,
    p_start_time timestamptz, p_end_time timestamptz, p_jitter_ms integer, p_timezone text,
    p_enabled boolean, p_payload jsonb, p_payload_wire bytea, p_next_run_time timestamptz,
    OUT outcome text, OUT earlier uuid, OUT created timestamptz
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n bigint;
    installed text;
BEGIN
    -- NO KEY UPDATE: serialises with other creates, not with rows that merely reference it.
    SELECT i.version_id INTO installed FROM installs i
    WHERE i.bucket = p_bucket AND i.id = p_install_id AND i.tenant_id = p_tenant_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        outcome := 'no-install';
        RETURN;
    END IF;
    -- The caller resolved the endpoint against the version it knew; an upgrade since then
    -- must be seen, or the schedule would name an endpoint of the old version.
    IF installed <> p_version_id THEN
        outcome := 'stale-version';
        RETURN;
    END IF;
    IF p_request_id IS NOT NULL THEN
        SELECT k.schedule_id INTO earlier FROM idempotency_keys k
        WHERE k.bucket = p_bucket AND k.install_id = p_install_id AND k.tenant_id = p_tenant_id
          AND k.request_id = p_request_id AND k.create_time > p_since;
        IF earlier IS NOT NULL THEN
            outcome := 'earlier';
            RETURN;
        END IF;
    END IF;
    SELECT count(*), max(s.create_time) INTO n, created FROM schedules s
    WHERE s.bucket = p_bucket AND s.tenant_id = p_tenant_id AND s.install_id = p_install_id;
    IF n >= p_limit THEN
        outcome := 'full';
        created := NULL;
        RETURN;
    END IF;
    created := greatest(p_now, created + interval '1 microsecond');
    INSERT INTO schedules (
        bucket, id, tenant_id, install_id, endpoint_id, endpoint_method, endpoint_path, name,
        cron, run_at, start_time, end_time, jitter_ms, timezone, enabled, payload,
        payload_wire, next_run_time, revision, create_time, update_time)
    VALUES (
        p_bucket, p_id, p_tenant_id, p_install_id, p_endpoint_id, p_endpoint_method,
        p_endpoint_path, p_name, p_cron, p_run_at, p_start_time, p_end_time, p_jitter_ms,
        p_timezone, p_enabled, p_payload, p_payload_wire, p_next_run_time, 1, created, created);
    IF p_request_id IS NOT NULL THEN
        INSERT INTO idempotency_keys (bucket, install_id, request_id, tenant_id, schedule_id,
                                      create_time)
        VALUES (p_bucket, p_install_id, p_request_id, p_tenant_id, p_id, created)
        ON CONFLICT (bucket, install_id, request_id) DO UPDATE
        SET schedule_id = excluded.schedule_id, create_time = excluded.create_time;
    END IF;
    outcome := 'added';
END
$$;
"""

# Finished runs of one bucket, fenced by the lease each was claimed with (a run taken over or
# released is not written), and their schedules' last-run fields; a schedule whose endpoint is
# gone is disabled. Schedules are locked first, in id order, as a schedule's DELETE (the row,
# then its runs by cascade) and a claim lock them, so none of them can deadlock with this.
_FINISH_RUNS = """
CREATE FUNCTION finish_runs(
    p_bucket smallint, p_schedule_ids uuid[], p_ids uuid[], p_leases timestamptz[],
    p_statuses text[], p_finish_times timestamptz[], p_errors text[], p_attempts integer[],
    p_last_run_times timestamptz[], p_disable_errors text[]
) RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    done record;
BEGIN
    PERFORM 1 FROM schedules
    WHERE bucket = p_bucket AND id = ANY(p_schedule_ids) ORDER BY id FOR NO KEY UPDATE;
    FOR done IN
        UPDATE schedule_runs AS r
        SET status = v.status, finish_time = v.finish_time, error = v.error,
            attempt = v.attempt, lease_until = NULL
        FROM unnest(p_ids, p_leases, p_statuses, p_finish_times, p_errors, p_attempts,
                    p_last_run_times, p_disable_errors)
            AS v(id, lease, status, finish_time, error, attempt, last_run_time, disable_error)
        WHERE r.bucket = p_bucket AND r.id = v.id AND r.lease_until = v.lease
        RETURNING r.id, r.schedule_id, v.status, v.error, v.finish_time, v.last_run_time,
                  v.disable_error
    LOOP
        UPDATE schedules AS s
        SET last_run_time = done.last_run_time, last_run_status = done.status,
            -- A schedule disabled meanwhile (an upgrade without its endpoint) keeps its reason.
            last_error = CASE WHEN NOT s.enabled AND done.error IS NULL THEN s.last_error
                              ELSE coalesce(done.disable_error, done.error) END,
            running_run_id = CASE WHEN s.running_run_id = done.id THEN NULL
                                  ELSE s.running_run_id END,
            enabled = s.enabled AND done.disable_error IS NULL,
            next_run_time = CASE WHEN done.disable_error IS NULL THEN s.next_run_time END,
            revision = s.revision + (done.disable_error IS NOT NULL)::integer,
            update_time = CASE WHEN done.disable_error IS NULL THEN s.update_time
                               ELSE done.finish_time END
        WHERE s.bucket = p_bucket AND s.id = done.schedule_id;
        RETURN NEXT done.id;
    END LOOP;
END
$$;
"""

# A bucket's newest runs of each of the given schedules are kept (the history limit); open runs
# are never cut. Called by a claim and by a manual run, so the limit is applied in one place.
_CUT_RUN_HISTORY = """
CREATE FUNCTION cut_run_history(p_bucket smallint, p_schedule_ids uuid[], p_keep integer)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM schedule_runs WHERE bucket = p_bucket AND id IN (
        SELECT ranked.id FROM (
            SELECT r.id, r.status, row_number() OVER (
                PARTITION BY r.schedule_id ORDER BY r.scheduled_time DESC, r.id DESC) AS newest
            FROM schedule_runs r WHERE r.bucket = p_bucket AND r.schedule_id = ANY(p_schedule_ids)
        ) AS ranked
        WHERE ranked.newest > p_keep AND ranked.status NOT IN ('pending', 'running'));
END
$$;
"""

# A claim's writes, planned by the dispatcher from due schedules it read without locks: each
# schedule is locked only if it is still the row version that was read (`xmin`; a schedule
# changed meanwhile, by an update, a finish or another process's claim, is left for the next
# read) and not locked by another claim (SKIP LOCKED: processes share a burst). For those, the
# runs are recorded (the unique (schedule, trigger, scheduled time) guard refuses an occurrence
# recorded twice: that schedule fires nothing), the new state is written, the history is cut.
# Returns the ids of the runs to start and the bucket's next due time. One round trip, in one
# transaction, on the bucket's shard.
_CLAIM_RUNS = """
CREATE FUNCTION claim_runs(
    p_bucket smallint, p_now timestamptz, p_lease timestamptz, p_keep integer,
    p_ids uuid[], p_row_versions xid[], p_next_run_times timestamptz[], p_enabled boolean[],
    p_last_run_times timestamptz[], p_last_run_statuses text[], p_last_errors text[],
    p_fired uuid[], p_revisions integer[], p_update_times timestamptz[],
    p_run_ids uuid[], p_run_schedule_ids uuid[], p_run_times timestamptz[], p_run_errors text[]
) RETURNS TABLE (claimed uuid[], next_due timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    locked uuid[];
    added uuid[];
    touched uuid[];
BEGIN
    SELECT coalesce(array_agg(l.id), '{}') INTO locked FROM (
        SELECT s.id FROM schedules s
        JOIN unnest(p_ids, p_row_versions) AS v(id, row_version) ON s.id = v.id
        WHERE s.bucket = p_bucket AND s.xmin = v.row_version
        FOR UPDATE OF s SKIP LOCKED
    ) AS l;
    -- A run with an error is a skipped occurrence; one without is a run to start.
    WITH recorded AS (
        INSERT INTO schedule_runs (bucket, id, tenant_id, install_id, schedule_id, trigger,
            scheduled_time, start_time, finish_time, status, attempt, error, lease_until)
        SELECT p_bucket, r.id, s.tenant_id, s.install_id, s.id, 'schedule', r.scheduled_time,
            CASE WHEN r.error IS NULL THEN p_now END,
            CASE WHEN r.error IS NOT NULL THEN p_now END,
            CASE WHEN r.error IS NULL THEN 'running' ELSE 'skipped' END,
            (r.error IS NULL)::integer, r.error,
            CASE WHEN r.error IS NULL THEN p_lease END
        FROM unnest(p_run_ids, p_run_schedule_ids, p_run_times, p_run_errors)
            AS r(id, schedule_id, scheduled_time, error)
        JOIN schedules s ON s.bucket = p_bucket AND s.id = r.schedule_id
        WHERE r.schedule_id = ANY(locked)
        ON CONFLICT (bucket, schedule_id, trigger, scheduled_time) DO NOTHING
        RETURNING schedule_runs.id, schedule_runs.schedule_id, schedule_runs.status
    )
    SELECT coalesce(array_agg(id) FILTER (WHERE status = 'running'), '{}'),
           coalesce(array_agg(DISTINCT schedule_id), '{}')
    INTO added, touched FROM recorded;
    UPDATE schedules AS s SET next_run_time = v.next_run_time, enabled = v.enabled,
        last_run_time = v.last_run_time, last_run_status = v.last_run_status,
        last_error = v.last_error,
        running_run_id = CASE WHEN v.fired = ANY(added) THEN v.fired ELSE s.running_run_id END,
        revision = v.revision, update_time = v.update_time
    FROM unnest(p_ids, p_next_run_times, p_enabled, p_last_run_times, p_last_run_statuses,
                p_last_errors, p_fired, p_revisions, p_update_times)
        AS v(id, next_run_time, enabled, last_run_time, last_run_status, last_error, fired,
             revision, update_time)
    WHERE s.bucket = p_bucket AND s.id = v.id AND v.id = ANY(locked);
    IF cardinality(touched) > 0 THEN
        PERFORM cut_run_history(p_bucket, touched, p_keep);
    END IF;
    claimed := added;
    SELECT min(s.next_run_time) INTO next_due FROM schedules s
    WHERE s.bucket = p_bucket AND s.enabled AND s.next_run_time IS NOT NULL;
    RETURN NEXT;
END
$$;
"""

# Which buckets have work, read without locks: per bucket, the earliest next run time of an
# enabled schedule and the earliest lease of an open run (two index probes a bucket, whatever the
# number of rows). Literal predicates, so the partial indexes apply. The probes start from
# `dispatch_buckets` (one row per bucket, 0..BUCKETS-1) rather than a generated series, so that
# on a sharded PostgreSQL, where that table is distributed like the tenant tables, each shard
# group probes its own buckets (deploy/citus.sql); p_buckets says how many there are.
_DISPATCH_POLL = """
CREATE FUNCTION dispatch_poll(p_buckets integer)
RETURNS TABLE (bucket smallint, next_run_time timestamptz, lease_until timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT b.bucket, d.next_run_time, l.lease_until
    FROM dispatch_buckets AS b
    CROSS JOIN LATERAL (
        SELECT min(s.next_run_time) AS next_run_time FROM schedules s
        WHERE s.bucket = b.bucket AND s.enabled AND s.next_run_time IS NOT NULL
    ) AS d
    CROSS JOIN LATERAL (
        SELECT min(r.lease_until) AS lease_until FROM schedule_runs r
        WHERE r.bucket = b.bucket AND r.status IN ('pending', 'running')
    ) AS l
    WHERE b.bucket < p_buckets AND (d.next_run_time IS NOT NULL OR l.lease_until IS NOT NULL);
END
$$;
"""

_FUNCTIONS = (
    _RATE_LIMIT_HIT,
    _CREATE_SCHEDULE,
    _FINISH_RUNS,
    _CUT_RUN_HISTORY,
    _CLAIM_RUNS,
    _DISPATCH_POLL,
)
_DROP_FUNCTIONS = """
DROP FUNCTION dispatch_poll(integer);
DROP FUNCTION claim_runs(smallint, timestamptz, timestamptz, integer, uuid[], xid[],
                         timestamptz[], boolean[], timestamptz[], text[], text[], uuid[],
                         integer[], timestamptz[], uuid[], uuid[], timestamptz[], text[]);
DROP FUNCTION cut_run_history(smallint, uuid[], integer);
DROP FUNCTION finish_runs(smallint, uuid[], uuid[], timestamptz[], text[], timestamptz[], text[],
                          integer[], timestamptz[], text[]);
DROP FUNCTION create_schedule(smallint, uuid, uuid, timestamptz, integer, timestamptz, text,
                              uuid, text, uuid, text, text, text, text, timestamptz, timestamptz,
                              timestamptz, integer, text, boolean, jsonb, bytea, timestamptz);
DROP FUNCTION rate_limit_hit(smallint, text, text, integer, interval, timestamptz);
"""
_OLD_RATE_LIMIT_DROP = "DROP FUNCTION rate_limit_hit(text, text, integer, interval, timestamptz)"


def _execute_each(script: str) -> None:
    """The statements of `script` one by one (the driver prepares each: one command at a time)."""
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def _fill_buckets() -> None:
    """Add `bucket` to the tenant tables and compute it from each row's tenant id."""
    bind = op.get_bind()
    for table in _TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ADD COLUMN bucket smallint")
    tenants = {
        row[0]
        for table in _TENANT_TABLES
        for row in bind.execute(sa.text(f"SELECT DISTINCT tenant_id FROM {table}"))
    }
    op.execute(
        "CREATE TEMPORARY TABLE tenant_buckets (tenant_id text PRIMARY KEY, bucket smallint)"
    )
    if tenants:
        bind.execute(
            sa.text("INSERT INTO tenant_buckets (tenant_id, bucket) VALUES (:tenant, :bucket)"),
            [{"tenant": t, "bucket": bucket_of(t)} for t in sorted(tenants)],
        )
    for table in _TENANT_TABLES:
        op.execute(
            f"UPDATE {table} AS t SET bucket = b.bucket FROM tenant_buckets AS b "
            "WHERE t.tenant_id = b.tenant_id"
        )
        op.execute(f"ALTER TABLE {table} ALTER COLUMN bucket SET NOT NULL")
    op.execute("DROP TABLE tenant_buckets")


def upgrade() -> None:
    op.execute(
        "CREATE TABLE install_directory (install_id uuid NOT NULL, bucket smallint NOT NULL, "
        "tenant_id varchar(128) NOT NULL, "
        "CONSTRAINT pk_install_directory PRIMARY KEY (install_id))"
    )
    _fill_buckets()
    op.execute(
        "INSERT INTO install_directory (install_id, bucket, tenant_id) "
        "SELECT id, bucket, tenant_id FROM installs"
    )
    _execute_each(_UPGRADE_KEYS)
    _execute_each(_UPGRADE_SCHEDULE_COLUMNS)
    op.execute(
        "CREATE TABLE dispatch_buckets (bucket smallint NOT NULL, "
        "CONSTRAINT pk_dispatch_buckets PRIMARY KEY (bucket))"
    )
    op.execute(f"INSERT INTO dispatch_buckets (bucket) SELECT generate_series(0, {BUCKETS - 1})")
    op.execute(_OLD_RATE_LIMIT_DROP)
    for function in _FUNCTIONS:
        op.execute(function)


_DOWNGRADE = """
ALTER TABLE schedule_runs DROP COLUMN takeovers;
ALTER TABLE schedules DROP CONSTRAINT ck_schedules_cron_or_run_at;
ALTER TABLE schedules DROP COLUMN run_at, DROP COLUMN start_time, DROP COLUMN end_time,
    DROP COLUMN jitter_ms, DROP COLUMN payload_wire;

ALTER TABLE service_keys ADD COLUMN tenant_id varchar(128) NOT NULL DEFAULT '*';
ALTER TABLE service_keys ALTER COLUMN tenant_id DROP DEFAULT;

ALTER TABLE rate_limit_hits DROP CONSTRAINT pk_rate_limit_hits;
ALTER TABLE rate_limit_hits ADD COLUMN id bigserial;
ALTER TABLE rate_limit_hits ADD CONSTRAINT pk_rate_limit_hits PRIMARY KEY (id);
CREATE INDEX ix_rate_limit_hits_scope_hit_time ON rate_limit_hits (scope, hit_time);
ALTER TABLE rate_limit_hits DROP COLUMN bucket;

ALTER TABLE idempotency_keys DROP CONSTRAINT fk_idempotency_keys_bucket_installs;
DROP INDEX ix_idempotency_keys_bucket_create_time;
ALTER TABLE idempotency_keys DROP CONSTRAINT pk_idempotency_keys;
ALTER TABLE idempotency_keys
    ADD CONSTRAINT pk_idempotency_keys PRIMARY KEY (install_id, request_id);
CREATE INDEX ix_idempotency_keys_create_time ON idempotency_keys (create_time);
ALTER TABLE idempotency_keys DROP COLUMN bucket;

ALTER TABLE schedule_runs DROP CONSTRAINT fk_schedule_runs_bucket_schedules;
ALTER TABLE schedules DROP CONSTRAINT fk_schedules_bucket_installs;
ALTER TABLE endpoints DROP CONSTRAINT fk_endpoints_bucket_installs;

ALTER TABLE schedule_runs DROP CONSTRAINT pk_schedule_runs;
ALTER TABLE schedule_runs
    DROP CONSTRAINT uq_schedule_runs_bucket_schedule_id_trigger_scheduled_time;
DROP INDEX ix_schedule_runs_bucket_schedule_id_scheduled_time_id;
DROP INDEX ix_schedule_runs_open_lease;
ALTER TABLE schedule_runs ADD CONSTRAINT pk_schedule_runs PRIMARY KEY (id);
ALTER TABLE schedule_runs ADD CONSTRAINT uq_schedule_runs_schedule_id_trigger_scheduled_time
    UNIQUE (schedule_id, trigger, scheduled_time);
CREATE INDEX ix_schedule_runs_tenant_id_schedule_id_scheduled_time
    ON schedule_runs (tenant_id, schedule_id, scheduled_time);
CREATE INDEX ix_schedule_runs_open_lease
    ON schedule_runs (lease_until) WHERE status IN ('pending', 'running');
ALTER TABLE schedule_runs DROP COLUMN bucket;

ALTER TABLE schedules DROP CONSTRAINT pk_schedules;
DROP INDEX ix_schedules_bucket_install_id_create_time_id;
DROP INDEX uq_schedules_install_name;
DROP INDEX ix_schedules_due;
ALTER TABLE schedules ADD CONSTRAINT pk_schedules PRIMARY KEY (id);
CREATE INDEX ix_schedules_tenant_id_install_id_create_time_id
    ON schedules (tenant_id, install_id, create_time, id);
CREATE UNIQUE INDEX uq_schedules_install_name ON schedules (install_id, name)
    WHERE name IS NOT NULL;
CREATE INDEX ix_schedules_due ON schedules (next_run_time)
    WHERE enabled AND next_run_time IS NOT NULL;
ALTER TABLE schedules DROP COLUMN bucket;

ALTER TABLE endpoints DROP CONSTRAINT pk_endpoints;
ALTER TABLE endpoints ADD CONSTRAINT pk_endpoints PRIMARY KEY (id);
ALTER TABLE endpoints ADD CONSTRAINT uq_endpoints_install_id_version_id_method_path
    UNIQUE (install_id, version_id, method, path);
ALTER TABLE endpoints DROP COLUMN bucket;

ALTER TABLE installs DROP CONSTRAINT pk_installs;
ALTER TABLE installs ADD CONSTRAINT pk_installs PRIMARY KEY (id);
CREATE INDEX ix_installs_tenant_id ON installs (tenant_id);
ALTER TABLE installs DROP COLUMN bucket;

ALTER TABLE endpoints ADD CONSTRAINT fk_endpoints_install_id_installs
    FOREIGN KEY (install_id) REFERENCES installs (id) ON DELETE CASCADE;
ALTER TABLE schedules ADD CONSTRAINT fk_schedules_install_id_installs
    FOREIGN KEY (install_id) REFERENCES installs (id) ON DELETE CASCADE;
ALTER TABLE schedule_runs ADD CONSTRAINT fk_schedule_runs_schedule_id_schedules
    FOREIGN KEY (schedule_id) REFERENCES schedules (id) ON DELETE CASCADE;

DROP TABLE install_directory;
"""


def downgrade() -> None:
    # One-time schedules have no cron; 0002 cannot hold them.
    op.execute("DELETE FROM schedules WHERE cron = ''")
    _execute_each(_DROP_FUNCTIONS)
    op.execute("DROP TABLE dispatch_buckets")
    _execute_each(_DOWNGRADE)
    op.execute(_revision_0002()._CREATE)


def _revision_0002() -> Any:
    """The 0002 script, whose function the downgrade restores as that revision made it."""
    path = Path(__file__).with_name("0002_rate_limit_function.py")
    spec = importlib.util.spec_from_file_location("scheduler_host_migration_0002", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
