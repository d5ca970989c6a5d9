"""The Schedule value and the field rules for its name, time zone and payload."""

from __future__ import annotations

import importlib.resources
import json
import unicodedata
import uuid
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from scheduler_host.domain.errors import FieldViolation

MAX_NAME_LENGTH = 128
MAX_TIMEZONE_LENGTH = 64
MAX_PAYLOAD_BYTES = 100_000
MAX_LAST_ERROR_LENGTH = 4_000
DEFAULT_TIMEZONE = "UTC"

# JSON as decoded by json.loads: what a payload is once it has passed validation.
Json = Any


@dataclass(frozen=True)
class Schedule:
    """A schedule as stored. `cron` is empty for a one-time schedule, which has `run_at`."""

    id: uuid.UUID
    install_id: uuid.UUID
    tenant_id: str
    endpoint_id: uuid.UUID
    endpoint_method: str
    endpoint_path: str
    name: str | None
    cron: str
    timezone: str
    enabled: bool
    payload: Json | None
    next_run_time: datetime | None
    last_run_time: datetime | None
    last_run_status: str | None  # "success" | "error" | "skipped"
    last_error: str | None
    create_time: datetime
    update_time: datetime
    revision: int
    run_at: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    jitter: timedelta = timedelta(0)
    # The payload in the API's wire encoding, kept beside it so a read need not rebuild it; None
    # when not known (the transport then encodes `payload`). Not part of the value's identity.
    payload_wire: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.endpoint_method} {self.endpoint_path}"

    @property
    def etag(self) -> str:
        # Revisions count changes of the schedule's definition; the id keeps etags of different
        # schedules apart.
        return f"{self.revision}-{self.id.hex[:8]}"


def validate_name(raw: str, field: str = "schedule.name") -> str | FieldViolation | None:
    """Trimmed; empty means unset; at most 128 characters; no control characters."""
    name = raw.strip()
    if not name:
        return None
    if len(name) > MAX_NAME_LENGTH:
        return FieldViolation(
            field, "NAME_INVALID", f"name is {len(name)} characters; at most {MAX_NAME_LENGTH}"
        )
    if any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn"} for c in name):
        return FieldViolation(
            field, "NAME_INVALID", "name contains control or invisible characters"
        )
    return name


@lru_cache(maxsize=1024)
def _known_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


@lru_cache(maxsize=1)
def _iana_zones() -> frozenset[str]:
    """Zone names of the tz database as shipped by the tzdata package.

    The system's zoneinfo directory also holds `localtime`, `posixrules` and the like, which name
    host-dependent files, not zones; the package's list has only real names."""
    listing = importlib.resources.files("tzdata").joinpath("zones").read_text()
    return frozenset(line.strip() for line in listing.splitlines() if line.strip())


def validate_timezone(raw: str, field: str = "schedule.timezone") -> str | FieldViolation:
    """An IANA name from the tz database; file paths and numeric offsets are refused."""
    name = raw.strip() or DEFAULT_TIMEZONE
    if len(name) > MAX_TIMEZONE_LENGTH:
        return FieldViolation(field, "TIMEZONE_INVALID", "time zone is longer than 64 characters")
    # Only names listed by the tz database count: ZoneInfo alone would accept odd spellings
    # of paths relative to the zone directory.
    if name not in _iana_zones() or not _known_zone(name):
        return FieldViolation(
            field,
            "TIMEZONE_INVALID",
            f"{name[:64]!r} is not an IANA time zone such as Europe/Berlin",
        )
    return name


def payload_json(payload: Json | None) -> str | None:
    """Compact JSON text of a payload: the form whose size is limited and that is sent."""
    if payload is None:
        return None
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def validate_payload(
    payload: Json | None, field: str = "schedule.payload"
) -> FieldViolation | None:
    """Unset, or a JSON object or array whose compact form is at most 100,000 bytes."""
    if payload is None:
        return None
    if not isinstance(payload, dict | list):
        return FieldViolation(field, "PAYLOAD_INVALID", "payload must be a JSON object or array")
    if _has_nul(payload):
        # PostgreSQL cannot store U+0000 in JSON; refusing it beats storing something else.
        return FieldViolation(field, "PAYLOAD_INVALID", "payload strings may not contain U+0000")
    try:
        text = payload_json(payload)
    except ValueError:
        return FieldViolation(field, "PAYLOAD_INVALID", "payload holds a number JSON cannot carry")
    size = len((text or "").encode())
    if size > MAX_PAYLOAD_BYTES:
        return FieldViolation(
            field,
            "PAYLOAD_TOO_LARGE",
            f"payload is {size} bytes as compact JSON; at most {MAX_PAYLOAD_BYTES}",
        )
    return None


_CANONICAL_LENGTHS = (32, 36)


def validate_uuid(raw: str, field: str) -> uuid.UUID | FieldViolation:
    try:
        text = raw.strip()
    except AttributeError:
        text = ""
    # Only the 32 and 36 character forms can be canonical; nothing longer reaches the cache.
    value = _canonical_uuid(text) if len(text) in _CANONICAL_LENGTHS else None
    if value is None:
        return FieldViolation(field, "ID_INVALID", f"{field} must be a UUID")
    return value


# Every call names its install and most name a schedule: the same few ids again and again, and
# parsing one (uuid.UUID is pure Python) cost more than the rest of a read's own checks.
@lru_cache(maxsize=4096)
def _canonical_uuid(text: str) -> uuid.UUID | None:
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    # Only the canonical textual forms; uuid.UUID also accepts braces and "urn:uuid:".
    return value if text.lower() in {str(value), value.hex} else None


def truncate_error(text: str) -> str:
    return text[:MAX_LAST_ERROR_LENGTH]


def _has_nul(value: Json) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
