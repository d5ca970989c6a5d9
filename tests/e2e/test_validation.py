"""Validation through the real server: every validation rule and the shape of each error.

Each failure is checked the way a generated client reads it: the gRPC code, `ErrorInfo.reason`
and `domain`, and the `BadRequest` field violations (field → reason).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from schedulerhost.v1 import schedule_pb2
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb

from tests.support.grpc_status_details import RpcFailure, failure_of, rpc_failure
from tests.support.server import (
    ADMIN_TOKEN,
    RUNNER_TOKEN,
    SECOND_RUNNER_TOKEN,
    InstallHandle,
    Stubs,
    admin_metadata,
    install_message,
    register_install,
)

DOMAIN = "schedulerhost.v1"
MAX_PAYLOAD_BYTES = 100_000
HOST_METHOD = "/schedulerhost.v1.SchedulerHost/"
ADMIN_METHOD = "/schedulerhost.v1.SchedulerAdmin/"


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
async def shared_install(stubs: Stubs) -> InstallHandle:
    """One install for tests that only read or fail: they never add a schedule to it."""
    return await register_install(stubs.admin)


def schedule(**fields: Any) -> schedule_pb2.Schedule:
    """A valid schedule input, with `fields` overriding the defaults."""
    values: dict[str, Any] = {"endpoint": "/sync", "cron": "*/5 * * * *"}
    values.update(fields)
    return schedule_pb2.Schedule(**values)


def json_value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def create_call(
    stubs: Stubs, install: InstallHandle, request_id: str = "", **fields: Any
) -> Awaitable[pb.CreateScheduleResponse]:
    return stubs.host.CreateSchedule(
        pb.CreateScheduleRequest(schedule=schedule(**fields), request_id=request_id),
        metadata=install.metadata,
    )


async def create(stubs: Stubs, install: InstallHandle, **fields: Any) -> schedule_pb2.Schedule:
    return (await create_call(stubs, install, **fields)).schedule


def update_call(
    stubs: Stubs,
    install: InstallHandle,
    msg: schedule_pb2.Schedule,
    mask: list[str] | None = None,
) -> Awaitable[pb.UpdateScheduleResponse]:
    request = pb.UpdateScheduleRequest(schedule=msg)
    if mask is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=mask))
    return stubs.host.UpdateSchedule(request, metadata=install.metadata)


async def get(stubs: Stubs, install: InstallHandle, schedule_id: str) -> schedule_pb2.Schedule:
    reply = await stubs.host.GetSchedule(
        pb.GetScheduleRequest(id=schedule_id), metadata=install.metadata
    )
    return reply.schedule


async def list_all(stubs: Stubs, install: InstallHandle) -> pb.ListSchedulesResponse:
    reply: pb.ListSchedulesResponse = await stubs.host.ListSchedules(
        pb.ListSchedulesRequest(), metadata=install.metadata
    )
    return reply


def assert_invalid(failure: RpcFailure, violations: dict[str, str]) -> None:
    """INVALID_ARGUMENT / VALIDATION_FAILED in our domain with exactly these field violations."""
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.reason == "VALIDATION_FAILED", failure
    assert failure.domain == DOMAIN, failure
    assert failure.violations == violations, failure
    assert failure.detail_types.count("google.rpc.BadRequest") == 1, failure
    assert failure.detail_types.count("google.rpc.ErrorInfo") == 1, failure
    for field_name, description in failure.descriptions.items():
        assert description, f"violation of {field_name} has no description"


async def raw_violations(call: Awaitable[Any]) -> list[tuple[str, str]]:
    """Every field violation of the BadRequest, in order, duplicates kept."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    st = rpc_status.from_call(raised.value)
    assert st is not None, raised.value
    out: list[tuple[str, str]] = []
    for detail in st.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.extend((v.field, v.reason) for v in bad.field_violations)
    return out


BAD_UUIDS = [
    "",
    "not-a-uuid",
    "12345",
    "6f1c2a52-4b8e-4a8e-9c1d-3f7a9b2c4d5",  # one digit short
    "6f1c2a52-4b8e-4a8e-9c1d-3f7a9b2c4d5e0",  # one digit too many
    "6f1c2a52-4b8e-4a8e-9c1d-3f7a9b2c4d5g",  # not hex
    "{6f1c2a52-4b8e-4a8e-9c1d-3f7a9b2c4d5e}",
    "urn:uuid:6f1c2a52-4b8e-4a8e-9c1d-3f7a9b2c4d5e",
    "../6f1c2a52-4b8e-4a8e-9c1d-3f7a9b2c4d5e",
]
NON_EMPTY_BAD_UUIDS = [u for u in BAD_UUIDS if u]


# --------------------------------------------------------------------------------------------
# cron

CRON_INVALID_CASES = [
    pytest.param("bad", id="word"),
    pytest.param("* * * *", id="four-fields"),
    pytest.param("0 * * * * *", id="six-fields"),
    pytest.param("0 0 * * * 2026", id="six-fields-year"),
    pytest.param("60 * * * *", id="minute-60"),
    pytest.param("0 24 * * *", id="hour-24"),
    pytest.param("0 0 0 * *", id="dom-0"),
    pytest.param("0 0 32 * *", id="dom-32"),
    pytest.param("0 0 * 0 *", id="month-0"),
    pytest.param("0 0 * 13 *", id="month-13"),
    pytest.param("0 0 * * 8", id="dow-8"),
    pytest.param("-1 * * * *", id="negative"),
    pytest.param("a * * * *", id="letter-minute"),
    pytest.param("0 x * * *", id="letter-hour"),
    pytest.param("0 0 * FOO *", id="unknown-month-name"),
    pytest.param("0 0 * * MON-FOO", id="unknown-day-name"),
    pytest.param("0 0 * * JAN", id="month-name-in-dow"),
    pytest.param("0 0 * MON *", id="day-name-in-month"),
    pytest.param("\u0663 * * * *", id="arabic-indic-digit"),
    pytest.param("*/0 * * * *", id="step-0"),
    pytest.param("30-10 * * * *", id="backwards-range"),
    pytest.param("0 0 * * 1,,2", id="empty-list-item"),
    pytest.param("0 0 * * 1-", id="open-range"),
    pytest.param("@reboot", id="reboot"),
    pytest.param("@every 5m", id="every"),
    pytest.param("@", id="bare-at"),
    pytest.param("000" + ",0" * 59 + " * * * *", id="129-chars"),
    pytest.param("0 0\x00 * * *", id="nul"),
]

CRON_ACCEPTED_CASES = [
    pytest.param("0 0 1 JAN *", "0 0 1 JAN *", id="month-name"),
    pytest.param("0 9 * * MON-FRI", "0 9 * * MON-FRI", id="day-name-range"),
    pytest.param("30 6 * JAN-MAR,OCT *", "30 6 * JAN-MAR,OCT *", id="month-range-and-list"),
    pytest.param("0 0 * * sun", "0 0 * * sun", id="lower-case-day"),
    pytest.param("0 0 * * 7", "0 0 * * 7", id="sunday-as-7"),
    pytest.param("@hourly", "@hourly", id="hourly"),
    pytest.param("@daily", "@daily", id="daily"),
    pytest.param("@midnight", "@midnight", id="midnight"),
    pytest.param("@weekly", "@weekly", id="weekly"),
    pytest.param("@monthly", "@monthly", id="monthly"),
    pytest.param("@yearly", "@yearly", id="yearly"),
    pytest.param("@annually", "@annually", id="annually"),
    pytest.param("0 9-17 * * *", "0 9-17 * * *", id="hour-range"),
    pytest.param("*/15 * * * *", "*/15 * * * *", id="step"),
    pytest.param("0,30 * * * *", "0,30 * * * *", id="list"),
    pytest.param("0 0-23/2 * * *", "0 0-23/2 * * *", id="range-step"),
    pytest.param("5 4 1-7 * *", "5 4 1-7 * *", id="dom-range"),
    pytest.param("0 0 29 2 *", "0 0 29 2 *", id="leap-day"),
    pytest.param("59 23 31 12 *", "59 23 31 12 *", id="upper-bounds"),
    pytest.param("  0 * * * *  ", "0 * * * *", id="trimmed"),
    pytest.param("\t@daily\n", "@daily", id="macro-trimmed"),
    pytest.param("00" + ",0" * 59 + " * * * *", "00" + ",0" * 59 + " * * * *", id="128-chars"),
    pytest.param(
        "  00" + ",0" * 59 + " * * * *  ", "00" + ",0" * 59 + " * * * *", id="128-after-trim"
    ),
]

CRON_DOM_AND_DOW_CASES = [
    pytest.param("0 0 1 * MON", id="dom-and-day-name"),
    pytest.param("0 0 1-15 * 1-5", id="ranges"),
    pytest.param("0 0 13 * 5", id="friday-13th"),
    pytest.param("0 0 1,15 * 0", id="list-and-sunday"),
]

CRON_TOO_FREQUENT_CASES = [
    pytest.param("* * * * *", id="every-minute"),
    pytest.param("*/4 * * * *", id="every-4"),
    pytest.param("0-59 * * * *", id="range-0-59"),
    pytest.param("0,1 * * * *", id="list-0-1"),
    pytest.param("59,0 * * * *", id="list-59-0-wraps-hour"),
    pytest.param("*/7 * * * *", id="every-7-wraps-at-56"),
    pytest.param("0,56 * * * *", id="gap-across-hour"),
    pytest.param("0,59 0,23 * * *", id="gap-across-midnight"),
    pytest.param("0-4 9 * * MON", id="burst-once-a-week"),
]

CRON_FREQUENT_ENOUGH_CASES = [
    pytest.param("*/5 * * * *", id="every-5"),
    pytest.param("1-59/5 * * * *", id="1-59-step-5"),
    pytest.param("*/6 * * * *", id="every-6"),
    pytest.param("0,5 * * * *", id="list-0-5"),
    pytest.param("55,0 * * * *", id="list-55-0"),
    pytest.param("2-57/5 * * * *", id="2-57-step-5"),
]


@pytest.mark.parametrize("cron", ["", "   "], ids=["empty", "blank"])
async def test_create_without_cron_or_run_at_is_refused_on_cron(
    stubs: Stubs, shared_install: InstallHandle, cron: str
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, cron=cron))
    assert_invalid(failure, {"schedule.cron": "SCHEDULE_SPEC_INVALID"})


@pytest.mark.parametrize("cron", CRON_INVALID_CASES)
async def test_create_rejects_invalid_cron(
    stubs: Stubs, shared_install: InstallHandle, cron: str
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, cron=cron))
    assert_invalid(failure, {"schedule.cron": "CRON_INVALID"})


@pytest.mark.parametrize(("cron", "stored"), CRON_ACCEPTED_CASES)
async def test_create_accepts_cron_form_and_stores_it_trimmed(
    stubs: Stubs, install: InstallHandle, cron: str, stored: str
) -> None:
    created = await create(stubs, install, cron=cron)
    assert created.cron == stored
    assert created.HasField("next_run_time")
    assert (await get(stubs, install, created.id)).cron == stored


@pytest.mark.parametrize("cron", CRON_DOM_AND_DOW_CASES)
async def test_create_rejects_day_of_month_and_day_of_week_both_restricted(
    stubs: Stubs, shared_install: InstallHandle, cron: str
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, cron=cron))
    assert_invalid(failure, {"schedule.cron": "CRON_DOM_AND_DOW"})


@pytest.mark.parametrize("cron", CRON_TOO_FREQUENT_CASES)
async def test_create_rejects_cron_more_frequent_than_five_minutes(
    stubs: Stubs, shared_install: InstallHandle, cron: str
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, cron=cron))
    assert_invalid(failure, {"schedule.cron": "CRON_TOO_FREQUENT"})


@pytest.mark.parametrize("cron", CRON_FREQUENT_ENOUGH_CASES)
async def test_create_accepts_cron_exactly_five_minutes_apart(
    stubs: Stubs, install: InstallHandle, cron: str
) -> None:
    created = await create(stubs, install, cron=cron)
    assert created.cron == cron


async def test_update_rejects_too_frequent_cron_and_keeps_the_schedule(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install, cron="0 * * * *")
    failure = await rpc_failure(
        update_call(stubs, install, schedule_pb2.Schedule(id=created.id, cron="*/4 * * * *"))
    )
    assert_invalid(failure, {"schedule.cron": "CRON_TOO_FREQUENT"})
    assert await get(stubs, install, created.id) == created


# --------------------------------------------------------------------------------------------
# PreviewSchedule: the same cron and time-zone rules, on fields `cron` and `timezone`


def preview_call(
    stubs: Stubs,
    install: InstallHandle,
    cron: str,
    timezone: str = "",
    count: int = 0,
    start: datetime | None = None,
) -> Awaitable[pb.PreviewScheduleResponse]:
    request = pb.PreviewScheduleRequest(cron=cron, timezone=timezone, count=count)
    if start is not None:
        request.start_time.CopyFrom(ts(start))
    return stubs.host.PreviewSchedule(request, metadata=install.metadata)


@pytest.mark.parametrize("cron", CRON_INVALID_CASES)
async def test_preview_rejects_invalid_cron(
    stubs: Stubs, shared_install: InstallHandle, cron: str
) -> None:
    failure = await rpc_failure(preview_call(stubs, shared_install, cron))
    assert_invalid(failure, {"cron": "CRON_INVALID"})


@pytest.mark.parametrize("cron", CRON_DOM_AND_DOW_CASES)
async def test_preview_rejects_day_of_month_and_day_of_week_both_restricted(
    stubs: Stubs, shared_install: InstallHandle, cron: str
) -> None:
    failure = await rpc_failure(preview_call(stubs, shared_install, cron))
    assert_invalid(failure, {"cron": "CRON_DOM_AND_DOW"})


@pytest.mark.parametrize("cron", CRON_TOO_FREQUENT_CASES)
async def test_preview_rejects_too_frequent_cron(
    stubs: Stubs, shared_install: InstallHandle, cron: str
) -> None:
    failure = await rpc_failure(preview_call(stubs, shared_install, cron))
    assert_invalid(failure, {"cron": "CRON_TOO_FREQUENT"})


@pytest.mark.parametrize("cron", CRON_FREQUENT_ENOUGH_CASES)
async def test_preview_reports_the_real_minimum_interval(
    stubs: Stubs, shared_install: InstallHandle, cron: str
) -> None:
    reply = await preview_call(stubs, shared_install, cron, count=100)
    gaps = [
        b.ToDatetime() - a.ToDatetime()
        for a, b in zip(reply.run_times, reply.run_times[1:], strict=False)
    ]
    # The reported minimum is the real smallest gap, and it is at least the 5-minute floor.
    assert reply.min_interval.ToTimedelta() == min(gaps) >= timedelta(minutes=5)


async def test_preview_understands_day_names_and_defaults_to_utc(
    stubs: Stubs, shared_install: InstallHandle
) -> None:
    saturday = datetime(2026, 1, 3, tzinfo=UTC)
    reply = await preview_call(stubs, shared_install, " 0 9 * * MON-FRI ", "", 5, saturday)
    assert [t.ToDatetime(tzinfo=UTC) for t in reply.run_times] == [
        datetime(2026, 1, day, 9, tzinfo=UTC) for day in range(5, 10)
    ]


@pytest.mark.parametrize(("count", "expected"), [(0, 10), (1, 1), (100, 100), (500, 100)])
async def test_preview_count_defaults_to_10_and_caps_at_100(
    stubs: Stubs, shared_install: InstallHandle, count: int, expected: int
) -> None:
    reply = await preview_call(stubs, shared_install, "@hourly", count=count)
    assert len(reply.run_times) == expected


async def test_preview_rejects_negative_count(stubs: Stubs, shared_install: InstallHandle) -> None:
    failure = await rpc_failure(preview_call(stubs, shared_install, "@hourly", count=-1))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "VALIDATION_FAILED"
    assert failure.domain == DOMAIN
    assert set(failure.violations) == {"count"}


async def test_preview_reports_cron_timezone_and_count_together(
    stubs: Stubs, shared_install: InstallHandle
) -> None:
    call = preview_call(stubs, shared_install, "*/4 * * * *", "Not/AZone", count=-5)
    violations = await raw_violations(call)
    assert sorted(f for f, _ in violations) == ["count", "cron", "timezone"]
    assert ("cron", "CRON_TOO_FREQUENT") in violations
    assert ("timezone", "TIMEZONE_INVALID") in violations


# --------------------------------------------------------------------------------------------
# timezone

TIMEZONE_INVALID_CASES = [
    pytest.param("../../etc/passwd", id="relative-path"),
    pytest.param("/usr/share/zoneinfo/UTC", id="absolute-path"),
    pytest.param("America/../Europe/Berlin", id="dot-dot-inside"),
    pytest.param("+05:00", id="offset"),
    pytest.param("-0800", id="offset-no-colon"),
    pytest.param("UTC+5", id="utc-plus"),
    pytest.param("Not/AZone", id="unknown"),
    pytest.param("Europe/Berlin/", id="trailing-slash"),
    pytest.param("Europe/Berlin\x00", id="nul"),
    pytest.param("posix/Europe/Berlin", id="posix-dir"),
    pytest.param("right/UTC", id="right-dir"),
    pytest.param("localtime", id="host-localtime-file"),
    pytest.param("A" * 65, id="65-chars"),
    pytest.param("America/" + "x" * 57, id="65-chars-with-area"),
]

TIMEZONE_VALID_CASES = ["America/New_York", "Europe/Berlin", "Asia/Kolkata", "UTC"]


@pytest.mark.parametrize("timezone", TIMEZONE_INVALID_CASES)
async def test_create_rejects_timezone_that_is_not_an_iana_name(
    stubs: Stubs, shared_install: InstallHandle, timezone: str
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, timezone=timezone))
    assert_invalid(failure, {"schedule.timezone": "TIMEZONE_INVALID"})


@pytest.mark.parametrize("timezone", TIMEZONE_INVALID_CASES)
async def test_preview_rejects_timezone_that_is_not_an_iana_name(
    stubs: Stubs, shared_install: InstallHandle, timezone: str
) -> None:
    failure = await rpc_failure(preview_call(stubs, shared_install, "@daily", timezone))
    assert_invalid(failure, {"timezone": "TIMEZONE_INVALID"})


@pytest.mark.parametrize("timezone", TIMEZONE_VALID_CASES)
async def test_create_accepts_iana_timezone(
    stubs: Stubs, install: InstallHandle, timezone: str
) -> None:
    created = await create(stubs, install, timezone=timezone)
    assert created.timezone == timezone


async def test_timezone_defaults_to_utc(stubs: Stubs, install: InstallHandle) -> None:
    created = await create(stubs, install, cron="0 9 * * *", timezone="")
    assert created.timezone == "UTC"
    assert created.next_run_time.ToDatetime(tzinfo=UTC).time().isoformat() == "09:00:00"


async def test_update_rejects_bad_timezone_and_keeps_the_schedule(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install, timezone="Europe/Berlin")
    failure = await rpc_failure(
        update_call(
            stubs, install, schedule_pb2.Schedule(id=created.id, timezone="+05:00"), ["timezone"]
        )
    )
    assert_invalid(failure, {"schedule.timezone": "TIMEZONE_INVALID"})
    assert (await get(stubs, install, created.id)).timezone == "Europe/Berlin"


# --------------------------------------------------------------------------------------------
# name

NAME_INVALID_CASES = [
    pytest.param("a" * 129, id="129-chars"),
    pytest.param("\u00e4" * 129, id="129-non-ascii-chars"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\rb", id="carriage-return"),
    pytest.param("del\x7f", id="del"),
    pytest.param("\x1b[31mred", id="escape"),
    pytest.param("\u200b", id="zero-width-space"),
    pytest.param("a\u202eb", id="bidi-override"),
]


@pytest.mark.parametrize("name", NAME_INVALID_CASES)
async def test_create_rejects_invalid_name(
    stubs: Stubs, shared_install: InstallHandle, name: str
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, name=name))
    assert_invalid(failure, {"schedule.name": "NAME_INVALID"})


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        pytest.param("nightly sync", "nightly sync", id="plain"),
        pytest.param("  nightly sync \t", "nightly sync", id="trimmed"),
        pytest.param("a" * 128, "a" * 128, id="128-chars"),
        pytest.param(" " + "b" * 128 + " ", "b" * 128, id="128-after-trim"),
        pytest.param("\u00e4" * 128, "\u00e4" * 128, id="128-non-ascii"),
        pytest.param("\U0001f600" * 128, "\U0001f600" * 128, id="128-emoji"),
        pytest.param(
            "Rapport \u2013 \u00e9t\u00e9", "Rapport \u2013 \u00e9t\u00e9", id="unicode-text"
        ),
        pytest.param("", "", id="empty-is-unset"),
        pytest.param("   ", "", id="blank-is-unset"),
    ],
)
async def test_create_stores_name_trimmed(
    stubs: Stubs, install: InstallHandle, name: str, stored: str
) -> None:
    created = await create(stubs, install, name=name)
    assert created.name == stored
    assert (await get(stubs, install, created.id)).name == stored


async def test_unset_names_do_not_collide(stubs: Stubs, install: InstallHandle) -> None:
    first = await create(stubs, install, name="")
    second = await create(stubs, install, name="  ")
    assert first.name == second.name == ""
    assert (await list_all(stubs, install)).total_size == 2


async def test_duplicate_name_in_the_same_install_is_already_exists(
    stubs: Stubs, install: InstallHandle
) -> None:
    await create(stubs, install, name="sync")
    for duplicate in ("sync", "  sync  "):
        failure = await rpc_failure(create_call(stubs, install, name=duplicate))
        assert failure.code == grpc.StatusCode.ALREADY_EXISTS, failure
        assert failure.reason == "SCHEDULE_NAME_IN_USE"
        assert failure.domain == DOMAIN
    assert (await list_all(stubs, install)).total_size == 1


async def test_same_name_in_another_install_is_fine(
    stubs: Stubs, install: InstallHandle, other_install: InstallHandle
) -> None:
    mine = await create(stubs, install, name="sync")
    theirs = await create(stubs, other_install, name="sync")
    assert mine.name == theirs.name == "sync"


async def test_names_are_case_sensitive(stubs: Stubs, install: InstallHandle) -> None:
    upper = await create(stubs, install, name="Sync")
    lower = await create(stubs, install, name="sync")
    assert (upper.name, lower.name) == ("Sync", "sync")


async def test_rename_to_a_taken_name_is_already_exists(
    stubs: Stubs, install: InstallHandle
) -> None:
    await create(stubs, install, name="first")
    second = await create(stubs, install, name="second")
    failure = await rpc_failure(
        update_call(stubs, install, schedule_pb2.Schedule(id=second.id, name=" first "))
    )
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS, failure
    assert failure.reason == "SCHEDULE_NAME_IN_USE"
    assert failure.domain == DOMAIN
    assert (await get(stubs, install, second.id)).name == "second"


async def test_update_rejects_invalid_name(stubs: Stubs, install: InstallHandle) -> None:
    created = await create(stubs, install, name="ok")
    failure = await rpc_failure(
        update_call(stubs, install, schedule_pb2.Schedule(id=created.id, name="x\ny"), ["name"])
    )
    assert_invalid(failure, {"schedule.name": "NAME_INVALID"})


# --------------------------------------------------------------------------------------------
# payload

PAYLOAD_ACCEPTED_CASES = [
    pytest.param({"full": True, "n": 3}, id="object"),
    pytest.param([1, "two", {"three": 3}], id="array"),
    pytest.param({}, id="empty-object"),
    pytest.param([], id="empty-array"),
    pytest.param({"a": {"b": [None, False, 1.5, -2, "x"]}, "c": "\u00e9t\u00e9"}, id="nested"),
]


@pytest.mark.parametrize("data", PAYLOAD_ACCEPTED_CASES)
async def test_payload_object_or_array_is_returned_equal(
    stubs: Stubs, install: InstallHandle, data: Any
) -> None:
    payload = json_value(data)
    created = await create(stubs, install, payload=payload)
    assert created.payload == payload
    assert (await get(stubs, install, created.id)).payload == payload


async def test_null_payload_means_unset(stubs: Stubs, install: InstallHandle) -> None:
    created = await create(
        stubs, install, payload=struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    )
    assert not created.HasField("payload")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(struct_pb2.Value(string_value="text"), id="string"),
        pytest.param(struct_pb2.Value(string_value=""), id="empty-string"),
        pytest.param(struct_pb2.Value(number_value=42), id="number"),
        pytest.param(struct_pb2.Value(number_value=0), id="zero"),
        pytest.param(struct_pb2.Value(bool_value=True), id="true"),
        pytest.param(struct_pb2.Value(bool_value=False), id="false"),
        pytest.param(
            struct_pb2.Value(
                struct_value=struct_pb2.Struct(
                    fields={"x": struct_pb2.Value(number_value=math.nan)}
                )
            ),
            id="nan-inside-object",
        ),
        pytest.param(
            struct_pb2.Value(
                list_value=struct_pb2.ListValue(values=[struct_pb2.Value(number_value=math.inf)])
            ),
            id="infinity-inside-array",
        ),
    ],
)
async def test_create_rejects_payload_that_is_not_object_or_array(
    stubs: Stubs, shared_install: InstallHandle, payload: struct_pb2.Value
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, payload=payload))
    assert_invalid(failure, {"schedule.payload": "PAYLOAD_INVALID"})


def _string_payload(text_length: int, char: str = "x") -> struct_pb2.Value:
    # Compact JSON of {"d":"<text>"} is the text plus 8 bytes.
    return json_value({"d": char * text_length})


async def test_payload_of_exactly_100000_compact_bytes_passes(
    stubs: Stubs, install: InstallHandle
) -> None:
    payload = _string_payload(MAX_PAYLOAD_BYTES - 8)
    created = await create(stubs, install, payload=payload)
    assert created.payload == payload


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_string_payload(MAX_PAYLOAD_BYTES - 7), id="100001-bytes"),
        pytest.param(_string_payload(50_000, "\u00e9"), id="50000-two-byte-chars"),
        pytest.param(json_value(list(range(40_000))), id="array-of-numbers"),
    ],
)
async def test_create_rejects_payload_over_100000_compact_bytes(
    stubs: Stubs, shared_install: InstallHandle, payload: struct_pb2.Value
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, payload=payload))
    assert_invalid(failure, {"schedule.payload": "PAYLOAD_TOO_LARGE"})


@pytest.mark.parametrize(
    "payload",
    [
        # 8 + 2 x 49,990 = 99,988 bytes of UTF-8; escaped as \u00e9 it would be three times more.
        pytest.param(_string_payload(49_990, "\u00e9"), id="utf8-not-escaped"),
        # [0,0,...]: 90,001 bytes compact; with ", " separators or as 0.0 it would be too large.
        pytest.param(json_value([0] * 45_000), id="compact-integers"),
    ],
)
async def test_payload_size_is_measured_as_compact_utf8_json(
    stubs: Stubs, install: InstallHandle, payload: struct_pb2.Value
) -> None:
    created = await create(stubs, install, payload=payload)
    assert created.payload == payload


async def test_update_rejects_too_large_payload_and_keeps_the_old_one(
    stubs: Stubs, install: InstallHandle
) -> None:
    original = json_value({"keep": True})
    created = await create(stubs, install, payload=original)
    failure = await rpc_failure(
        update_call(
            stubs,
            install,
            schedule_pb2.Schedule(id=created.id, payload=_string_payload(MAX_PAYLOAD_BYTES)),
            ["payload"],
        )
    )
    assert_invalid(failure, {"schedule.payload": "PAYLOAD_TOO_LARGE"})
    assert (await get(stubs, install, created.id)).payload == original


async def test_payload_with_nul_character_is_stored_or_refused_never_internal(
    stubs: Stubs, install: InstallHandle
) -> None:
    # Valid JSON that PostgreSQL's JSONB cannot hold: the server must decide, not crash.
    payload = json_value({"s": "a\x00b"})
    try:
        created = await create(stubs, install, payload=payload)
    except grpc.aio.AioRpcError as error:
        assert_invalid(failure_of(error), {"schedule.payload": "PAYLOAD_INVALID"})
    else:
        assert created.payload == payload
        assert (await get(stubs, install, created.id)).payload == payload


# --------------------------------------------------------------------------------------------
# endpoint

ENDPOINT_NOT_FOUND_CASES = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("/" + "s" * 256, id="257-chars"),
    pytest.param("POST /" + "s" * 251, id="257-chars-with-method"),
    pytest.param("/nope", id="unknown-path"),
    pytest.param("DELETE /sync", id="unknown-method"),
    pytest.param("GET /sync", id="other-method-of-known-path"),
    pytest.param("/sync/extra", id="sub-path"),
    pytest.param("POST /sync extra", id="trailing-words"),
    pytest.param("/SYNC", id="path-is-case-sensitive"),
]

ENDPOINT_NOT_SCHEDULABLE_CASES = [
    pytest.param("PUT /items", id="put"),
    pytest.param("put /items", id="put-lower-case"),
    pytest.param("/items", id="bare-path-only-put"),
    pytest.param("GET /items/{id}", id="braces"),
    pytest.param("/items/{id}", id="bare-braces"),
    pytest.param("POST /users/:id", id="colon"),
]

ENDPOINT_CANONICAL_CASES = [
    pytest.param("/sync", "POST /sync", id="bare-path"),
    pytest.param("sync", "POST /sync", id="no-leading-slash"),
    pytest.param("//sync", "POST /sync", id="double-slash"),
    pytest.param("post /sync", "POST /sync", id="lower-case-method"),
    pytest.param("POST //sync", "POST /sync", id="method-and-double-slash"),
    pytest.param("  POST /sync  ", "POST /sync", id="surrounding-space"),
    pytest.param("/status", "GET /status", id="bare-get"),
    pytest.param("GET /report", "GET /report", id="get-of-ambiguous-path"),
    pytest.param("POST /report", "POST /report", id="post-of-ambiguous-path"),
]


@pytest.mark.parametrize("endpoint", ENDPOINT_NOT_FOUND_CASES)
async def test_create_rejects_unknown_endpoint(
    stubs: Stubs, shared_install: InstallHandle, endpoint: str
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, endpoint=endpoint))
    assert_invalid(failure, {"schedule.endpoint": "ENDPOINT_NOT_FOUND"})


@pytest.mark.parametrize("endpoint", ENDPOINT_NOT_SCHEDULABLE_CASES)
async def test_create_rejects_unschedulable_endpoint(
    stubs: Stubs, shared_install: InstallHandle, endpoint: str
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, endpoint=endpoint))
    assert_invalid(failure, {"schedule.endpoint": "ENDPOINT_NOT_SCHEDULABLE"})


@pytest.mark.parametrize("endpoint", ["/report", "report", "//report", " /report "])
async def test_bare_path_with_get_and_post_is_ambiguous(
    stubs: Stubs, shared_install: InstallHandle, endpoint: str
) -> None:
    failure = await rpc_failure(create_call(stubs, shared_install, endpoint=endpoint))
    assert_invalid(failure, {"schedule.endpoint": "ENDPOINT_AMBIGUOUS"})


@pytest.mark.parametrize(("endpoint", "canonical"), ENDPOINT_CANONICAL_CASES)
async def test_endpoint_selector_is_normalised_to_canonical_form(
    stubs: Stubs, install: InstallHandle, endpoint: str, canonical: str
) -> None:
    created = await create(stubs, install, endpoint=endpoint)
    method, path = canonical.split(" ")
    assert created.endpoint == canonical
    assert (created.endpoint_method, created.endpoint_path) == (method, path)
    endpoints = await stubs.host.GetEndpoints(pb.GetEndpointsRequest(), metadata=install.metadata)
    ids = {(e.method, e.path): e.id for e in endpoints.endpoints}
    assert created.endpoint_id == ids[(method, path)]


@pytest.mark.parametrize(
    ("method", "path", "canonical"),
    [
        pytest.param("POST", "/sync", "POST /sync", id="method-and-path"),
        pytest.param("post", "sync", "POST /sync", id="normalised"),
        pytest.param("", "/status", "GET /status", id="path-only"),
        pytest.param("GET", "/report", "GET /report", id="get-report"),
        pytest.param("POST", "/report", "POST /report", id="post-report"),
    ],
)
async def test_endpoint_method_and_path_select_when_endpoint_is_empty(
    stubs: Stubs, install: InstallHandle, method: str, path: str, canonical: str
) -> None:
    created = await create(stubs, install, endpoint="", endpoint_method=method, endpoint_path=path)
    assert created.endpoint == canonical


async def test_endpoint_method_and_path_follow_the_same_rules(
    stubs: Stubs, shared_install: InstallHandle
) -> None:
    unschedulable = await rpc_failure(
        create_call(
            stubs, shared_install, endpoint="", endpoint_method="PUT", endpoint_path="/items"
        )
    )
    assert unschedulable.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(unschedulable.violations.values()) == ["ENDPOINT_NOT_SCHEDULABLE"]
    ambiguous = await rpc_failure(
        create_call(stubs, shared_install, endpoint="", endpoint_path="/report")
    )
    assert list(ambiguous.violations.values()) == ["ENDPOINT_AMBIGUOUS"]


async def test_get_endpoints_marks_schedulable_by_the_same_rule(
    stubs: Stubs, shared_install: InstallHandle
) -> None:
    reply = await stubs.host.GetEndpoints(
        pb.GetEndpointsRequest(), metadata=shared_install.metadata
    )
    flags = {f"{e.method} {e.path}": e for e in reply.endpoints}
    assert {k for k, e in flags.items() if e.schedulable} == {
        "POST /sync",
        "GET /status",
        "GET /report",
        "POST /report",
    }
    for key in ("PUT /items", "GET /items/{id}", "POST /users/:id"):
        assert not flags[key].schedulable
        assert flags[key].unschedulable_reason
    for e in reply.endpoints:
        if e.schedulable:
            assert e.unschedulable_reason == ""
        assert uuid.UUID(e.id)


async def test_update_rejects_ambiguous_endpoint_and_keeps_the_old_one(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install, endpoint="POST /sync")
    failure = await rpc_failure(
        update_call(
            stubs, install, schedule_pb2.Schedule(id=created.id, endpoint="/report"), ["endpoint"]
        )
    )
    assert_invalid(failure, {"schedule.endpoint": "ENDPOINT_AMBIGUOUS"})
    assert (await get(stubs, install, created.id)).endpoint == "POST /sync"


# --------------------------------------------------------------------------------------------
# ids


@pytest.mark.parametrize("bad", BAD_UUIDS)
async def test_get_rejects_id_that_is_not_a_uuid(
    stubs: Stubs, shared_install: InstallHandle, bad: str
) -> None:
    failure = await rpc_failure(
        stubs.host.GetSchedule(pb.GetScheduleRequest(id=bad), metadata=shared_install.metadata)
    )
    assert_invalid(failure, {"id": "ID_INVALID"})


@pytest.mark.parametrize("bad", BAD_UUIDS)
async def test_delete_rejects_id_that_is_not_a_uuid(
    stubs: Stubs, shared_install: InstallHandle, bad: str
) -> None:
    failure = await rpc_failure(
        stubs.host.DeleteSchedule(
            pb.DeleteScheduleRequest(id=bad), metadata=shared_install.metadata
        )
    )
    assert_invalid(failure, {"id": "ID_INVALID"})


@pytest.mark.parametrize("bad", BAD_UUIDS)
async def test_update_rejects_schedule_id_that_is_not_a_uuid(
    stubs: Stubs, shared_install: InstallHandle, bad: str
) -> None:
    failure = await rpc_failure(
        update_call(stubs, shared_install, schedule_pb2.Schedule(id=bad, cron="0 * * * *"))
    )
    assert_invalid(failure, {"schedule.id": "ID_INVALID"})


@pytest.mark.parametrize("bad", NON_EMPTY_BAD_UUIDS)
async def test_create_rejects_request_id_that_is_not_a_uuid(
    stubs: Stubs, install: InstallHandle, bad: str
) -> None:
    failure = await rpc_failure(create_call(stubs, install, request_id=bad))
    assert_invalid(failure, {"request_id": "ID_INVALID"})
    assert (await list_all(stubs, install)).total_size == 0


async def test_create_accepts_uuid_request_id(stubs: Stubs, install: InstallHandle) -> None:
    request_id = str(uuid.uuid4())
    first = await create_call(stubs, install, request_id=request_id)
    again = await create_call(stubs, install, request_id=request_id)
    assert first.schedule.id == again.schedule.id


@pytest.mark.parametrize("bad", BAD_UUIDS)
async def test_admin_get_install_rejects_install_id_that_is_not_a_uuid(
    stubs: Stubs, bad: str
) -> None:
    failure = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=bad), metadata=admin_metadata()
        )
    )
    assert_invalid(failure, {"install_id": "ID_INVALID"})


@pytest.mark.parametrize("bad", NON_EMPTY_BAD_UUIDS)
async def test_admin_delete_install_rejects_install_id_that_is_not_a_uuid(
    stubs: Stubs, bad: str
) -> None:
    failure = await rpc_failure(
        stubs.admin.DeleteInstall(
            admin_pb.DeleteInstallRequest(install_id=bad), metadata=admin_metadata()
        )
    )
    assert_invalid(failure, {"install_id": "ID_INVALID"})


@pytest.mark.parametrize("bad", NON_EMPTY_BAD_UUIDS)
async def test_admin_upsert_install_rejects_install_id_that_is_not_a_uuid(
    stubs: Stubs, bad: str
) -> None:
    failure = await rpc_failure(
        stubs.admin.UpsertInstall(
            admin_pb.UpsertInstallRequest(install=install_message(bad)), metadata=admin_metadata()
        )
    )
    assert_invalid(failure, {"install.install_id": "ID_INVALID"})


@pytest.mark.parametrize(
    ("install_id", "schedule_id", "violations"),
    [
        pytest.param("nope", str(uuid.uuid4()), {"install_id": "ID_INVALID"}, id="install"),
        pytest.param(str(uuid.uuid4()), "nope", {"schedule_id": "ID_INVALID"}, id="schedule"),
        pytest.param(
            "", "", {"install_id": "ID_INVALID", "schedule_id": "ID_INVALID"}, id="both-empty"
        ),
    ],
)
async def test_admin_list_schedule_runs_rejects_ids_that_are_not_uuids(
    stubs: Stubs, install_id: str, schedule_id: str, violations: dict[str, str]
) -> None:
    failure = await rpc_failure(
        stubs.admin.ListScheduleRuns(
            admin_pb.ListScheduleRunsRequest(install_id=install_id, schedule_id=schedule_id),
            metadata=admin_metadata(),
        )
    )
    assert_invalid(failure, violations)


@pytest.mark.parametrize(
    ("install_id", "schedule_id", "violations"),
    [
        pytest.param("nope", str(uuid.uuid4()), {"install_id": "ID_INVALID"}, id="install"),
        pytest.param(str(uuid.uuid4()), "nope", {"schedule_id": "ID_INVALID"}, id="schedule"),
    ],
)
async def test_admin_run_schedule_now_rejects_ids_that_are_not_uuids(
    stubs: Stubs, install_id: str, schedule_id: str, violations: dict[str, str]
) -> None:
    failure = await rpc_failure(
        stubs.admin.RunScheduleNow(
            admin_pb.RunScheduleNowRequest(install_id=install_id, schedule_id=schedule_id),
            metadata=admin_metadata(),
        )
    )
    assert_invalid(failure, violations)


@pytest.mark.parametrize("bad", [*BAD_UUIDS, None])
async def test_x_install_id_that_is_not_a_uuid_is_invalid_argument(
    stubs: Stubs, bad: str | None
) -> None:
    metadata: tuple[tuple[str, str], ...] = (("x-runner-auth", RUNNER_TOKEN),)
    if bad is not None:
        metadata += (("x-install-id", bad),)
    # The install id is checked before the RPC's own validation: the bad cron is not reported.
    failure = await rpc_failure(
        stubs.host.CreateSchedule(
            pb.CreateScheduleRequest(schedule=schedule(cron="bad")), metadata=metadata
        )
    )
    assert_invalid(failure, {"x-install-id": "ID_INVALID"})


# --------------------------------------------------------------------------------------------
# page_size and page_token


def list_call(
    stubs: Stubs, install: InstallHandle, page_size: int = 0, page_token: str = ""
) -> Awaitable[pb.ListSchedulesResponse]:
    return stubs.host.ListSchedules(
        pb.ListSchedulesRequest(page_size=page_size, page_token=page_token),
        metadata=install.metadata,
    )


async def _fill(stubs: Stubs, install: InstallHandle, n: int) -> list[str]:
    """n schedules, created one after another so that their order is known."""
    return [(await create(stubs, install)).id for _ in range(n)]


@pytest.mark.parametrize("page_size", [-1, -100, -(2**31)])
async def test_negative_page_size_is_invalid(
    stubs: Stubs, shared_install: InstallHandle, page_size: int
) -> None:
    failure = await rpc_failure(list_call(stubs, shared_install, page_size))
    assert_invalid(failure, {"page_size": "PAGE_INVALID"})


async def test_page_size_zero_and_oversized_return_everything_below_the_limit(
    stubs: Stubs, install: InstallHandle
) -> None:
    ids = await _fill(stubs, install, 3)
    for page_size in (0, 100, 500, 2**31 - 1):
        reply = await list_call(stubs, install, page_size)
        assert [s.id for s in reply.schedules] == ids, page_size
        assert reply.next_page_token == ""
        assert reply.total_size == 3


async def test_page_size_one_walks_the_list_with_tokens(
    stubs: Stubs, install: InstallHandle
) -> None:
    ids = await _fill(stubs, install, 3)
    seen: list[str] = []
    token = ""
    for _ in range(3):
        reply = await list_call(stubs, install, 1, token)
        assert len(reply.schedules) == 1
        assert reply.total_size == 3
        seen.append(reply.schedules[0].id)
        token = reply.next_page_token
    assert seen == ids
    assert token == ""


async def test_default_page_holds_all_fifty_schedules(stubs: Stubs, install: InstallHandle) -> None:
    # 50 is the quota, so the default page (50) must hold a full install.
    await asyncio.gather(*(create(stubs, install) for _ in range(50)))
    reply = await list_call(stubs, install, 0)
    assert len(reply.schedules) == 50
    assert reply.next_page_token == ""
    assert reply.total_size == 50
    first = await list_call(stubs, install, 49)
    assert len(first.schedules) == 49
    assert first.next_page_token
    rest = await list_call(stubs, install, 49, first.next_page_token)
    assert len(rest.schedules) == 1
    assert rest.next_page_token == ""
    assert [s.id for s in [*first.schedules, *rest.schedules]] == [s.id for s in reply.schedules]


@pytest.mark.parametrize(
    "token",
    ["garbage", "!!!!", "AAAA", "eyJ9", "x" * 200, "\u00e9\u00e9\u00e9", "==", " "],
)
async def test_garbage_page_token_is_invalid(
    stubs: Stubs, shared_install: InstallHandle, token: str
) -> None:
    failure = await rpc_failure(list_call(stubs, shared_install, 1, token))
    assert_invalid(failure, {"page_token": "PAGE_INVALID"})


def _flip(token: str, index: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = alphabet[(alphabet.index(token[index]) + 1) % len(alphabet)]
    return token[:index] + replacement + token[index + 1 :]


async def test_altered_page_token_is_invalid(stubs: Stubs, install: InstallHandle) -> None:
    await _fill(stubs, install, 2)
    token = (await list_call(stubs, install, 1)).next_page_token
    assert token
    # Whole characters only: the last one may carry padding bits that decode to nothing.
    for index in (0, 10, len(token) // 2, len(token) - 3):
        failure = await rpc_failure(list_call(stubs, install, 1, _flip(token, index)))
        assert_invalid(failure, {"page_token": "PAGE_INVALID"})
    truncated = await rpc_failure(list_call(stubs, install, 1, token[:-4]))
    assert_invalid(truncated, {"page_token": "PAGE_INVALID"})
    # The real token still works.
    assert len((await list_call(stubs, install, 1, token)).schedules) == 1


async def test_page_token_of_another_install_is_invalid(
    stubs: Stubs, install: InstallHandle, other_install: InstallHandle
) -> None:
    await _fill(stubs, install, 2)
    await _fill(stubs, other_install, 2)
    foreign = (await list_call(stubs, other_install, 1)).next_page_token
    assert foreign
    failure = await rpc_failure(list_call(stubs, install, 1, foreign))
    assert_invalid(failure, {"page_token": "PAGE_INVALID"})


async def test_list_reports_bad_page_size_and_bad_page_token_together(
    stubs: Stubs, shared_install: InstallHandle
) -> None:
    failure = await rpc_failure(list_call(stubs, shared_install, -1, "garbage"))
    assert_invalid(failure, {"page_size": "PAGE_INVALID", "page_token": "PAGE_INVALID"})


async def test_admin_list_runs_rejects_negative_page_size_and_garbage_token(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install)
    for request, violations in (
        (
            admin_pb.ListScheduleRunsRequest(
                install_id=install.install_id, schedule_id=created.id, page_size=-1
            ),
            {"page_size": "PAGE_INVALID"},
        ),
        (
            admin_pb.ListScheduleRunsRequest(
                install_id=install.install_id, schedule_id=created.id, page_token="garbage"
            ),
            {"page_token": "PAGE_INVALID"},
        ),
    ):
        failure = await rpc_failure(
            stubs.admin.ListScheduleRuns(request, metadata=admin_metadata())
        )
        assert_invalid(failure, violations)


async def test_admin_list_runs_reports_every_bad_field_together(stubs: Stubs) -> None:
    failure = await rpc_failure(
        stubs.admin.ListScheduleRuns(
            admin_pb.ListScheduleRunsRequest(
                install_id="nope", schedule_id="nope", page_size=-1, page_token="garbage"
            ),
            metadata=admin_metadata(),
        )
    )
    assert_invalid(
        failure,
        {
            "install_id": "ID_INVALID",
            "schedule_id": "ID_INVALID",
            "page_size": "PAGE_INVALID",
            "page_token": "PAGE_INVALID",
        },
    )


# --------------------------------------------------------------------------------------------
# update_mask


@pytest.mark.parametrize(
    "paths",
    [
        ["id"],
        ["etag"],
        ["next_run_time"],
        ["bogus"],
        ["create_time"],
        ["update_time"],
        ["last_error"],
        ["endpoint_id"],
        ["cron", "bogus"],
    ],
    ids=lambda p: "+".join(p),
)
async def test_update_mask_with_non_updatable_path_is_invalid(
    stubs: Stubs, install: InstallHandle, paths: list[str]
) -> None:
    created = await create(stubs, install, cron="0 * * * *")
    failure = await rpc_failure(
        update_call(
            stubs,
            install,
            schedule_pb2.Schedule(id=created.id, cron="0 0 * * *", etag=created.etag),
            paths,
        )
    )
    assert_invalid(failure, {"update_mask": "UPDATE_MASK_INVALID"})
    assert await get(stubs, install, created.id) == created


@pytest.mark.parametrize("path", ["endpoint", "cron", "timezone", "enabled", "name", "payload"])
async def test_update_mask_accepts_every_updatable_field(
    stubs: Stubs, install: InstallHandle, path: str
) -> None:
    created = await create(stubs, install, name="before")
    change = schedule_pb2.Schedule(
        id=created.id,
        endpoint="GET /status",
        cron="0 0 * * *",
        timezone="America/New_York",
        enabled=False,
        name="after",
        payload=json_value({"after": True}),
    )
    updated = (await update_call(stubs, install, change, [path])).schedule
    assert updated.etag != created.etag


# --------------------------------------------------------------------------------------------
# several violations in one request; a refused request changes nothing


async def test_create_reports_every_bad_field_together(
    stubs: Stubs, install: InstallHandle
) -> None:
    call = create_call(
        stubs,
        install,
        request_id="not-a-uuid",
        cron="61 * * * *",
        timezone="Not/AZone",
        name="a\x00b",
        payload=struct_pb2.Value(string_value="text"),
    )
    violations = await raw_violations(call)
    assert sorted(violations) == [
        ("request_id", "ID_INVALID"),
        ("schedule.cron", "CRON_INVALID"),
        ("schedule.name", "NAME_INVALID"),
        ("schedule.payload", "PAYLOAD_INVALID"),
        ("schedule.timezone", "TIMEZONE_INVALID"),
    ]
    failure = await rpc_failure(
        create_call(
            stubs,
            install,
            endpoint="",
            cron="*/4 * * * *",
            timezone="+05:00",
            name="x" * 129,
            payload=_string_payload(MAX_PAYLOAD_BYTES),
        )
    )
    assert_invalid(
        failure,
        {
            "schedule.endpoint": "ENDPOINT_NOT_FOUND",
            "schedule.cron": "CRON_TOO_FREQUENT",
            "schedule.timezone": "TIMEZONE_INVALID",
            "schedule.name": "NAME_INVALID",
            "schedule.payload": "PAYLOAD_TOO_LARGE",
        },
    )
    listed = await list_all(stubs, install)
    assert list(listed.schedules) == []
    assert listed.total_size == 0


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("/nope", "ENDPOINT_NOT_FOUND"),
        ("PUT /items", "ENDPOINT_NOT_SCHEDULABLE"),
        ("/report", "ENDPOINT_AMBIGUOUS"),
    ],
)
async def test_create_reports_endpoint_resolution_with_the_other_violations(
    stubs: Stubs, shared_install: InstallHandle, endpoint: str, reason: str
) -> None:
    failure = await rpc_failure(
        create_call(stubs, shared_install, endpoint=endpoint, cron="bad", name="a\nb")
    )
    assert_invalid(
        failure,
        {
            "schedule.endpoint": reason,
            "schedule.cron": "CRON_INVALID",
            "schedule.name": "NAME_INVALID",
        },
    )


async def test_update_reports_every_bad_field_together(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install)
    failure = await rpc_failure(
        update_call(
            stubs,
            install,
            schedule_pb2.Schedule(id="nope", cron="bad", timezone="UTC+5", name="\u200b"),
            ["bogus", "cron", "timezone", "name"],
        )
    )
    assert_invalid(
        failure,
        {
            "schedule.id": "ID_INVALID",
            "update_mask": "UPDATE_MASK_INVALID",
            "schedule.cron": "CRON_INVALID",
            "schedule.timezone": "TIMEZONE_INVALID",
            "schedule.name": "NAME_INVALID",
        },
    )
    assert await get(stubs, install, created.id) == created


async def test_update_reports_endpoint_resolution_with_the_other_violations(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install)
    failure = await rpc_failure(
        update_call(
            stubs,
            install,
            schedule_pb2.Schedule(id=created.id, endpoint="PUT /items", cron="bad"),
            ["endpoint", "cron"],
        )
    )
    assert_invalid(
        failure, {"schedule.endpoint": "ENDPOINT_NOT_SCHEDULABLE", "schedule.cron": "CRON_INVALID"}
    )
    assert await get(stubs, install, created.id) == created


# --------------------------------------------------------------------------------------------
# output fields sent on input are ignored


async def test_output_fields_on_create_are_ignored(stubs: Stubs, install: InstallHandle) -> None:
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    sent_id = str(uuid.uuid4())
    created = await create(
        stubs,
        install,
        id=sent_id,
        etag="bogus-etag",
        endpoint_id="not-a-uuid",
        next_run_time=ts(long_ago),
        last_run_time=ts(long_ago),
        last_run_status=schedule_pb2.RUN_STATUS_ERROR,
        last_error="boom",
        create_time=ts(long_ago),
        update_time=ts(long_ago),
    )
    assert created.id != sent_id
    assert uuid.UUID(created.id)
    assert created.etag != "bogus-etag"
    assert uuid.UUID(created.endpoint_id)
    assert created.last_error == ""
    assert not created.HasField("last_run_time")
    assert created.last_run_status == schedule_pb2.RUN_STATUS_UNSPECIFIED
    now = datetime.now(UTC)
    assert created.create_time.ToDatetime(tzinfo=UTC) > now - timedelta(minutes=5)
    assert created.update_time.ToDatetime(tzinfo=UTC) > now - timedelta(minutes=5)
    assert created.next_run_time.ToDatetime(tzinfo=UTC) > now - timedelta(minutes=1)
    assert await get(stubs, install, created.id) == created
    gone = await rpc_failure(
        stubs.host.GetSchedule(pb.GetScheduleRequest(id=sent_id), metadata=install.metadata)
    )
    assert gone.code == grpc.StatusCode.NOT_FOUND


async def test_output_fields_on_update_are_ignored(stubs: Stubs, install: InstallHandle) -> None:
    created = await create(stubs, install, name="n", cron="0 * * * *")
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    change = schedule_pb2.Schedule(
        id=created.id,
        cron="0 0 * * *",
        endpoint_id="not-a-uuid",
        next_run_time=ts(long_ago),
        last_run_time=ts(long_ago),
        last_run_status=schedule_pb2.RUN_STATUS_ERROR,
        last_error="boom",
        create_time=ts(long_ago),
        update_time=ts(long_ago),
    )
    updated = (await update_call(stubs, install, change)).schedule
    assert updated.cron == "0 0 * * *"
    assert updated.name == "n"
    assert updated.endpoint_id == created.endpoint_id
    assert updated.create_time == created.create_time
    assert updated.last_error == ""
    assert not updated.HasField("last_run_time")
    assert updated.next_run_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - timedelta(minutes=1)


async def test_read_modify_write_of_a_whole_schedule_is_accepted(
    stubs: Stubs, install: InstallHandle
) -> None:
    created = await create(stubs, install, name="rmw", payload=json_value({"a": 1}))
    echoed = schedule_pb2.Schedule()
    echoed.CopyFrom(created)
    echoed.cron = "0 0 * * *"
    updated = (await update_call(stubs, install, echoed)).schedule
    assert updated.cron == "0 0 * * *"
    assert (updated.endpoint, updated.name, updated.payload) == (
        created.endpoint,
        created.name,
        created.payload,
    )


# --------------------------------------------------------------------------------------------
# §5: NOT_FOUND, malformed bytes, size limit, no leaks


async def test_unknown_schedule_is_not_found_with_resource_info(
    stubs: Stubs, install: InstallHandle, other_install: InstallHandle
) -> None:
    theirs = await create(stubs, other_install)
    for missing in (str(uuid.uuid4()), theirs.id):
        calls: list[Awaitable[Any]] = [
            stubs.host.GetSchedule(pb.GetScheduleRequest(id=missing), metadata=install.metadata),
            stubs.host.DeleteSchedule(
                pb.DeleteScheduleRequest(id=missing), metadata=install.metadata
            ),
            update_call(stubs, install, schedule_pb2.Schedule(id=missing, cron="0 0 * * *")),
        ]
        for call in calls:
            failure = await rpc_failure(call)
            assert failure.code == grpc.StatusCode.NOT_FOUND, failure
            assert failure.reason == "SCHEDULE_NOT_FOUND"
            assert failure.domain == DOMAIN
            assert failure.resource == ("schedule", missing)
            assert failure.violations == {}
    # The other install's schedule is untouched.
    assert await get(stubs, other_install, theirs.id) == theirs


async def test_unknown_install_is_not_found_with_resource_info(stubs: Stubs) -> None:
    missing = str(uuid.uuid4())
    calls: list[Awaitable[Any]] = [
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=missing), metadata=admin_metadata()
        ),
        stubs.admin.DeleteInstall(
            admin_pb.DeleteInstallRequest(install_id=missing), metadata=admin_metadata()
        ),
        stubs.host.ListSchedules(
            pb.ListSchedulesRequest(),
            metadata=(("x-runner-auth", RUNNER_TOKEN), ("x-install-id", missing)),
        ),
    ]
    for call in calls:
        failure = await rpc_failure(call)
        assert failure.code == grpc.StatusCode.NOT_FOUND, failure
        assert failure.reason == "INSTALL_NOT_FOUND"
        assert failure.domain == DOMAIN
        assert failure.resource == ("install", missing)


async def test_list_runs_of_unknown_schedule_is_not_found(
    stubs: Stubs, install: InstallHandle
) -> None:
    missing = str(uuid.uuid4())
    failure = await rpc_failure(
        stubs.admin.ListScheduleRuns(
            admin_pb.ListScheduleRunsRequest(install_id=install.install_id, schedule_id=missing),
            metadata=admin_metadata(),
        )
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND, failure
    assert failure.reason == "SCHEDULE_NOT_FOUND"
    assert failure.resource == ("schedule", missing)


MALFORMED_BYTES = [
    pytest.param(b"\xff\xff\xff", id="corrupt-varint"),
    pytest.param(b"\x0a\x05ab", id="truncated-string"),
    pytest.param(b"\x0a\x02\xc3\x28", id="bad-utf8-in-string"),
]


@pytest.mark.parametrize("data", MALFORMED_BYTES)
@pytest.mark.parametrize(
    "method",
    [
        "GetSchedule",
        "CreateSchedule",
        "UpdateSchedule",
        "DeleteSchedule",
        "ListSchedules",
        "PreviewSchedule",
    ],
)
async def test_request_bytes_that_do_not_decode_are_malformed_request(
    stubs: Stubs, shared_install: InstallHandle, method: str, data: bytes
) -> None:
    if method == "ListSchedules" and data != b"\xff\xff\xff":
        # Field 1 of ListSchedulesRequest is an int: only the corrupt bytes are corrupt there.
        data = b"\x12\x02\xc3\x28"
    call = stubs.channel.unary_unary(
        HOST_METHOD + method,
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    failure = await rpc_failure(call(data, metadata=shared_install.metadata))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.reason == "MALFORMED_REQUEST"
    assert failure.domain == DOMAIN
    assert "Traceback" not in failure.message
    assert "Error parsing" not in failure.message


@pytest.mark.parametrize("method", ["GetInstall", "UpsertInstall", "ListScheduleRuns"])
async def test_admin_request_bytes_that_do_not_decode_are_malformed_request(
    stubs: Stubs, method: str
) -> None:
    call = stubs.channel.unary_unary(
        ADMIN_METHOD + method,
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    failure = await rpc_failure(call(b"\xff\xff\xff", metadata=admin_metadata()))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.reason == "MALFORMED_REQUEST"
    assert failure.domain == DOMAIN


async def test_request_over_the_size_limit_is_resource_exhausted(
    stubs: Stubs, install: InstallHandle
) -> None:
    failure = await rpc_failure(create_call(stubs, install, name="n" * (2 * 1024 * 1024)))
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED, failure
    huge_payload = json_value({"d": "x" * (1024 * 1024 + 1)})
    failure = await rpc_failure(create_call(stubs, install, payload=huge_payload))
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED, failure
    # The channel and the server are fine afterwards, and nothing was created.
    assert (await list_all(stubs, install)).total_size == 0
    assert (await create(stubs, install)).id


FORBIDDEN_IN_MESSAGES = (
    "Traceback",
    "SELECT",
    "INSERT",
    "sqlalchemy",
    "asyncpg",
    'File "',
    RUNNER_TOKEN,
    SECOND_RUNNER_TOKEN,
    ADMIN_TOKEN,
)


async def test_error_messages_never_carry_internals_or_tokens(
    stubs: Stubs, install: InstallHandle
) -> None:
    wrong_token = "leaky-wrong-token-0f9e8d"
    created = await create(stubs, install, name="taken")
    raw_get = stubs.channel.unary_unary(
        HOST_METHOD + "GetSchedule",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    calls: list[Awaitable[Any]] = [
        create_call(stubs, install, cron="bad", timezone="../../etc/passwd", name="a\x00b"),
        create_call(stubs, install, name="taken"),
        create_call(stubs, install, endpoint="PUT /items"),
        create_call(stubs, install, payload=json_value({"s": "a\x00b"}), name="nul-payload"),
        stubs.host.GetSchedule(
            pb.GetScheduleRequest(id=str(uuid.uuid4())), metadata=install.metadata
        ),
        stubs.host.GetSchedule(
            pb.GetScheduleRequest(id="'; DROP TABLE schedules; --"), metadata=install.metadata
        ),
        update_call(stubs, install, schedule_pb2.Schedule(id=created.id), ["bogus"]),
        update_call(stubs, install, schedule_pb2.Schedule(id=created.id, etag="stale"), ["cron"]),
        list_call(stubs, install, 1, "garbage"),
        raw_get(b"\xff\xff\xff", metadata=install.metadata),
        stubs.host.GetSchedule(
            pb.GetScheduleRequest(id=created.id),
            metadata=(("x-runner-auth", wrong_token), ("x-install-id", install.install_id)),
        ),
        stubs.host.GetSchedule(
            pb.GetScheduleRequest(id=created.id), metadata=(("x-install-id", install.install_id),)
        ),
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=install.install_id),
            metadata=admin_metadata(RUNNER_TOKEN),
        ),
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=install.install_id),
            metadata=admin_metadata(wrong_token),
        ),
    ]
    for call in calls:
        failure = await rpc_failure(call)
        assert failure.code != grpc.StatusCode.UNKNOWN, failure
        assert failure.domain == DOMAIN, failure
        assert failure.reason, failure
        texts = [failure.message, *failure.descriptions.values()]
        for text in texts:
            for forbidden in (*FORBIDDEN_IN_MESSAGES, wrong_token):
                assert forbidden not in text, (forbidden, failure)


async def test_missing_and_wrong_tokens_are_unauthenticated(
    stubs: Stubs, install: InstallHandle
) -> None:
    missing = await rpc_failure(
        stubs.host.ListSchedules(
            pb.ListSchedulesRequest(), metadata=(("x-install-id", install.install_id),)
        )
    )
    assert missing.code == grpc.StatusCode.UNAUTHENTICATED
    assert (missing.reason, missing.domain) == ("MISSING_CREDENTIALS", DOMAIN)
    wrong = await rpc_failure(
        stubs.host.ListSchedules(
            pb.ListSchedulesRequest(),
            metadata=(("x-runner-auth", "nope"), ("x-install-id", install.install_id)),
        )
    )
    assert wrong.code == grpc.StatusCode.UNAUTHENTICATED
    assert (wrong.reason, wrong.domain) == ("INVALID_TOKEN", DOMAIN)
