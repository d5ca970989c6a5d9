"""Alembic environment: runs migrations on the connection handed over in ``config.attributes``.

Only `scheduler_host.adapters.migrations` drives this; the async engine lives there.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection


def _run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        # No offline mode and no engine here: the async API opens and closes the connection.
        raise RuntimeError(
            "run migrations through scheduler_host.adapters.migrations, not the alembic CLI"
        )
    context.configure(connection=connection)
    # The caller holds the transaction (engine.begin()), so on PostgreSQL an upgrade is all or
    # nothing; this is then a no-op.
    with context.begin_transaction():
        context.run_migrations()


_run_migrations()
