"""The rate limiter's check-and-count as one PostgreSQL function: one round trip, no transaction.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 08:30:00

The function takes the scope's advisory lock for its own transaction, forgets hits older than
the window, and counts the call unless `p_limit` hits fall in the window; then it returns how
long until the oldest of those leaves it. Being VOLATILE, each statement in it sees what was
committed before the lock was granted, so the count is exact across processes even when the
call is a statement of its own (autocommit). The lock key is the one the repository used before
this revision, so processes of both versions serialise together during a rolling upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from scheduler_host.adapters.migrations.sql import RATE_LIMIT_HIT_START

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CREATE = f"""
CREATE FUNCTION rate_limit_hit(
    p_scope text, p_tenant_id text, p_limit integer, p_window interval, p_now timestamptz
) {RATE_LIMIT_HIT_START}
    -- Hits are counted in lock order. A caller whose clock reads earlier than a hit already
    -- stored (another process read its clock later but took the lock first) counts from that
    -- hit's time: hit times never go back, and no wait exceeds the window.
    SELECT greatest(p_now, max(hit_time)) INTO now_ FROM rate_limit_hits WHERE scope = p_scope;
    window_start := now_ - p_window;
    DELETE FROM rate_limit_hits WHERE scope = p_scope AND hit_time <= window_start;
    -- The limit-th newest hit in the window is the one whose departure frees a slot.
    SELECT hit_time INTO freeing FROM rate_limit_hits
    WHERE scope = p_scope AND hit_time > window_start
    ORDER BY hit_time DESC OFFSET p_limit - 1 LIMIT 1;
    IF freeing IS NOT NULL THEN
        RETURN greatest(freeing + p_window - now_, interval '1 millisecond');
    END IF;
    INSERT INTO rate_limit_hits (scope, tenant_id, hit_time) VALUES (p_scope, p_tenant_id, now_);
    RETURN NULL;
END
$$
"""

_DROP = "DROP FUNCTION rate_limit_hit(text, text, integer, interval, timestamptz)"


def upgrade() -> None:
    op.execute(_CREATE)


def downgrade() -> None:
    op.execute(_DROP)
