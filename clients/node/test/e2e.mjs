#!/usr/bin/env node
// End-to-end check of the generated Node.js client against a running scheduler-host.
//
//   node test/e2e.mjs --address 127.0.0.1:50051 --runner-token T --admin-token A [--install-id UUID]
//
// Every option may come from the environment instead: SCHEDULER_HOST_ADDRESS,
// SCHEDULER_HOST_RUNNER_TOKEN, SCHEDULER_HOST_ADMIN_TOKEN, SCHEDULER_HOST_INSTALL_ID. Without an
// install id a fresh one is used. The script registers the install through SchedulerAdmin, runs
// the SchedulerHost operations and reads the google.rpc.Status details of two failures. It prints
// one "ok <step>" line per step and a final JSON summary line; it exits 1 on the first failure.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import { parseArgs } from "node:util";

const require = createRequire(import.meta.url);
const grpc = require("@grpc/grpc-js");
const hostPb = require("../generated/schedulerhost/v1/scheduler_host.js");
const adminPb = require("../generated/schedulerhost/v1/scheduler_admin.js");
const { Status } = require("../generated/google/rpc/status.js");
const { ErrorInfo, BadRequest, ResourceInfo } = require("../generated/google/rpc/error_details.js");

const CAPABILITY = "cap:scheduler.manage";
const DEADLINE_MS = 10_000;

const { values: args } = parseArgs({
  options: {
    address: { type: "string", default: process.env.SCHEDULER_HOST_ADDRESS },
    "runner-token": { type: "string", default: process.env.SCHEDULER_HOST_RUNNER_TOKEN },
    "admin-token": { type: "string", default: process.env.SCHEDULER_HOST_ADMIN_TOKEN },
    "install-id": { type: "string", default: process.env.SCHEDULER_HOST_INSTALL_ID },
  },
});
for (const name of ["address", "runner-token", "admin-token"]) {
  if (!args[name]) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
}
const installId = args["install-id"] || randomUUID();

// ---------------------------------------------------------------------------------------------
// Calls: the generated clients are callback-style grpc-js clients; one promise wrapper for all.

const credentials = grpc.credentials.createInsecure();
const host = new hostPb.SchedulerHostClient(args.address, credentials);
const admin = new adminPb.SchedulerAdminClient(args.address, credentials);

function runnerMetadata() {
  const md = new grpc.Metadata();
  md.set("x-runner-auth", args["runner-token"]);
  md.set("x-install-id", installId);
  return md;
}

function adminMetadata() {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${args["admin-token"]}`);
  return md;
}

// `fromPartial` of the generated request type fills in the defaults of the fields left out.
// Request types named after their service where both services have an RPC of that name.
const REQUEST_TYPES = { listScheduleRuns: "SchedulerHostListScheduleRunsRequest" };

function unary(client, method, partial, metadata) {
  const pb = client === host ? hostPb : adminPb;
  const typeName =
    (client === host && REQUEST_TYPES[method]) ||
    `${method[0].toUpperCase()}${method.slice(1)}Request`;
  const request = pb[typeName].fromPartial(partial);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + DEADLINE_MS }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

const hostCall = (method, request) => unary(host, method, request, runnerMetadata());
const adminCall = (method, request) => unary(admin, method, request, adminMetadata());

// ---------------------------------------------------------------------------------------------
// Errors: google.rpc.Status from the grpc-status-details-bin trailer, as any gRPC client reads it.

const TYPE_PREFIX = "type.googleapis.com/";

function statusDetails(err) {
  const [raw] = err.metadata?.get("grpc-status-details-bin") ?? [];
  assert.ok(Buffer.isBuffer(raw), `no grpc-status-details-bin on ${err.code} ${err.details}`);
  const status = Status.decode(raw);
  assert.equal(status.code, err.code, "Status.code equals the gRPC status code");
  const out = { code: status.code, message: status.message, reason: "", domain: "", violations: {} };
  for (const any of status.details) {
    const type = any.typeUrl.slice(TYPE_PREFIX.length);
    if (type === "google.rpc.ErrorInfo") {
      const info = ErrorInfo.decode(any.value);
      out.reason = info.reason;
      out.domain = info.domain;
    } else if (type === "google.rpc.BadRequest") {
      for (const v of BadRequest.decode(any.value).fieldViolations) {
        out.violations[v.field] = v.reason;
      }
    } else if (type === "google.rpc.ResourceInfo") {
      const res = ResourceInfo.decode(any.value);
      out.resource = `${res.resourceType}/${res.resourceName}`;
    }
  }
  return out;
}

async function failure(promise) {
  try {
    await promise;
  } catch (err) {
    if (typeof err.code !== "number") throw err;
    return statusDetails(err);
  }
  assert.fail("the call succeeded but was expected to fail");
}

function ok(step, detail = "") {
  console.log(`ok ${step}${detail ? ` ${detail}` : ""}`);
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const tenantId = `tenant-node-${installId.slice(0, 8)}`;
  const upserted = await adminCall("upsertInstall", {
    install: {
      installId,
      tenantId,
      registryId: "node-e2e-ext",
      versionId: "v1",
      contentHash: "sha256:node",
      enabled: true,
      grantedCapabilities: [CAPABILITY],
      endpoints: [
        { method: "POST", path: "/sync", handler: "sync" },
        { method: "GET", path: "/status", handler: "status" },
        { method: "GET", path: "/items/{id}", handler: "item" },
      ],
    },
    disableMissingSchedules: false,
  });
  assert.equal(upserted.install.installId, installId);
  ok("admin.upsertInstall", installId);

  const { endpoints } = await hostCall("getEndpoints", {});
  const schedulable = Object.fromEntries(endpoints.map((e) => [`${e.method} ${e.path}`, e]));
  assert.equal(schedulable["POST /sync"].schedulable, true);
  assert.equal(schedulable["GET /items/{id}"].schedulable, false);
  assert.notEqual(schedulable["GET /items/{id}"].unschedulableReason, "");
  ok("getEndpoints", String(endpoints.length));

  const created = [];
  for (const [i, cron] of ["0 * * * *", "30 2 * * *", "@daily"].entries()) {
    const { schedule } = await hostCall("createSchedule", {
      schedule: {
        endpoint: i === 1 ? "GET /status" : "POST /sync",
        name: `node-${i}`,
        cron,
        timezone: "Europe/Berlin",
        payload: i === 1 ? undefined : { full: true, n: i, tags: ["a", "b"] },
      },
      requestId: randomUUID(),
    });
    assert.match(schedule.id, /^[0-9a-f-]{36}$/);
    assert.equal(schedule.enabled, true, "create defaults enabled to true");
    assert.ok(schedule.etag);
    assert.ok(schedule.nextRunTime instanceof Date);
    created.push(schedule);
  }
  assert.equal(created[0].endpoint, "POST /sync");
  assert.deepEqual(created[0].payload, { full: true, n: 0, tags: ["a", "b"] });
  ok("createSchedule", created.map((s) => s.id).join(","));

  const { schedule: got } = await hostCall("getSchedule", { id: created[0].id });
  assert.equal(got.id, created[0].id);
  assert.equal(got.name, "node-0");
  assert.equal(got.cron, "0 * * * *");
  assert.equal(got.timezone, "Europe/Berlin");
  assert.deepEqual(got.payload, { full: true, n: 0, tags: ["a", "b"] });
  assert.equal(got.etag, created[0].etag);
  ok("getSchedule", got.id);

  const page1 = await hostCall("listSchedules", { pageSize: 2, pageToken: "" });
  assert.equal(page1.schedules.length, 2);
  assert.equal(page1.totalSize, 3);
  assert.ok(page1.nextPageToken, "a first page of 2 out of 3 has a next page token");
  const page2 = await hostCall("listSchedules", { pageSize: 2, pageToken: page1.nextPageToken });
  assert.equal(page2.schedules.length, 1);
  assert.equal(page2.nextPageToken, "");
  const listed = [...page1.schedules, ...page2.schedules].map((s) => s.id);
  assert.deepEqual(listed, created.map((s) => s.id), "ordered by creation time");
  ok("listSchedules", "pages=2");

  const { schedule: updated } = await hostCall("updateSchedule", {
    // `name` is set but not in the mask: it must stay as it was.
    schedule: { id: got.id, cron: "*/15 * * * *", name: "ignored", etag: got.etag },
    updateMask: ["cron"],
  });
  assert.equal(updated.cron, "*/15 * * * *");
  assert.equal(updated.name, "node-0", "a field outside the mask is not changed");
  assert.equal(updated.timezone, "Europe/Berlin");
  assert.deepEqual(updated.payload, { full: true, n: 0, tags: ["a", "b"] });
  assert.notEqual(updated.etag, got.etag);
  ok("updateSchedule", "mask=cron");

  const stale = await failure(
    hostCall("updateSchedule", {
      schedule: { id: got.id, name: "again", etag: got.etag },
      updateMask: ["name"],
    }),
  );
  assert.equal(stale.code, grpc.status.ABORTED);
  assert.equal(stale.reason, "ETAG_MISMATCH");
  ok("updateSchedule.staleEtag", stale.reason);

  const preview = await hostCall("previewSchedule", {
    cron: "30 2 * * *",
    timezone: "America/New_York",
    count: 3,
    startTime: new Date("2026-03-07T00:00:00Z"),
  });
  assert.deepEqual(
    preview.runTimes.map((t) => t.toISOString()),
    ["2026-03-07T07:30:00.000Z", "2026-03-08T07:00:00.000Z", "2026-03-09T06:30:00.000Z"],
  );
  assert.ok(preview.minInterval.seconds >= 82_800, "about a day between runs");
  ok("previewSchedule", preview.runTimes.map((t) => t.toISOString()).join(","));

  // A one-time run, bounded and spread by a jitter: its preview by id is what will fire.
  const runAt = new Date(Math.ceil(Date.now() / 60_000) * 60_000 + 3_600_000);
  const oneTime = (
    await hostCall("createSchedule", {
      schedule: {
        endpoint: "POST /sync",
        runAt,
        endTime: new Date(runAt.getTime() + 60_000),
        jitter: { seconds: 30, nanos: 0 },
      },
      requestId: randomUUID(),
    })
  ).schedule;
  assert.equal(oneTime.cron, "");
  assert.equal(oneTime.runAt.toISOString(), runAt.toISOString());
  assert.equal(oneTime.jitter.seconds, 30);
  const firesAt = oneTime.nextRunTime.getTime() - runAt.getTime();
  assert.ok(firesAt >= 0 && firesAt < 30_000, "fires within the jitter after run_at");
  const byId = await hostCall("previewSchedule", { scheduleId: oneTime.id, count: 5 });
  assert.deepEqual(
    byId.runTimes.map((t) => t.toISOString()),
    [oneTime.nextRunTime.toISOString()],
    "a one-time schedule previews its single fire",
  );
  assert.equal(byId.minInterval.seconds, 0);
  const history = await hostCall("listScheduleRuns", {
    scheduleId: oneTime.id,
    pageSize: 0,
    pageToken: "",
  });
  assert.deepEqual(history.runs, [], "nothing has run yet");
  ok("oneTimeSchedule", `${oneTime.id} fires ${oneTime.nextRunTime.toISOString()}`);

  await hostCall("deleteSchedule", { id: got.id, etag: updated.etag });
  const gone = await failure(hostCall("getSchedule", { id: got.id }));
  assert.equal(gone.code, grpc.status.NOT_FOUND);
  assert.equal(gone.reason, "SCHEDULE_NOT_FOUND");
  assert.equal(gone.domain, "schedulerhost.v1");
  assert.equal(gone.resource, `schedule/${got.id}`);
  ok("deleteSchedule", got.id);

  const invalid = await failure(
    hostCall("createSchedule", {
      schedule: { endpoint: "POST /nope", cron: "*/4 * * * *", timezone: "Mars/Olympus" },
      requestId: "",
    }),
  );
  assert.equal(invalid.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(invalid.reason, "VALIDATION_FAILED");
  assert.equal(invalid.domain, "schedulerhost.v1");
  assert.deepEqual(invalid.violations, {
    "schedule.cron": "CRON_TOO_FREQUENT",
    "schedule.timezone": "TIMEZONE_INVALID",
    "schedule.endpoint": "ENDPOINT_NOT_FOUND",
  });
  ok("errorDetails", `${invalid.reason} ${JSON.stringify(invalid.violations)}`);

  const denied = await failure(
    unary(host, "listSchedules", { pageSize: 0, pageToken: "" }, (() => {
      const md = runnerMetadata();
      md.set("x-runner-auth", "not-a-token");
      return md;
    })()),
  );
  assert.equal(denied.code, grpc.status.UNAUTHENTICATED);
  assert.equal(denied.reason, "INVALID_TOKEN");
  ok("unauthenticated", denied.reason);

  await adminCall("deleteInstall", { installId });
  ok("admin.deleteInstall", installId);

  console.log(
    JSON.stringify({
      result: "passed",
      installId,
      created: created.length,
      validationReason: invalid.reason,
      violations: invalid.violations,
    }),
  );
}

try {
  await main();
} catch (err) {
  console.error(`FAILED: ${err?.stack ?? err}`);
  if (err && typeof err.code === "number" && err.metadata) {
    try {
      console.error(`status details: ${JSON.stringify(statusDetails(err))}`);
    } catch {
      // the failure above is the one to report
    }
  }
  process.exitCode = 1;
} finally {
  host.close();
  admin.close();
}
