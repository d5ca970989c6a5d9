"""`scheduler_host.client.errors`: the client's exception tree, `scheduler_host_client.errors`."""

from __future__ import annotations

import scheduler_host_client.errors
from scheduler_host_client.errors import *  # noqa: F403 - every public name, as the client lists them

__all__ = scheduler_host_client.errors.__all__
