"""Domain rules for endpoint selectors and the schedule's name, time zone, payload and ids."""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_host.domain.endpoints import (
    MAX_SELECTOR_LENGTH,
    Endpoint,
    Selector,
    endpoint_id,
    normalise_path,
    parse_selector,
    resolve_endpoint,
    unschedulable_reason,
)
from scheduler_host.domain.errors import FieldViolation
from scheduler_host.domain.schedule import (
    MAX_NAME_LENGTH,
    MAX_PAYLOAD_BYTES,
    payload_json,
    validate_name,
    validate_payload,
    validate_timezone,
    validate_uuid,
)

INSTALL = uuid.UUID("11111111-2222-4333-8444-555555555555")


def ep(method: str, path: str, version: str = "v1") -> Endpoint:
    return Endpoint(
        endpoint_id(INSTALL, version, method, path), method, path, f"{method.lower()}{path}"
    )


ENDPOINTS = (
    ep("POST", "/sync"),
    ep("GET", "/status"),
    ep("GET", "/report"),
    ep("POST", "/report"),
    ep("PUT", "/items"),
    ep("GET", "/items/{id}"),
    ep("POST", "/users/:id"),
    ep("GET", "/things"),
    ep("PUT", "/things"),
    ep("DELETE", "/things"),
    ep("POST", "/a/b"),
)


def violation(result: object) -> FieldViolation:
    assert isinstance(result, FieldViolation), f"expected a violation, got {result!r}"
    return result


def resolve(text: str, endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> Endpoint | FieldViolation:
    selector = parse_selector(text)
    assert isinstance(selector, Selector), selector
    return resolve_endpoint(selector, endpoints)


# --------------------------------------------------------------------------------------------
# normalise_path / parse_selector
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sync", "/sync"),
        ("/sync", "/sync"),
        ("//a///b", "/a/b"),
        ("a//b/", "/a/b/"),
        ("  /x  ", "/x"),
        ("", "/"),
        ("/", "/"),
        ("////", "/"),
    ],
)
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


PATHS = st.text(alphabet=st.sampled_from("/ab{}:. \t-_%é"), max_size=30) | st.text(max_size=30)


@given(PATHS)
def test_normalise_path_is_idempotent(raw: str) -> None:
    once = normalise_path(raw)
    assert normalise_path(once) == once


@given(PATHS)
def test_normalised_paths_start_with_one_slash_and_have_no_repeated_slashes(raw: str) -> None:
    path = normalise_path(raw)
    assert path.startswith("/")
    assert "//" not in path


@pytest.mark.parametrize(
    ("text", "method", "path"),
    [
        ("sync", "", "/sync"),
        ("/sync", "", "/sync"),
        ("//a///b", "", "/a/b"),
        ("post /x", "POST", "/x"),
        ("Post //x//y", "POST", "/x/y"),
        ("GET    /status", "GET", "/status"),
        ("  POST /sync  ", "POST", "/sync"),
    ],
)
def test_parse_selector(text: str, method: str, path: str) -> None:
    assert parse_selector(text) == Selector(method, path)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "/a b",
        "POST! /x",
        "1POST /x",
        "/" + "x" * MAX_SELECTOR_LENGTH,
    ],
)
def test_parse_selector_refuses(text: str) -> None:
    v = violation(parse_selector(text))
    assert v.field == "schedule.endpoint"
    assert v.reason == "ENDPOINT_NOT_FOUND"
    assert v.description


def test_parse_selector_length_bounds_and_field_name() -> None:
    longest = "/" + "x" * (MAX_SELECTOR_LENGTH - 1)
    assert parse_selector(longest) == Selector("", longest)
    v = violation(parse_selector("", field="schedules[0].endpoint"))
    assert v.field == "schedules[0].endpoint"


# --------------------------------------------------------------------------------------------
# resolve_endpoint
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "method", "path"),
    [
        ("sync", "POST", "/sync"),
        ("/sync", "POST", "/sync"),
        ("POST /sync", "POST", "/sync"),
        ("post //sync", "POST", "/sync"),
        ("/status", "GET", "/status"),
        ("GET /report", "GET", "/report"),
        ("POST /report", "POST", "/report"),
        ("a//b", "POST", "/a/b"),
    ],
)
def test_resolve_finds_the_endpoint(text: str, method: str, path: str) -> None:
    found = resolve(text)
    assert isinstance(found, Endpoint), found
    assert (found.method, found.path) == (method, path)
    assert found.id == endpoint_id(INSTALL, "v1", method, path)
    assert found.selector == f"{method} {path}"


@pytest.mark.parametrize("text", ["/nope", "GET /sync", "DELETE /sync", "/Sync", "/sync/"])
def test_resolve_not_found(text: str) -> None:
    v = violation(resolve(text))
    assert v.reason == "ENDPOINT_NOT_FOUND"
    assert v.field == "schedule.endpoint"


def test_resolve_against_no_endpoints_is_not_found() -> None:
    assert violation(resolve("/sync", ())).reason == "ENDPOINT_NOT_FOUND"


@pytest.mark.parametrize(
    "text",
    ["PUT /items", "/items", "GET /items/{id}", "/items/{id}", "POST /users/:id", "DELETE /things"],
)
def test_resolve_not_schedulable(text: str) -> None:
    v = violation(resolve(text))
    assert v.reason == "ENDPOINT_NOT_SCHEDULABLE"
    assert v.description


def test_a_bare_path_with_get_and_post_is_ambiguous() -> None:
    v = violation(resolve("/report"))
    assert v.reason == "ENDPOINT_AMBIGUOUS"
    assert "GET" in v.description
    assert "POST" in v.description


def test_a_bare_path_with_get_and_unschedulable_methods_picks_get() -> None:
    found = resolve("/things")
    assert isinstance(found, Endpoint)
    assert found.method == "GET"
    # The order in which the endpoints are listed makes no difference.
    assert resolve("/things", tuple(reversed(ENDPOINTS))) == found


def test_the_field_name_is_carried_into_the_violation() -> None:
    v = resolve_endpoint(Selector("", "/nope"), ENDPOINTS, "schedule.endpoint_x")
    assert violation(v).field == "schedule.endpoint_x"


@pytest.mark.parametrize(
    ("method", "path", "schedulable"),
    [
        ("GET", "/a", True),
        ("POST", "/a", True),
        ("PUT", "/a", False),
        ("PATCH", "/a", False),
        ("DELETE", "/a", False),
        ("GET", "/a/{id}", False),
        ("GET", "/a/:id", False),
        ("GET", "/a/}", False),
    ],
)
def test_unschedulable_reason(method: str, path: str, schedulable: bool) -> None:
    assert (unschedulable_reason(method, path) == "") == schedulable


METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])
SHORT_PATHS = st.sampled_from(["/a", "/b", "/a/b", "/a/{id}", "/a/:id", "/c}", "/"])
ENDPOINT_SETS = st.lists(st.tuples(METHODS, SHORT_PATHS), unique=True, max_size=12).map(
    lambda pairs: tuple(ep(m, p) for m, p in pairs)
)
SELECTOR_TEXTS = st.one_of(
    SHORT_PATHS,
    st.tuples(METHODS, SHORT_PATHS).map(" ".join),
    st.tuples(st.sampled_from(["get", "Post", "put"]), SHORT_PATHS).map(" ".join),
    st.text(alphabet=st.sampled_from("/ab{}: GETPOS"), min_size=1, max_size=12),
)


@given(ENDPOINT_SETS, SELECTOR_TEXTS, st.randoms(use_true_random=False))
def test_resolved_endpoints_are_always_schedulable_and_match(
    endpoints: tuple[Endpoint, ...], text: str, rnd: random.Random
) -> None:
    selector = parse_selector(text)
    if isinstance(selector, FieldViolation):
        return
    result = resolve_endpoint(selector, endpoints)
    shuffled = list(endpoints)
    rnd.shuffle(shuffled)
    again = resolve_endpoint(selector, shuffled)
    # The outcome must not depend on the order of the endpoints (only a message may word it
    # differently).
    if isinstance(result, FieldViolation):
        assert isinstance(again, FieldViolation)
        assert (again.field, again.reason) == (result.field, result.reason)
    else:
        assert again == result
    if isinstance(result, FieldViolation):
        assert result.reason in {
            "ENDPOINT_NOT_FOUND",
            "ENDPOINT_NOT_SCHEDULABLE",
            "ENDPOINT_AMBIGUOUS",
        }
        return
    assert result in endpoints
    assert unschedulable_reason(result.method, result.path) == ""
    assert result.method in {"GET", "POST"}
    assert not set(result.path) & set(":{}")
    assert result.path == selector.path
    assert selector.method in ("", result.method)


# --------------------------------------------------------------------------------------------
# endpoint_id
# --------------------------------------------------------------------------------------------


def test_endpoint_id_is_stable() -> None:
    first = endpoint_id(INSTALL, "v1", "POST", "/sync")
    assert first == endpoint_id(uuid.UUID(str(INSTALL)), "v1", "POST", "/sync")
    assert isinstance(first, uuid.UUID)
    assert first.version == 5


def test_endpoint_id_differs_per_install_version_method_and_path() -> None:
    other_install = uuid.UUID("99999999-2222-4333-8444-555555555555")
    ids = {
        endpoint_id(INSTALL, "v1", "POST", "/sync"),
        endpoint_id(other_install, "v1", "POST", "/sync"),
        endpoint_id(INSTALL, "v2", "POST", "/sync"),
        endpoint_id(INSTALL, "v1", "GET", "/sync"),
        endpoint_id(INSTALL, "v1", "POST", "/sync2"),
        # Field boundaries cannot be shifted to produce the same id.
        endpoint_id(INSTALL, "v1P", "OST", "/sync"),
    }
    assert len(ids) == 6


@given(
    st.uuids(),
    st.text(max_size=10),
    METHODS,
    st.text(max_size=20),
    st.uuids(),
    st.text(max_size=10),
    METHODS,
    st.text(max_size=20),
)
def test_endpoint_ids_are_equal_exactly_when_their_keys_are(
    i1: uuid.UUID,
    v1: str,
    m1: str,
    p1: str,
    i2: uuid.UUID,
    v2: str,
    m2: str,
    p2: str,
) -> None:
    same_key = (i1, v1, m1, p1) == (i2, v2, m2, p2)
    if "\n" in v1 + v2 + p1 + p2:
        return  # the separator itself; not a value an install can register as a version
    assert (endpoint_id(i1, v1, m1, p1) == endpoint_id(i2, v2, m2, p2)) == same_key


# --------------------------------------------------------------------------------------------
# validate_name
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nightly", "nightly"),
        ("  nightly sync  ", "nightly sync"),
        ("Zeitplan für Berlin 🚀", "Zeitplan für Berlin 🚀"),
        ("x" * MAX_NAME_LENGTH, "x" * MAX_NAME_LENGTH),
        ("  " + "x" * MAX_NAME_LENGTH + "  ", "x" * MAX_NAME_LENGTH),
        ("", None),
        ("   ", None),
        ("\t\n ", None),
    ],
)
def test_valid_names(raw: str, expected: str | None) -> None:
    assert validate_name(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "x" * (MAX_NAME_LENGTH + 1),
        "a\x00b",
        "a\nb",
        "a\tb",
        "a\x1bb",
        "a\u200bb",  # zero-width space
        "a\u202eb",  # right-to-left override
        "a\x7fb",
    ],
)
def test_invalid_names(raw: str) -> None:
    v = violation(validate_name(raw))
    assert (v.field, v.reason) == ("schedule.name", "NAME_INVALID")


def test_name_length_counts_characters_not_bytes() -> None:
    assert validate_name("é" * MAX_NAME_LENGTH) == "é" * MAX_NAME_LENGTH


# --------------------------------------------------------------------------------------------
# validate_timezone
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "UTC"),
        ("   ", "UTC"),
        ("UTC", "UTC"),
        ("Europe/Berlin", "Europe/Berlin"),
        ("  America/New_York ", "America/New_York"),
        ("Asia/Kolkata", "Asia/Kolkata"),
        ("America/Argentina/Buenos_Aires", "America/Argentina/Buenos_Aires"),
        ("Etc/GMT+5", "Etc/GMT+5"),
    ],
)
def test_valid_timezones(raw: str, expected: str) -> None:
    assert validate_timezone(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "../../../../etc/passwd",
        "/usr/share/zoneinfo/Europe/Berlin",
        "/etc/localtime",
        "Europe/../Europe/Berlin",
        "./UTC",
        "Europe//Berlin",
        "Europe/Berlin/",
        "posix/Europe/Berlin",
        "right/UTC",
        "localtime",
        "+05:00",
        "-03:30",
        "UTC+5",
        "GMT+05:00",
        "Mars/Olympus_Mons",
        "europe/berlin",
        "Europe/Berlin\x00",
        "Europe/" + "x" * 60,
        "A" * 65,
    ],
)
def test_invalid_timezones(raw: str) -> None:
    v = violation(validate_timezone(raw))
    assert (v.field, v.reason) == ("schedule.timezone", "TIMEZONE_INVALID")
    assert len(v.description) < 200, "a long input is not echoed in full"


def test_timezone_field_name() -> None:
    v = violation(validate_timezone("nowhere", "preview.timezone"))
    assert v.field == "preview.timezone"


# --------------------------------------------------------------------------------------------
# validate_payload
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [None, {}, [], {"full": True, "n": 3, "nested": {"a": [1, 2.5, None]}}, [1, "two", {}]],
)
def test_valid_payloads(payload: object) -> None:
    assert validate_payload(payload) is None


@pytest.mark.parametrize("payload", ["text", 1, 1.5, True, False, 0])
def test_payloads_that_are_not_objects_or_arrays(payload: object) -> None:
    v = violation(validate_payload(payload))
    assert (v.field, v.reason) == ("schedule.payload", "PAYLOAD_INVALID")


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_payloads_with_numbers_json_cannot_carry(number: float) -> None:
    assert violation(validate_payload({"x": number})).reason == "PAYLOAD_INVALID"


def test_payload_size_limit_is_on_compact_json_bytes() -> None:
    overhead = len(payload_json({"k": ""}) or "")
    exact = {"k": "x" * (MAX_PAYLOAD_BYTES - overhead)}
    assert len((payload_json(exact) or "").encode()) == MAX_PAYLOAD_BYTES
    assert validate_payload(exact) is None

    over = {"k": "x" * (MAX_PAYLOAD_BYTES - overhead + 1)}
    v = violation(validate_payload(over))
    assert (v.field, v.reason) == ("schedule.payload", "PAYLOAD_TOO_LARGE")


def test_payload_size_counts_utf8_bytes_not_characters() -> None:
    # 50,000 "é" are 50,008 characters of compact JSON but 100,008 bytes.
    payload = {"k": "é" * 50_000}
    assert len(payload_json(payload) or "") < MAX_PAYLOAD_BYTES
    assert violation(validate_payload(payload)).reason == "PAYLOAD_TOO_LARGE"


def test_payload_size_ignores_formatting() -> None:
    # Compact form: no spaces after separators, so a big list of small items still fits.
    payload = list(range(18_000))
    assert len(", ".join(map(str, payload))) > MAX_PAYLOAD_BYTES
    assert validate_payload(payload) is None


# --------------------------------------------------------------------------------------------
# validate_uuid
# --------------------------------------------------------------------------------------------

SAMPLE = uuid.UUID("7d444840-9dc0-11d1-b245-5ffdce74fad2")


@pytest.mark.parametrize(
    "raw",
    [
        str(SAMPLE),
        str(SAMPLE).upper(),
        f"  {SAMPLE}  ",
        SAMPLE.hex,
    ],
)
def test_valid_uuids(raw: str) -> None:
    assert validate_uuid(raw, "id") == SAMPLE


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "not-a-uuid",
        f"{{{SAMPLE}}}",
        f"urn:uuid:{SAMPLE}",
        f"URN:UUID:{SAMPLE}",
        str(SAMPLE)[:-1],
        str(SAMPLE) + "0",
        str(SAMPLE).replace("-", "", 1),
        "7d444840-9dc0-11d1-b245-5ffdce74fad2\x00",
        # 36 characters that uuid.UUID parses (it drops every hyphen), yet not canonical.
        "7d4448409-dc0-11d1-b245-5ffdce74fad2",
    ],
)
def test_invalid_uuids(raw: str) -> None:
    v = violation(validate_uuid(raw, "schedule_id"))
    assert (v.field, v.reason) == ("schedule_id", "ID_INVALID")


@given(st.uuids())
def test_every_canonical_uuid_is_accepted(value: uuid.UUID) -> None:
    assert validate_uuid(str(value), "id") == value
    assert violation(validate_uuid("{" + str(value) + "}", "id")).reason == "ID_INVALID"
    assert violation(validate_uuid("urn:uuid:" + str(value), "id")).reason == "ID_INVALID"
