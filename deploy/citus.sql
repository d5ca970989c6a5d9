-- scheduler-host on a Citus cluster: the calls that distribute the schema.
--
-- Run on the coordinator, in the service's database, after `scheduler-host migrate` and before
-- `scheduler-host serve` points at it (docs/scaling.md gives the whole procedure):
--
--     psql "$SCHEDULER_HOST_DATABASE_URL" -v ON_ERROR_STOP=1 --single-transaction \
--         -f deploy/citus.sql
--
-- It needs the citus extension in that database on the coordinator and on every worker, and the
-- workers added (citus_add_node). In one transaction, a failure leaves the schema as it was.
-- Rows already in the tables are copied to the shards. It may be run again (after a later
-- `scheduler-host migrate`, say): a table already distributed is left as it is, and the
-- function definitions below are applied again.
--
-- Checked on Citus 13.0 with PostgreSQL 15 (a coordinator and two workers): every statement of
-- the service goes to one shard group except the poll (see below); docs/scaling.md says what
-- was verified there and what is reasoned.

-- Fail early, with a clear message, where Citus is missing or has no worker.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'the citus extension is not created in this database';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0) THEN
        RAISE EXCEPTION 'no Citus worker is added (citus_add_node)';
    END IF;
END
$$;

-- One connection per node for the whole script: Citus refuses to distribute a function in a
-- transaction that already used several connections to a node, as creating shards does by
-- default ("cannot run function command because there was a parallel operation on a
-- distributed table in the transaction").
SET citus.multi_shard_modify_mode TO 'sequential';

-- Reference tables: a full copy on every node, read locally wherever a statement runs.
-- install_directory is the one lookup by install id alone (which bucket holds the install) and
-- service_keys holds the deployment's keys. Both are small, and written only when an install is
-- registered or deleted (the directory) or by `scheduler-host migrate` (the keys): a write to a
-- reference table goes to every node, in a two-phase commit.
SELECT create_reference_table('install_directory')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'install_directory'::regclass);
SELECT create_reference_table('service_keys')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'service_keys'::regclass);

-- The tenant tables, distributed by bucket (adapters/db/buckets.py: 0..255, from the tenant id),
-- all in one colocation group: installs first, in a group of its own, then the others colocated
-- with it (in the order of their foreign keys), so that a bucket's rows of every table are in
-- one shard group on one node. Every foreign key (endpoints, schedules and idempotency_keys to
-- installs; schedule_runs to schedules) starts with bucket, as Citus requires of a foreign key
-- between distributed tables, so each check and cascade stays inside the shard group. 32 shards
-- hold the 256 buckets (a shard takes the buckets whose hash falls in its range, 3 to 17 of
-- them); more than 256 would leave shards empty.
SELECT create_distributed_table('installs', 'bucket', colocate_with => 'none', shard_count => 32)
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'installs'::regclass);
SELECT create_distributed_table('endpoints', 'bucket', colocate_with => 'installs')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'endpoints'::regclass);
SELECT create_distributed_table('schedules', 'bucket', colocate_with => 'installs')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'schedules'::regclass);
SELECT create_distributed_table('schedule_runs', 'bucket', colocate_with => 'installs')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'schedule_runs'::regclass);
SELECT create_distributed_table('idempotency_keys', 'bucket', colocate_with => 'installs')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'idempotency_keys'::regclass);
SELECT create_distributed_table('rate_limit_hits', 'bucket', colocate_with => 'installs')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'rate_limit_hits'::regclass);

-- The functions that work inside one bucket, delegated by their bucket argument (p_bucket, the
-- first) and colocated with the tenant tables: a call runs whole on the node that holds the
-- bucket's shards (one round trip from the coordinator; the statements inside it run there, on
-- those shards). Citus delegates a call made outside a transaction block, which is how the
-- service calls rate_limit_hit, create_schedule, finish_runs and claim_runs (each alone, in an
-- autocommit unit of work); cut_run_history is called by claim_runs, and by a manual run's
-- transaction. Named here by name, their argument lists taken from the catalog as the
-- migrations made them.
SELECT create_distributed_function(p.oid::regprocedure, 'p_bucket', colocate_with => 'installs')
FROM pg_proc AS p
WHERE p.proname IN ('rate_limit_hit', 'create_schedule', 'finish_runs', 'claim_runs',
                    'cut_run_history')
  AND pg_function_is_visible(p.oid)
ORDER BY p.proname;

-- The poll (migration 0003's dispatch_poll): the one statement that reads every bucket, on
-- purpose. It probes from dispatch_buckets (one row per bucket, 0..255), distributed and
-- colocated like the tenant tables, so that each shard group probes its own buckets (two index
-- probes per bucket, whatever the number of rows) and the coordinator only gathers the rows:
-- one task per shard. Measured at 1,000,000 schedules: 15 ms a poll, against 105 ms for a body
-- grouping by bucket, which reads every entry of every shard's due index. One connection per
-- worker for its tasks: with Citus's default, polls opened new connections to the workers (0.3
-- to 3 per poll measured, every second in every process), with it none.
SELECT create_distributed_table('dispatch_buckets', 'bucket', colocate_with => 'installs')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'dispatch_buckets'::regclass);
ALTER FUNCTION dispatch_poll(integer) SET citus.max_adaptive_executor_pool_size = 1;

-- The coordinator's own copies of the rows that were in the tables before they were
-- distributed: no longer read, but still on disk until truncated.
SELECT truncate_local_data_after_distributing_table(t)
FROM unnest(ARRAY['install_directory', 'service_keys', 'installs', 'endpoints', 'schedules',
                  'schedule_runs', 'idempotency_keys', 'rate_limit_hits',
                  'dispatch_buckets']::regclass[]) AS t;

-- What the service relies on, checked: every table distributed or replicated as above, and the
-- bucket functions delegated by their first argument in the tenant tables' colocation group.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(t, ', ') INTO missing
    FROM unnest(ARRAY['install_directory', 'service_keys', 'installs', 'endpoints', 'schedules',
                      'schedule_runs', 'idempotency_keys', 'rate_limit_hits',
                      'dispatch_buckets']) AS t
    WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t::regclass);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'not distributed: %', missing;
    END IF;
    SELECT string_agg(f, ', ') INTO missing
    FROM unnest(ARRAY['rate_limit_hit', 'create_schedule', 'finish_runs', 'claim_runs',
                      'cut_run_history']) AS f
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_dist_object AS o JOIN pg_proc AS p ON p.oid = o.objid
        WHERE o.classid = 'pg_proc'::regclass AND p.proname = f
          AND pg_function_is_visible(p.oid) AND o.distribution_argument_index = 0
          AND o.colocationid = (SELECT colocationid FROM pg_dist_partition
                                WHERE logicalrelid = 'installs'::regclass));
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'not delegated by bucket: %', missing;
    END IF;
END
$$;
