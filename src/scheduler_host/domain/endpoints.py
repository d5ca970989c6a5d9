"""Endpoint selectors: normalisation, the schedulable rule, and resolution against an install."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from scheduler_host.domain.errors import FieldViolation

MAX_SELECTOR_LENGTH = 256
SCHEDULABLE_METHODS = frozenset({"GET", "POST"})
_PATH_PARAMETER_CHARS = frozenset(":{}")
_METHOD = re.compile(r"^[A-Za-z]+$")
# Endpoint ids are derived, so they are stable for an (install, version, method, path) without a
# lookup, and identical in every process.
_ENDPOINT_NAMESPACE = uuid.UUID("5d0a3c3e-6f1b-4d59-9a59-3a3c6e1e2b71")


@dataclass(frozen=True)
class Endpoint:
    id: uuid.UUID
    method: str
    path: str
    handler: str

    @property
    def selector(self) -> str:
        return f"{self.method} {self.path}"


def endpoint_id(install_id: uuid.UUID, version_id: str, method: str, path: str) -> uuid.UUID:
    return uuid.uuid5(_ENDPOINT_NAMESPACE, f"{install_id}\n{version_id}\n{method}\n{path}")


def normalise_path(path: str) -> str:
    """Leading "/" added, runs of "/" collapsed; nothing else changes."""
    return "/" + re.sub(r"/+", "/", path.strip()).lstrip("/")


def normalise_method(method: str) -> str:
    return method.strip().upper()


def unschedulable_reason(method: str, path: str) -> str:
    """Why a schedule may not call this endpoint; empty when it may."""
    if method not in SCHEDULABLE_METHODS:
        return f"method {method} is not schedulable; only GET and POST are"
    if any(c in _PATH_PARAMETER_CHARS for c in path):
        return "path has parameters (':', '{' or '}'); a schedule cannot fill them"
    return ""


@dataclass(frozen=True)
class Selector:
    """A parsed `endpoint` input: method is empty for a bare path."""

    method: str
    path: str


def parse_selector(text: str, field: str = "schedule.endpoint") -> Selector | FieldViolation:
    raw = text.strip()
    if not raw or len(raw) > MAX_SELECTOR_LENGTH:
        return FieldViolation(
            field,
            "ENDPOINT_NOT_FOUND",
            "endpoint must be 1-256 characters: 'METHOD /path' or /path",
        )
    method, sep, rest = raw.partition(" ")
    if sep and not rest.strip().startswith("/") and _METHOD.match(method) is None:
        return FieldViolation(field, "ENDPOINT_NOT_FOUND", f"endpoint {raw!r} is not recognised")
    if sep and _METHOD.match(method):
        return Selector(normalise_method(method), normalise_path(rest))
    if any(c.isspace() for c in raw):
        return FieldViolation(field, "ENDPOINT_NOT_FOUND", f"endpoint {raw!r} is not recognised")
    return Selector("", normalise_path(raw))


def resolve_endpoint(
    selector: Selector, endpoints: Iterable[Endpoint], field: str = "schedule.endpoint"
) -> Endpoint | FieldViolation:
    """Find the one endpoint a selector names, or say why none can be scheduled."""
    candidates = [
        e
        for e in endpoints
        if e.path == selector.path and (not selector.method or e.method == selector.method)
    ]
    shown = f"{selector.method} {selector.path}".strip()
    if not candidates:
        return FieldViolation(
            field, "ENDPOINT_NOT_FOUND", f"endpoint {shown} is not part of the installed version"
        )
    schedulable = [e for e in candidates if not unschedulable_reason(e.method, e.path)]
    if len(schedulable) > 1:
        methods = " and ".join(sorted(e.method for e in schedulable))
        return FieldViolation(
            field,
            "ENDPOINT_AMBIGUOUS",
            f"path {selector.path} exists as {methods}; name one, e.g. 'POST {selector.path}'",
        )
    if not schedulable:
        reason = unschedulable_reason(candidates[0].method, candidates[0].path)
        return FieldViolation(field, "ENDPOINT_NOT_SCHEDULABLE", f"endpoint {shown}: {reason}")
    return schedulable[0]
