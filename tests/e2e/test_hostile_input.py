"""Hostile input through the real server (`scheduler-host serve`, real PostgreSQL).

- hypothesis-generated requests for every RPC of both services: every answer is OK or a code and
  `ErrorInfo.reason` that the API allows (never UNKNOWN or INTERNAL), field violations carry a
  known reason, what is accepted is stored exactly, and the server stays healthy;
- random bytes as the request body of every method: each is answered within its deadline;
- a request over the maximum message size is refused with RESOURCE_EXHAUSTED, while the largest
  allowed payload (100,000 bytes) fits;
- quotes, NUL bytes, control characters, very long strings, path traversal and odd Unicode in
  names, endpoints, time zones, payloads and install fields are refused or stored exactly.

Examples per RPC: SCHEDULER_HOST_HOSTILE_EXAMPLES (default 25; e.g. 1000 for a long run).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_admin_pb2_grpc as admin_grpc
from schedulerhost.v1 import scheduler_host_pb2 as pb
from schedulerhost.v1 import scheduler_host_pb2_grpc as host_grpc

from tests.support.grpc_status_details import RpcFailure, failure_of
from tests.support.postgres import PostgresServer, scratch_database
from tests.support.server import (
    ADMIN_TOKEN,
    CAPABILITY,
    RUNNER_TOKEN,
    ServerProcess,
    admin_metadata,
    free_port,
    install_message,
    spawn_server,
    wait_until_serving,
)

EXAMPLES = int(os.environ.get("SCHEDULER_HOST_HOSTILE_EXAMPLES", "25"))
DEADLINE = 10.0  # seconds; generous on a loaded CI machine, far below "hangs"
Metadata = tuple[tuple[str, str], ...]

# The codes a caller may see, each with the ErrorInfo reasons it may carry. UNAVAILABLE
# is not listed: the database is up and the server is not stopping during these tests.
ALLOWED: dict[grpc.StatusCode, set[str]] = {
    grpc.StatusCode.OK: {""},
    grpc.StatusCode.UNAUTHENTICATED: {"MISSING_CREDENTIALS", "INVALID_TOKEN"},
    grpc.StatusCode.INVALID_ARGUMENT: {"VALIDATION_FAILED", "MALFORMED_REQUEST"},
    grpc.StatusCode.NOT_FOUND: {"INSTALL_NOT_FOUND", "SCHEDULE_NOT_FOUND"},
    grpc.StatusCode.FAILED_PRECONDITION: {"INSTALL_DISABLED", "SCHEDULE_REMAP_FAILED"},
    grpc.StatusCode.PERMISSION_DENIED: {"CAPABILITY_NOT_GRANTED"},
    grpc.StatusCode.ALREADY_EXISTS: {"SCHEDULE_NAME_IN_USE"},
    # "" only for a request over the size limit, which gRPC itself refuses.
    grpc.StatusCode.RESOURCE_EXHAUSTED: {"SCHEDULE_QUOTA_EXCEEDED", "RATE_LIMITED", ""},
    grpc.StatusCode.ABORTED: {"ETAG_MISMATCH"},
}
# The field reasons of schedule validation, plus the server's reasons for install fields,
# preview counts and preview start times.
FIELD_REASONS = {
    "CRON_INVALID",
    "CRON_DOM_AND_DOW",
    "CRON_TOO_FREQUENT",
    "TIMEZONE_INVALID",
    "NAME_INVALID",
    "PAYLOAD_INVALID",
    "PAYLOAD_TOO_LARGE",
    "ENDPOINT_NOT_FOUND",
    "ENDPOINT_NOT_SCHEDULABLE",
    "ENDPOINT_AMBIGUOUS",
    "ID_INVALID",
    "PAGE_INVALID",
    "UPDATE_MASK_INVALID",
    "COUNT_INVALID",
    "START_TIME_INVALID",
    "INSTALL_INVALID",
    "SCHEDULE_SPEC_INVALID",
    "RUN_AT_INVALID",
    "TIME_BOUNDS_INVALID",
    "JITTER_INVALID",
}
# Words that would mean server internals leaked into a message meant for people.
LEAKS = ("Traceback", "sqlalchemy", "asyncpg", "psycopg", 'File "', "Exception", "SELECT ")
# Input echoed back the way the server quotes it (Python's repr of a string in single quotes).
_ECHOED_INPUT = re.compile(r"'(?:[^'\\]|\\.)*'")

# --------------------------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """The server, its channel and the installs and schedules the examples aim at."""

    server: ServerProcess
    channel: grpc.Channel
    host: host_grpc.SchedulerHostStub
    admin: admin_grpc.SchedulerAdminStub
    main: str  # enabled, with the capability: requests reach the RPC's own validation
    disabled: str
    no_capability: str
    spare: list[str]  # installs the examples may upsert, disable or delete
    schedule_ids: list[str] = field(default_factory=list)

    def install_metadata(self, install_id: str, token: str = RUNNER_TOKEN) -> Metadata:
        return (("x-runner-auth", token), ("x-install-id", install_id))


def _upsert(admin: admin_grpc.SchedulerAdminStub, **kwargs: Any) -> str:
    msg = install_message(**kwargs)
    admin.UpsertInstall(
        admin_pb.UpsertInstallRequest(install=msg), metadata=admin_metadata(), timeout=DEADLINE
    )
    return msg.install_id


@pytest.fixture(scope="module")
def target(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with scratch_database(postgres, prefix="scheduler_host_hostile") as name:
        server = spawn_server(
            postgres.url(name),
            log,
            args=("serve", "--migrate"),
            # The limit would refuse most mutations after ten; here they must reach validation.
            SCHEDULER_HOST_RATE_LIMIT_PER_MINUTE="1000000",
            SCHEDULER_HOST_INSTALL_CACHE_SECONDS="0",
            # RunScheduleNow calls a Runner that is not there: a fast transport error.
            SCHEDULER_HOST_RUNNER_BASE_URL=f"http://127.0.0.1:{free_port()}",
            SCHEDULER_HOST_RUNNER_RETRY_BASE_SECONDS="0.01",
            SCHEDULER_HOST_RUNNER_TIMEOUT_SECONDS="2",
        )
        try:
            wait_until_serving(server)
            with grpc.insecure_channel(server.target) as channel:
                admin = admin_grpc.SchedulerAdminStub(channel)
                host = host_grpc.SchedulerHostStub(channel)
                t = Target(
                    server=server,
                    channel=channel,
                    host=host,
                    admin=admin,
                    main=_upsert(admin),
                    disabled=_upsert(admin, enabled=False),
                    no_capability=_upsert(admin, capabilities=()),
                    spare=[_upsert(admin) for _ in range(3)],
                )
                for i in range(5):
                    created = host.CreateSchedule(
                        pb.CreateScheduleRequest(
                            schedule=schedule_pb2.Schedule(
                                endpoint="POST /sync", cron="0 0 1 1 *", name=f"seed-{i}"
                            )
                        ),
                        metadata=t.install_metadata(t.main),
                        timeout=DEADLINE,
                    )
                    t.schedule_ids.append(created.schedule.id)
                yield t
                assert_healthy(t)
        finally:
            code = server.stop()
        text = server.log()
        assert code == 0, text
        assert "unhandled error" not in text, text
        assert "Traceback" not in text, text


def assert_healthy(t: Target) -> None:
    assert t.server.process.poll() is None, t.server.log()
    health = health_pb2_grpc.HealthStub(t.channel)
    for service in ("", "schedulerhost.v1.SchedulerHost", "schedulerhost.v1.SchedulerAdmin"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


# --------------------------------------------------------------------------------------------
# Checking one answer
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    failure: RpcFailure | None
    response: Any
    seconds: float


def call(method: Callable[..., Any], request: Any, metadata: Metadata) -> Outcome:
    started = time.monotonic()
    try:
        response = method(request, metadata=metadata, timeout=DEADLINE)
    except grpc.RpcError as error:
        if not isinstance(error, grpc.Call):  # the error of a call is also the call
            raise
        failure = failure_of(error)
        return Outcome(failure.code, failure, None, time.monotonic() - started)
    return Outcome(grpc.StatusCode.OK, None, response, time.monotonic() - started)


def check_allowed(outcome: Outcome, what: str) -> None:
    """The answer is one the API allows, in its documented form."""
    assert outcome.code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{what}: no answer in time"
    assert outcome.code in ALLOWED, f"{what}: {outcome.code} {outcome.failure}"
    failure = outcome.failure
    if failure is None:
        return
    assert failure.reason in ALLOWED[outcome.code], f"{what}: {failure}"
    # A message may quote the caller's own input (a time zone named "asyncpg", say): only what
    # stands outside such a quote can be a leak.
    own_words = _ECHOED_INPUT.sub("''", failure.message)
    for leak in LEAKS:
        assert leak not in own_words, f"{what}: internals in the message: {failure}"
    if failure.reason:
        assert failure.domain == "schedulerhost.v1", failure
    if failure.reason == "VALIDATION_FAILED":
        assert failure.violations, f"{what}: VALIDATION_FAILED without field violations"
        unknown = set(failure.violations.values()) - FIELD_REASONS
        assert not unknown, f"{what}: unknown field reasons {unknown}: {failure}"


def check_answer(outcome: Outcome, what: str) -> None:
    """Like check_allowed, for requests that fit the size limit: "" is not a reason then."""
    check_allowed(outcome, what)
    if outcome.failure is not None:
        assert outcome.failure.reason, f"{what}: an error without ErrorInfo: {outcome.failure}"


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

SPECIALS = [
    "",
    " ",
    "'",
    '"',
    "\\",
    "`",
    'O\'Brien "quoted" \\ back`tick`',
    "'; DROP TABLE schedules; --",
    "1 OR 1=1",
    "$(rm -rf /)",
    "`id`",
    "${jndi:ldap://x/a}",
    "{{7*7}}",
    "%s%s%n%x",
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "/etc/localtime",
    "/usr/share/zoneinfo/UTC",
    "file:///etc/passwd",
    "UTC\x00",
    "\x00",
    "a\x00b",
    "\x01\x02\x1b[31m\x7f",
    "line\nbreak",
    "tab\there",
    "\r\n\r\n",
    "\u202eevil\u202c",
    "zero\u200bwidth",
    "\ufeffbom",
    "e\u0301",  # decomposed é
    "\u00e9",  # composed é
    "\U0001f600\U0001f680",
    "\u540d\u524d",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "+05:00",
    "Etc/GMT+5",
    "localtime",
    "posixrules",
    "Europe/Berlin",
    "europe/berlin",
    "Europe/Berlin/../../../etc/passwd",
    "POST /sync",
    "/sync",
    "//sync",
    "POST /../sync",
    "POST /sync\x00",
    "GET /items/{id}",
    "POST /users/:id",
    "DELETE /sync",
    "post /sync",
    "*/5 * * * *",
    "* * * * *",
    "0 0 30 2 *",
    "@hourly",
    "*/5 * * * *; rm -rf /",
    "0 * * * * *",
    str(uuid.UUID(int=0)),
    "{" + str(uuid.uuid4()) + "}",
    "urn:uuid:" + str(uuid.uuid4()),
]

no_surrogates = st.characters(exclude_categories=["Cs"])
long_text = st.builds(
    lambda unit, count: unit * count,
    st.sampled_from(["x", "\u00e9", "\U0001f600", "/", "a/", "\x00", " "]),
    st.sampled_from([65, 129, 257, 1025, 4097, 100_001]),
)
hostile_text = st.one_of(
    st.text(no_surrogates, max_size=80),
    st.sampled_from(SPECIALS),
    long_text,
    st.builds(lambda a, b: a + b, st.sampled_from(SPECIALS), st.text(no_surrogates, max_size=20)),
)
# gRPC metadata values are printable ASCII.
ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
any_timestamp = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.integers(-62135596800, 253402300799),
        st.sampled_from([-62135596800, 253402300799, 0, -1]),
    ),
    nanos=st.one_of(st.integers(0, 999_999_999), int32),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**60), 2**60).map(float),
    hostile_text,
)
json_value = st.recursive(
    json_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(hostile_text, children, max_size=4),
    ),
    max_leaves=12,
)


json_objects = st.dictionaries(hostile_text, json_value, max_size=5)


def to_value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        value.bool_value = data
    elif isinstance(data, float):
        value.number_value = data
    elif isinstance(data, str):
        value.string_value = data
    elif isinstance(data, list):
        value.list_value.values.extend(to_value(v) for v in data)
    else:
        for k, v in data.items():
            value.struct_value.fields[k].CopyFrom(to_value(v))
    return value


def mostly(
    valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """`valid` about four times in five: most requests then have one or two hostile fields,
    which get past the other checks to the code that handles them. (st.one_of would not do:
    it picks branches evenly and merges identical ones.)"""
    return st.integers(0, 9).flatmap(lambda k: valid if k < 8 else hostile)


def one_of_text(*valid: str) -> st.SearchStrategy[str]:
    return mostly(st.sampled_from(valid), hostile_text) if valid else hostile_text


def schedules(t: Target, *, with_id: bool) -> st.SearchStrategy[schedule_pb2.Schedule]:
    @st.composite
    def build(draw: st.DrawFn) -> schedule_pb2.Schedule:
        msg = schedule_pb2.Schedule(
            endpoint=draw(one_of_text("POST /sync", "/sync", "GET /status", "/report", "")),
            endpoint_method=draw(one_of_text("", "POST")),
            endpoint_path=draw(one_of_text("", "/sync")),
            name=draw(one_of_text("", f"n-{uuid.uuid4().hex[:8]}")),
            cron=draw(one_of_text("*/5 * * * *", "0 3 * * MON-FRI", "@daily", "")),
            timezone=draw(one_of_text("", "UTC", "Europe/Berlin", "America/New_York")),
            last_error=draw(hostile_text),
            endpoint_id=draw(hostile_text),
        )
        if draw(st.booleans()):
            msg.enabled = draw(st.booleans())
        if draw(st.booleans()):
            msg.payload.CopyFrom(to_value(draw(mostly(json_objects, json_value))))
        if draw(st.booleans()):
            msg.next_run_time.CopyFrom(draw(any_timestamp))
            msg.create_time.CopyFrom(draw(any_timestamp))
        msg.last_run_status = schedule_pb2.RunStatus.ValueType(draw(st.integers(-5, 10)))
        for name in ("run_at", "start_time", "end_time"):
            if draw(st.integers(0, 5)) == 0:
                getattr(msg, name).CopyFrom(draw(any_timestamp))
        if draw(st.integers(0, 5)) == 0:
            msg.jitter.seconds = draw(st.one_of(st.integers(-5, 4000), int64))
            msg.jitter.nanos = draw(st.one_of(st.integers(0, 999_999_999), int32))
        if with_id:
            msg.id = draw(mostly(st.sampled_from(t.schedule_ids), hostile_text))
            msg.etag = draw(mostly(st.just(""), st.one_of(st.just("1-00000000"), hostile_text)))
        else:
            msg.id = draw(mostly(st.just(""), hostile_text))
            msg.etag = draw(mostly(st.just(""), hostile_text))
        return msg

    return build()


def host_metadata(t: Target) -> st.SearchStrategy[Metadata]:
    """Credentials that the interceptor chain refuses, one way or another, or the main install."""
    return st.one_of(
        st.just(t.install_metadata(t.main)),
        st.sampled_from([t.disabled, t.no_capability, str(uuid.uuid4())]).map(t.install_metadata),
        ascii_text.map(t.install_metadata),
        ascii_text.map(lambda token: t.install_metadata(t.main, token)),
        st.just((("x-install-id", t.main),)),
        st.just((("x-runner-auth", RUNNER_TOKEN),)),
        st.just(admin_metadata()),
        st.just(()),
    )


def admin_metadata_strategy() -> st.SearchStrategy[Metadata]:
    return st.one_of(
        st.just(admin_metadata()),
        st.just(admin_metadata(RUNNER_TOKEN)),
        ascii_text.map(lambda v: (("authorization", v),)),
        ascii_text.map(lambda v: (("authorization", f"Bearer {v}"),)),
        st.just((("authorization", f"Basic {ADMIN_TOKEN}"),)),
        st.just((("x-runner-auth", RUNNER_TOKEN),)),
        st.just(()),
    )


def install_ids(t: Target) -> st.SearchStrategy[str]:
    return mostly(
        st.one_of(st.sampled_from(t.spare), st.builds(lambda: str(uuid.uuid4()))), hostile_text
    )


@st.composite
def install_messages(draw: st.DrawFn, t: Target) -> admin_pb.Install:
    msg = admin_pb.Install(
        install_id=draw(install_ids(t)),
        tenant_id=draw(one_of_text("tenant-a")),
        registry_id=draw(one_of_text("registry-ext")),
        version_id=draw(one_of_text("v1", "v2")),
        content_hash=draw(one_of_text("sha256:abc", "")),
        granted_capabilities=draw(
            mostly(st.just([CAPABILITY]), st.lists(hostile_text, max_size=3))
        ),
        endpoints=[
            admin_pb.EndpointSpec(
                method=draw(one_of_text("POST", "GET", "PUT")),
                path=draw(one_of_text("/sync", "/status", "/items/{id}")),
                handler=draw(one_of_text("sync")),
            )
            for _ in range(draw(st.integers(1, 3)))
        ],
    )
    if draw(st.booleans()):
        msg.enabled = draw(st.booleans())
    return msg


def requests_for(t: Target, rpc: str) -> st.SearchStrategy[Message]:
    ids = st.one_of(st.sampled_from(t.schedule_ids), st.builds(lambda: str(uuid.uuid4())))
    any_id = mostly(ids, hostile_text)
    page_token = mostly(st.just(""), st.one_of(hostile_text, ascii_text))
    page_size = mostly(st.integers(0, 120), int32)
    mask = st.builds(
        lambda paths: field_mask_pb2.FieldMask(paths=paths),
        st.lists(
            one_of_text(
                "endpoint",
                "cron",
                "timezone",
                "enabled",
                "name",
                "payload",
                "run_at",
                "start_time",
                "end_time",
                "jitter",
                "id",
            ),
            max_size=4,
        ),
    )
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "CreateSchedule": st.builds(
            pb.CreateScheduleRequest,
            schedule=schedules(t, with_id=False),
            request_id=mostly(
                st.one_of(st.just(""), st.builds(lambda: str(uuid.uuid4()))), hostile_text
            ),
        ),
        "GetSchedule": st.builds(pb.GetScheduleRequest, id=any_id),
        "ListSchedules": st.builds(
            pb.ListSchedulesRequest, page_size=page_size, page_token=page_token
        ),
        "UpdateSchedule": st.builds(
            pb.UpdateScheduleRequest, schedule=schedules(t, with_id=True), update_mask=mask
        ),
        "DeleteSchedule": st.builds(
            pb.DeleteScheduleRequest,
            # Mostly ids that do not exist: the seeded schedules should last for other examples.
            id=mostly(st.builds(lambda: str(uuid.uuid4())), hostile_text),
            etag=mostly(st.just(""), hostile_text),
        ),
        "GetEndpoints": st.just(pb.GetEndpointsRequest()),
        "PreviewSchedule": st.builds(
            _preview_request,
            cron=one_of_text("*/5 * * * *", "30 2 * * *", "@weekly"),
            timezone=one_of_text("", "America/New_York", "Australia/Lord_Howe"),
            count=mostly(st.integers(-2, 120), int32),
            start_time=st.one_of(st.none(), any_timestamp),
            schedule_id=mostly(st.just(""), any_id),
        ),
        "HostListScheduleRuns": st.builds(
            pb.SchedulerHostListScheduleRunsRequest,
            schedule_id=any_id,
            page_size=page_size,
            page_token=page_token,
        ),
        "AdminGetSchedule": st.builds(
            admin_pb.SchedulerAdminGetScheduleRequest,
            install_id=mostly(st.just(t.main), install_ids(t)),
            schedule_id=any_id,
        ),
        "AdminListSchedules": st.builds(
            admin_pb.SchedulerAdminListSchedulesRequest,
            install_id=mostly(st.just(t.main), install_ids(t)),
            page_size=page_size,
            page_token=page_token,
        ),
        "UpsertInstall": st.builds(
            admin_pb.UpsertInstallRequest,
            install=install_messages(t),
            disable_missing_schedules=st.booleans(),
        ),
        "GetInstall": st.builds(
            admin_pb.GetInstallRequest,
            install_id=mostly(st.just(t.main), install_ids(t)),
        ),
        "DeleteInstall": st.builds(admin_pb.DeleteInstallRequest, install_id=install_ids(t)),
        "RunScheduleNow": st.builds(
            admin_pb.RunScheduleNowRequest,
            install_id=mostly(st.just(t.main), hostile_text),
            schedule_id=any_id,
        ),
        "ListScheduleRuns": st.builds(
            admin_pb.ListScheduleRunsRequest,
            install_id=mostly(st.just(t.main), install_ids(t)),
            schedule_id=any_id,
            page_size=page_size,
            page_token=page_token,
        ),
    }
    return strategies[rpc]


def _preview_request(
    cron: str,
    timezone: str,
    count: int,
    start_time: timestamp_pb2.Timestamp | None,
    schedule_id: str,
) -> pb.PreviewScheduleRequest:
    request = pb.PreviewScheduleRequest(
        cron="" if schedule_id else cron,
        timezone="" if schedule_id else timezone,
        count=count,
        schedule_id=schedule_id,
    )
    if start_time is not None:
        request.start_time.CopyFrom(start_time)
    return request


HOST_RPCS = [
    "CreateSchedule",
    "GetSchedule",
    "ListSchedules",
    "UpdateSchedule",
    "DeleteSchedule",
    "GetEndpoints",
    "PreviewSchedule",
    "HostListScheduleRuns",
]
ADMIN_RPCS = [
    "UpsertInstall",
    "GetInstall",
    "DeleteInstall",
    "RunScheduleNow",
    "ListScheduleRuns",
    "AdminGetSchedule",
    "AdminListSchedules",
]
# Keys that name an RPC of the same name in the other service.
_METHOD_NAMES = {
    "HostListScheduleRuns": "ListScheduleRuns",
    "AdminGetSchedule": "GetSchedule",
    "AdminListSchedules": "ListSchedules",
}
REQUEST_TYPES: dict[str, type[Message]] = {
    **{rpc: getattr(pb, f"{rpc}Request") for rpc in HOST_RPCS if rpc not in _METHOD_NAMES},
    **{rpc: getattr(admin_pb, f"{rpc}Request") for rpc in ADMIN_RPCS if rpc not in _METHOD_NAMES},
    "HostListScheduleRuns": pb.SchedulerHostListScheduleRunsRequest,
    "AdminGetSchedule": admin_pb.SchedulerAdminGetScheduleRequest,
    "AdminListSchedules": admin_pb.SchedulerAdminListSchedulesRequest,
}


def method_of(t: Target, rpc: str) -> Callable[..., Any]:
    stub: Any = t.host if rpc in HOST_RPCS else t.admin
    return getattr(stub, _METHOD_NAMES.get(rpc, rpc))  # type: ignore[no-any-return]


def payload_of(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value)


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values; numbers compare as doubles (google.protobuf.Value carries doubles)."""
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(float(a) == float(b) or (math.isnan(float(a)) and math.isnan(float(b))))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def same_install(a: admin_pb.Install, b: admin_pb.Install) -> bool:
    """Equal, the endpoints in any order (the upsert answers them in the order sent)."""

    def canonical(msg: admin_pb.Install) -> admin_pb.Install:
        out = admin_pb.Install()
        out.CopyFrom(msg)
        ordered = sorted(msg.endpoints, key=lambda e: (e.method, e.path, e.handler))
        del out.endpoints[:]
        out.endpoints.extend(ordered)
        return out

    return canonical(a) == canonical(b)


def check_stored_schedule(
    t: Target, sent: schedule_pb2.Schedule, got: schedule_pb2.Schedule
) -> None:
    """What was accepted is what is stored and read back: nothing truncated or rewritten."""
    if sent.name.strip():
        assert got.name == sent.name.strip()
    if sent.timezone.strip():
        assert got.timezone == sent.timezone.strip()
    if sent.cron.strip():
        assert got.cron == sent.cron.strip()
    if sent.HasField("payload") and sent.payload.WhichOneof("kind") != "null_value":
        assert same_json(payload_of(got.payload), payload_of(sent.payload))
    again = t.host.GetSchedule(
        pb.GetScheduleRequest(id=got.id), metadata=t.install_metadata(t.main), timeout=DEADLINE
    ).schedule
    assert again == got


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------

hostile_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("rpc", HOST_RPCS + ADMIN_RPCS)
@hostile_settings
@given(data=st.data())
def test_generated_requests_get_an_allowed_answer(
    target: Target, rpc: str, data: st.DataObject
) -> None:
    t = target
    request = data.draw(requests_for(t, rpc), label="request")
    md = t.install_metadata(t.main) if rpc in HOST_RPCS else admin_metadata()
    outcome = call(method_of(t, rpc), request, md)
    event(f"{outcome.code.name} {outcome.failure.reason if outcome.failure else ''}")
    check_allowed(outcome, f"{rpc}({request!r:.300})")
    if outcome.code != grpc.StatusCode.OK:
        return
    if rpc == "CreateSchedule":
        assert isinstance(request, pb.CreateScheduleRequest)
        created = outcome.response.schedule
        check_stored_schedule(t, request.schedule, created)
        # Keep the install below its quota, so later examples reach validation.
        t.host.DeleteSchedule(
            pb.DeleteScheduleRequest(id=created.id),
            metadata=t.install_metadata(t.main),
            timeout=DEADLINE,
        )
    elif rpc == "UpsertInstall":
        assert isinstance(request, admin_pb.UpsertInstallRequest)
        sent, got = request.install, outcome.response.install
        stored = t.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=got.install_id),
            metadata=admin_metadata(),
            timeout=DEADLINE,
        ).install
        assert same_install(stored, got)
        for name in ("tenant_id", "registry_id", "version_id", "content_hash"):
            assert getattr(stored, name) == getattr(sent, name).strip(), name
        assert sorted(stored.granted_capabilities) == sorted(
            {c.strip() for c in sent.granted_capabilities}
        )
        assert {e.handler for e in stored.endpoints} == {e.handler.strip() for e in sent.endpoints}
    elif rpc == "UpdateSchedule":
        assert isinstance(request, pb.UpdateScheduleRequest)
        mask = set(request.update_mask.paths)
        changed = schedule_pb2.Schedule()
        for name in ("name", "timezone", "cron", "payload"):
            if mask and name not in mask:
                continue
            if name != "payload":
                setattr(changed, name, getattr(request.schedule, name))
            elif request.schedule.HasField("payload"):
                changed.payload.CopyFrom(request.schedule.payload)
        check_stored_schedule(t, changed, outcome.response.schedule)


@pytest.mark.parametrize("rpc", HOST_RPCS + ADMIN_RPCS)
@hostile_settings
@given(data=st.data())
def test_generated_credentials_get_an_allowed_answer(
    target: Target, rpc: str, data: st.DataObject
) -> None:
    t = target
    metadata = host_metadata(t) if rpc in HOST_RPCS else admin_metadata_strategy()
    md = data.draw(metadata, label="metadata")
    request = data.draw(requests_for(t, rpc), label="request")
    outcome = call(method_of(t, rpc), request, md)
    event(f"{outcome.code.name} {outcome.failure.reason if outcome.failure else ''}")
    check_allowed(outcome, f"{rpc}({md!r}, {request!r:.200})")
    if outcome.code == grpc.StatusCode.OK and rpc == "CreateSchedule":
        t.host.DeleteSchedule(
            pb.DeleteScheduleRequest(id=outcome.response.schedule.id),
            metadata=t.install_metadata(t.main),
            timeout=DEADLINE,
        )


def test_server_is_healthy_after_the_generated_requests(target: Target) -> None:
    assert_healthy(target)


@pytest.mark.parametrize("rpc", HOST_RPCS + ADMIN_RPCS)
@hostile_settings
@given(
    body=st.one_of(
        st.binary(max_size=2048),
        # A valid start (field 1, 36 bytes: a UUID) cut short or followed by junk.
        st.builds(
            lambda cut, junk: b"\x0a\x24" + str(uuid.uuid4()).encode()[:cut] + junk,
            st.integers(0, 36),
            st.binary(max_size=64),
        ),
    )
)
def test_random_bytes_are_answered_in_time(target: Target, rpc: str, body: bytes) -> None:
    t = target
    service = "SchedulerHost" if rpc in HOST_RPCS else "SchedulerAdmin"
    # No serializer: the bytes go on the wire as they are.
    raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = t.channel.unary_unary(
        f"/schedulerhost.v1.{service}/{_METHOD_NAMES.get(rpc, rpc)}"
    )
    md = t.install_metadata(t.main) if rpc in HOST_RPCS else admin_metadata()
    outcome = call(raw, body, md)
    event(f"{outcome.code.name} {outcome.failure.reason if outcome.failure else ''}")
    check_answer(outcome, f"{rpc}({body!r:.200})")
    assert outcome.seconds < DEADLINE
    if outcome.failure is not None and outcome.failure.reason == "MALFORMED_REQUEST":
        with pytest.raises(DecodeError):
            REQUEST_TYPES[rpc].FromString(body)


def test_server_is_healthy_after_the_random_bytes(target: Target) -> None:
    assert_healthy(target)


def test_request_over_the_size_limit_is_resource_exhausted(target: Target) -> None:
    t = target
    md = t.install_metadata(t.main)

    def create(payload: Any) -> Outcome:
        return call(
            t.host.CreateSchedule,
            pb.CreateScheduleRequest(
                schedule=schedule_pb2.Schedule(
                    endpoint="POST /sync", cron="0 0 1 1 *", payload=to_value(payload)
                )
            ),
            md,
        )

    # Over the default 1 MiB message limit: gRPC refuses it before any handler runs.
    too_big = create({"blob": "x" * (1_100_000)})
    assert too_big.code == grpc.StatusCode.RESOURCE_EXHAUSTED, too_big
    check_allowed(too_big, "oversize CreateSchedule")
    oversize_install = call(
        t.admin.UpsertInstall,
        admin_pb.UpsertInstallRequest(install=install_message(tenant_id="t" * 1_100_000)),
        admin_metadata(),
    )
    assert oversize_install.code == grpc.StatusCode.RESOURCE_EXHAUSTED, oversize_install

    # The largest payload the rules allow fits in a request with room to spare...
    overhead = len(json.dumps({"blob": ""}, separators=(",", ":")))
    largest = {"blob": "y" * (100_000 - overhead)}
    fits = create(largest)
    assert fits.code == grpc.StatusCode.OK, fits.failure
    assert payload_of(fits.response.schedule.payload) == largest
    t.host.DeleteSchedule(
        pb.DeleteScheduleRequest(id=fits.response.schedule.id), metadata=md, timeout=DEADLINE
    )
    # ... and one byte more is a validation failure of the payload, not a transport refusal.
    over = create({"blob": "y" * (100_001 - overhead)})
    assert over.code == grpc.StatusCode.INVALID_ARGUMENT, over
    assert over.failure is not None
    assert over.failure.violations == {"schedule.payload": "PAYLOAD_TOO_LARGE"}
    assert_healthy(t)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (2**62, 0),  # far beyond year 9999
        (-(2**62), 0),
        (253402300800, 0),  # 10000-01-01
        (-62135596801, 0),  # just before 0001-01-01
        (0, -1),
        (0, 1_000_000_000),
    ],
)
def test_preview_start_time_outside_the_calendar_is_refused(
    target: Target, seconds: int, nanos: int
) -> None:
    t = target
    outcome = call(
        t.host.PreviewSchedule,
        pb.PreviewScheduleRequest(
            cron="*/5 * * * *",
            start_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        ),
        t.install_metadata(t.main),
    )
    check_answer(outcome, f"PreviewSchedule start_time={seconds}.{nanos}")
    assert outcome.failure is not None
    assert outcome.failure.violations == {"start_time": "START_TIME_INVALID"}


def test_preview_at_the_end_of_the_calendar_has_no_runs(target: Target) -> None:
    t = target
    reply = t.host.PreviewSchedule(
        pb.PreviewScheduleRequest(
            cron="*/5 * * * *", start_time=timestamp_pb2.Timestamp(seconds=253402300799)
        ),
        metadata=t.install_metadata(t.main),
        timeout=DEADLINE,
    )
    assert list(reply.run_times) == []


def test_errors_about_huge_requests_stay_readable(target: Target) -> None:
    """Error details quote the caller's values; they are bounded so that the trailers fit what
    gRPC clients accept (8 KiB): the caller reads the error, not "Stream removed"."""
    t = target
    update = call(
        t.host.UpdateSchedule,
        pb.UpdateScheduleRequest(
            schedule=schedule_pb2.Schedule(id=t.schedule_ids[0], name="x"),
            update_mask=field_mask_pb2.FieldMask(
                paths=["\u00e9" * 1000 + str(i) for i in range(60)]
            ),
        ),
        t.install_metadata(t.main),
    )
    check_answer(update, "UpdateSchedule with 60 long mask paths")
    assert update.failure is not None
    assert update.failure.violations == {"update_mask": "UPDATE_MASK_INVALID"}
    assert len(update.failure.message.encode()) <= 512

    bad_endpoints = install_message(
        endpoints=tuple(("GET\x00", f"/p{i}/" + "\U0001f600" * 200, "h") for i in range(300))
    )
    upsert = call(
        t.admin.UpsertInstall,
        admin_pb.UpsertInstallRequest(install=bad_endpoints),
        admin_metadata(),
    )
    check_answer(upsert, "UpsertInstall with 300 bad endpoints")
    assert upsert.failure is not None
    assert 1 <= len(upsert.failure.violations) < 300
    assert set(upsert.failure.violations.values()) == {"INSTALL_INVALID"}
    assert "more field violations not shown" in upsert.failure.message
    assert_healthy(t)


# Each value is refused with the given field reason, or (reason None) stored exactly as `stored`.
NAME_CASES: list[tuple[str, str | None, str | None]] = [
    ('O\'Brien "quoted" \\ back`tick`', None, 'O\'Brien "quoted" \\ back`tick`'),
    ("Robert'); DROP TABLE schedules;--", None, "Robert'); DROP TABLE schedules;--"),
    (
        "$(rm -rf /) ${jndi:ldap://x/a} {{7*7}} %s%n",
        None,
        "$(rm -rf /) ${jndi:ldap://x/a} {{7*7}} %s%n",
    ),
    ("../../etc/passwd", None, "../../etc/passwd"),
    ("\u23f0 sync \U0001f680", None, "\u23f0 sync \U0001f680"),
    ("e\u0301t\u00e9", None, "e\u0301t\u00e9"),  # decomposed and composed: not normalised
    (
        "\u540d\u524d \u0645\u0631\u062d\u0628\u0627",
        None,
        "\u540d\u524d \u0645\u0631\u062d\u0628\u0627",
    ),
    ("  padded  ", None, "padded"),  # names are trimmed
    ("\U0001f600" * 128, None, "\U0001f600" * 128),  # 128 characters, 512 bytes
    ("x" * 129, "NAME_INVALID", None),
    ("a\x00b", "NAME_INVALID", None),
    ("line\nbreak", "NAME_INVALID", None),
    ("bell\x07", "NAME_INVALID", None),
    ("\x1b[31mred", "NAME_INVALID", None),
    ("\u202eevil", "NAME_INVALID", None),
    ("zero\u200bwidth", "NAME_INVALID", None),
    ("private\ue000", "NAME_INVALID", None),
]
TIMEZONE_CASES: list[tuple[str, str | None, str | None]] = [
    ("../../etc/passwd", "TIMEZONE_INVALID", None),
    ("/etc/localtime", "TIMEZONE_INVALID", None),
    ("/usr/share/zoneinfo/Europe/Berlin", "TIMEZONE_INVALID", None),
    ("Europe/Berlin/../../../etc/passwd", "TIMEZONE_INVALID", None),
    ("Europe/../Europe/Berlin", "TIMEZONE_INVALID", None),
    ("localtime", "TIMEZONE_INVALID", None),
    ("posixrules", "TIMEZONE_INVALID", None),
    ("UTC\x00", "TIMEZONE_INVALID", None),
    ("Europe/Berlin'; --", "TIMEZONE_INVALID", None),
    ("+05:00", "TIMEZONE_INVALID", None),
    ("europe/berlin", "TIMEZONE_INVALID", None),
    ("E" * 65, "TIMEZONE_INVALID", None),
    ("\U0001f600", "TIMEZONE_INVALID", None),
    ("Etc/GMT+5", None, "Etc/GMT+5"),
    ("America/Argentina/Buenos_Aires", None, "America/Argentina/Buenos_Aires"),
    (" Europe/Berlin ", None, "Europe/Berlin"),
]
ENDPOINT_CASES: list[tuple[str, str | None, str | None]] = [
    ("POST /sync\x00", "ENDPOINT_NOT_FOUND", None),
    ("POST /sync; rm -rf /", "ENDPOINT_NOT_FOUND", None),
    ("POST /sync' OR '1'='1", "ENDPOINT_NOT_FOUND", None),
    ("POST /../sync", "ENDPOINT_NOT_FOUND", None),
    ("POST ../../etc/passwd", "ENDPOINT_NOT_FOUND", None),
    ("POST /" + "s" * 300, "ENDPOINT_NOT_FOUND", None),
    ("POST /\u0455ync", "ENDPOINT_NOT_FOUND", None),  # Cyrillic dze, not Latin s
    ("GET /items/{id}", "ENDPOINT_NOT_SCHEDULABLE", None),
    ("POST /users/:id", "ENDPOINT_NOT_SCHEDULABLE", None),
    ("/report", "ENDPOINT_AMBIGUOUS", None),
    ("POST //sync", None, "POST /sync"),  # repeated "/" collapsed
    ("/sync", None, "POST /sync"),
]
CRON_CASES: list[tuple[str, str | None, str | None]] = [
    ("*/5 * * * *; rm -rf /", "CRON_INVALID", None),
    ("*/5 * * * *\x00", "CRON_INVALID", None),
    ("'; DROP TABLE schedules; --", "CRON_INVALID", None),
    ("*/5 * * * * " + "* " * 100, "CRON_INVALID", None),
    ("\uff0a/5 * * * *", "CRON_INVALID", None),  # fullwidth asterisk
    ("\u0661 * * * *", "CRON_INVALID", None),  # Arabic-Indic digit one
    ("* * * * *", "CRON_TOO_FREQUENT", None),
    (" 0 3 * * MON-FRI ", None, "0 3 * * MON-FRI"),
]
PAYLOAD_CASES: list[tuple[Any, str | None]] = [
    ({"sql": "'; DROP TABLE schedules; --", "quote": "\"'`\\"}, None),
    ({"ctl": "\x01\x02\x1b[31m\x7f\n\t\r", "bidi": "\u202e\u200b\ufeff"}, None),
    ({"\u540d\u524d": "\U0001f600", "e\u0301": "\u00e9", "\U0010ffff": "\ufffd"}, None),
    ({"path": "../../etc/passwd", "tpl": "{{7*7}} ${x} %s"}, None),
    ([[[[[["deep"]]]]]], None),
    ({"n": 1.5, "big": 1e300, "tiny": 5e-324, "neg": -0.25, "int": 9007199254740991.0}, None),
    ({"long": "\u00e9" * 49_990}, None),  # ~100,000 bytes in UTF-8
    ({"nul": "a\x00b"}, "PAYLOAD_INVALID"),
    ({"a\x00": 1.0}, "PAYLOAD_INVALID"),
    ({"long": "\u00e9" * 50_001}, "PAYLOAD_TOO_LARGE"),
    ("just a string", "PAYLOAD_INVALID"),
    (3.0, "PAYLOAD_INVALID"),
    ({"nan": float("nan")}, "PAYLOAD_INVALID"),
    ({"inf": float("inf")}, "PAYLOAD_INVALID"),
]


@dataclass
class FieldCase:
    field: str
    value: Any
    reason: str | None
    stored: Any


FIELD_CASES = (
    [FieldCase("name", v, r, s) for v, r, s in NAME_CASES]
    + [FieldCase("timezone", v, r, s) for v, r, s in TIMEZONE_CASES]
    + [FieldCase("endpoint", v, r, s) for v, r, s in ENDPOINT_CASES]
    + [FieldCase("cron", v, r, s) for v, r, s in CRON_CASES]
    + [FieldCase("payload", v, r, v) for v, r in PAYLOAD_CASES]
)


def odd_schedule(case: FieldCase) -> schedule_pb2.Schedule:
    """A valid schedule but for `case`'s field."""
    fields: dict[str, Any] = {"endpoint": "POST /sync", "cron": "0 0 1 1 *"}
    if case.field == "payload":
        fields["payload"] = to_value(case.value)
    else:
        fields[case.field] = case.value
    return schedule_pb2.Schedule(**fields)


def send_odd_value(
    t: Target, md: Metadata, case: FieldCase, sent: schedule_pb2.Schedule, how: str
) -> tuple[Outcome, schedule_pb2.Schedule | None]:
    """`sent` in a create, or its field in an update of a schedule made for it (returned too)."""
    if how == "create":
        return call(t.host.CreateSchedule, pb.CreateScheduleRequest(schedule=sent), md), None
    base = t.host.CreateSchedule(
        pb.CreateScheduleRequest(
            schedule=schedule_pb2.Schedule(endpoint="POST /sync", cron="0 0 1 1 *")
        ),
        metadata=md,
        timeout=DEADLINE,
    ).schedule
    update = schedule_pb2.Schedule()
    update.CopyFrom(sent)
    update.id = base.id
    outcome = call(
        t.host.UpdateSchedule,
        pb.UpdateScheduleRequest(
            schedule=update, update_mask=field_mask_pb2.FieldMask(paths=[case.field])
        ),
        md,
    )
    return outcome, base


def odd_value_problems(
    t: Target,
    md: Metadata,
    case: FieldCase,
    label: str,
    outcome: Outcome,
    base: schedule_pb2.Schedule | None,
) -> list[str]:
    """What went wrong: a value refused for another reason (or a refused update that changed
    the schedule), or a value accepted that is not stored exactly."""
    problems: list[str] = []
    if case.reason is not None:
        if outcome.failure is None or outcome.failure.violations != {
            f"schedule.{case.field}": case.reason
        }:
            problems.append(f"{label}: expected {case.reason}, got {outcome}")
        if base is not None:
            # Refused means unchanged.
            now = t.host.GetSchedule(
                pb.GetScheduleRequest(id=base.id), metadata=md, timeout=DEADLINE
            ).schedule
            if now != base:
                problems.append(f"{label}: a refused update changed the schedule")
    elif outcome.code != grpc.StatusCode.OK:
        problems.append(f"{label}: expected it stored, got {outcome.failure}")
    else:
        got = outcome.response.schedule
        stored = payload_of(got.payload) if case.field == "payload" else getattr(got, case.field)
        if not same_json(stored, case.stored):
            problems.append(f"{label}: stored as {stored!r:.80}")
        again = t.host.GetSchedule(
            pb.GetScheduleRequest(id=got.id), metadata=md, timeout=DEADLINE
        ).schedule
        if again != got:
            problems.append(f"{label}: read back differently")
    return problems


def test_odd_values_are_refused_or_stored_exactly(target: Target) -> None:
    t = target
    md = t.install_metadata(t.main)
    problems: list[str] = []
    for case in FIELD_CASES:
        sent = odd_schedule(case)
        for how in ("create", "update"):
            outcome, base = send_odd_value(t, md, case, sent, how)
            label = f"{how} {case.field}={case.value!r:.80}"
            check_answer(outcome, label)
            problems += odd_value_problems(t, md, case, label, outcome, base)
            if outcome.code == grpc.StatusCode.OK or base is not None:
                made = outcome.response.schedule if outcome.response else base
                assert made is not None
                t.host.DeleteSchedule(
                    pb.DeleteScheduleRequest(id=made.id), metadata=md, timeout=DEADLINE
                )
    assert not problems, "\n".join(problems)
    assert_healthy(t)


INSTALL_FIELD_CASES: list[tuple[str, str, str | None]] = [
    ("tenant_id", "../../etc/passwd", None),
    ("tenant_id", "t'; DROP TABLE installs; --", None),
    ("tenant_id", "\u540d\u524d-\U0001f600", None),
    ("tenant_id", "t\x00", "INSTALL_INVALID"),
    ("tenant_id", "t\n1", "INSTALL_INVALID"),
    ("tenant_id", "t" * 129, "INSTALL_INVALID"),
    ("registry_id", 'reg"quoted"', None),
    ("registry_id", "r\x1b[0m", "INSTALL_INVALID"),
    ("version_id", "v" * 128, None),
    ("version_id", "v" * 129, "INSTALL_INVALID"),
    ("content_hash", "sha256:" + "f" * 249, None),
    ("content_hash", "sha256:" + "f" * 250, "INSTALL_INVALID"),
    ("handler", "h" * 256, None),
    ("handler", "h" * 257, "INSTALL_INVALID"),
    ("handler", "h\x00", "INSTALL_INVALID"),
    ("path", "/" + "p" * 1023, None),
    ("path", "/" + "p" * 1024, "INSTALL_INVALID"),
    ("path", "/sync\x00", "INSTALL_INVALID"),
    ("path", "/a'b\"c;d", None),
    ("capability", "cap:\u00e9\U0001f600", None),
    ("capability", "cap\x00", "INSTALL_INVALID"),
]


def test_odd_install_fields_are_refused_or_stored_exactly(target: Target) -> None:
    t = target
    problems: list[str] = []
    for name, value, reason in INSTALL_FIELD_CASES:
        msg = install_message()
        if name in ("handler", "path"):
            msg.endpoints[0].handler = value if name == "handler" else "sync"
            if name == "path":
                msg.endpoints[0].path = value
        elif name == "capability":
            msg.granted_capabilities.append(value)
        else:
            setattr(msg, name, value)
        outcome = call(
            t.admin.UpsertInstall, admin_pb.UpsertInstallRequest(install=msg), admin_metadata()
        )
        label = f"install {name}={value!r:.60}"
        check_answer(outcome, label)
        if reason is not None:
            if outcome.failure is None or reason not in outcome.failure.violations.values():
                problems.append(f"{label}: expected {reason}, got {outcome}")
            continue
        if outcome.code != grpc.StatusCode.OK:
            problems.append(f"{label}: expected it stored, got {outcome.failure}")
            continue
        got = t.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=msg.install_id),
            metadata=admin_metadata(),
            timeout=DEADLINE,
        ).install
        if name == "handler":
            stored: Any = next(e.handler for e in got.endpoints if e.path == "/sync")
        elif name == "path":
            stored = next((e.path for e in got.endpoints if e.path == value), None)
        elif name == "capability":
            stored = value if value in got.granted_capabilities else list(got.granted_capabilities)
        else:
            stored = getattr(got, name)
        if stored != value:
            problems.append(f"{label}: stored as {stored!r:.60}")
        t.admin.DeleteInstall(
            admin_pb.DeleteInstallRequest(install_id=msg.install_id),
            metadata=admin_metadata(),
            timeout=DEADLINE,
        )
    assert not problems, "\n".join(problems)
    assert_healthy(t)


def test_log_of_the_hostile_server_has_no_crash(target: Target) -> None:
    """Runs last in this module: whatever the examples sent, nothing reached the catch-all."""
    text = Path(target.server.log_path).read_text(errors="replace")
    assert "unhandled error" not in text
    assert "Traceback" not in text
    assert_healthy(target)
