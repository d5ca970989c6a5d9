"""The message builders agree with protobuf's own (slower) conversions."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st
from schedulerhost.v1 import schedule_pb2

from scheduler_host.transport import messages
from tests.support.storage import make_install, make_schedule

_aware_times = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=13))]),
)

# JSON as stored payloads hold it: integral numbers are ints within 2**53, no NaN or infinity.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(_aware_times)
def test_set_time_matches_from_datetime(value: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value.astimezone(UTC))
    assert messages.timestamp(value) == expected


def test_set_time_before_the_epoch_rounds_toward_the_past() -> None:
    ts = messages.timestamp(datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC))
    assert (ts.seconds, ts.nanos) == (-1, 500_000_000)


def _value(payload: object) -> struct_pb2.Value:
    value = struct_pb2.Value()
    messages.set_payload(value, payload)
    return value


@given(_json)
def test_set_payload_matches_the_json_text_round_trip(payload: object) -> None:
    expected = struct_pb2.Value()
    json_format.Parse(json.dumps(payload), expected)
    assert _value(payload) == expected


@given(_json.filter(lambda p: p is not None))
def test_a_payload_survives_the_message_and_back(payload: object) -> None:
    back, violation = messages.payload_from_value(_value(payload), "payload")
    assert violation is None
    assert back == payload or json.dumps(back) == json.dumps(payload)


@given(
    st.recursive(
        _scalars | st.sampled_from([math.nan, math.inf, -math.inf, 2.0**53, -(2.0**60), 3.0]),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_a_payload_reads_as_protobuf_json_format_reads_it(payload: object) -> None:
    """The direct walk agrees with json_format.MessageToDict, integers given back their form,
    and a NaN or infinity anywhere makes the payload invalid."""
    value = struct_pb2.Value()
    messages.set_payload(value, payload)
    back, violation = messages.payload_from_value(value, "payload")
    try:
        expected = json_format.MessageToDict(value)
    except ValueError:
        assert back is None
        assert violation is not None
        assert (violation.reason, violation.description) == (
            "PAYLOAD_INVALID",
            "payload is not valid JSON",
        )
        return
    assert violation is None
    assert json.dumps(back) == json.dumps(_integral(expected))


def _integral(value: object) -> object:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def test_a_schedule_read_again_is_the_same_message_and_a_changed_one_is_not_stale() -> None:
    payload = {"n": 1}
    wire = struct_pb2.Value()
    wire.struct_value.update(payload)
    first = replace(
        make_schedule(make_install(), payload=payload),
        payload_wire=wire.SerializeToString(deterministic=True),
    )
    built, again = schedule_pb2.Schedule(), schedule_pb2.Schedule()
    messages.fill_schedule(built, first)
    messages.fill_schedule(again, first)  # from the encoding kept by the first fill
    assert again == built
    assert again.payload.struct_value["n"] == 1
    # A run moves next_run_time and the last run's status without a new revision.
    assert first.next_run_time is not None
    ran = replace(
        first,
        next_run_time=first.next_run_time + timedelta(minutes=5),
        last_run_status="error",
        last_error="boom",
    )
    after = schedule_pb2.Schedule()
    messages.fill_schedule(after, ran)
    assert after.etag == built.etag
    assert after.next_run_time != built.next_run_time
    assert (after.last_run_status, after.last_error) == (schedule_pb2.RUN_STATUS_ERROR, "boom")
