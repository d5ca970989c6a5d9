"""Whether a statement the service sends would be routed to one shard of a PostgreSQL sharded by
`bucket`: every reference to a tenant table is held to one bucket by an equality of its own
bucket to a parameter (in subqueries and outer joins too), an insert names its bucket as one
parameter, and a function call passes the bucket first. The lock-free poll across buckets is the
one exception, allowed by name."""

from __future__ import annotations

import re

from scheduler_host.adapters.migrations.schema import TENANT_TABLES

# Reads across every bucket on purpose (which buckets have work), without locks.
ALLOWED = {"dispatch_poll": "the dispatcher's lock-free poll of which buckets have work"}
# SQL functions of migration 0003 that take the bucket as their first argument (a sharded
# PostgreSQL delegates the call to the bucket's shard).
BUCKET_FUNCTIONS = (
    "rate_limit_hit",
    "create_schedule",
    "finish_runs",
    "claim_runs",
    "cut_run_history",
)

_TABLES = "|".join(TENANT_TABLES)
_KEYWORDS = r"(?:where|on|join|left|inner|set|order|group|limit|for|returning|using|cross|values)"
_REFERENCE = re.compile(
    rf"\b(from|join|update|into)\s+({_TABLES})\b(?:\s+(?:as\s+)?(?!{_KEYWORDS}\b)([a-z_]+))?"
)
_FUNCTION_CALL = re.compile(r"\b([a-z_]+)\s*\(\s*(\$\d+)")


def _normal(statement: str) -> str:
    return re.sub(r"\s+", " ", statement.lower()).strip()


def _held(sql: str, alias: str, *, bare: bool) -> bool:
    """Whether `alias`'s bucket is equal to a parameter. An equality to another table's bucket is
    not enough: a sharded PostgreSQL narrows each table to a shard only by its own filter."""
    names = [re.escape(alias)] + ([""] if bare else [])
    for name in names:
        column = rf"(?<![.\w]){name}\.bucket" if name else r"(?<![.\w])bucket"
        if re.search(rf"{column}\s*=\s*\$\d+", sql):
            return True
    return False


def unrouted(statement: str) -> str | None:
    """Why `statement` would not route to one shard; None when it would (or touches no tenant
    table, or is the allowed poll)."""
    sql = _normal(statement)
    if any(re.search(rf"\b{name}\s*\(", sql) for name in ALLOWED):
        return None
    for name, first in _FUNCTION_CALL.findall(sql):
        if name in BUCKET_FUNCTIONS and first != "$1":
            return f"{name} is not given the bucket first"
    if any(re.search(rf"\b{name}\s*\(\s*\$1\b", sql) for name in BUCKET_FUNCTIONS):
        return None
    for verb, table, alias in _REFERENCE.findall(sql):
        alias = alias or table
        if verb == "into":
            ok = bool(re.search(rf"into {table} \(bucket,", sql)) and bool(
                re.search(r"(values \(\$\d+|select \$\d+)", sql)
            )
        else:
            ok = _held(sql, alias, bare=alias == table)
        if not ok:
            return f"{table} ({verb}, as {alias}) is not held to one bucket by its own filter"
    return None
