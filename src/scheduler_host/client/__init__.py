"""`scheduler_host.client`: the scheduler-host-client distribution (`scheduler_host_client`) under
the server package's name, so code written against the client that shipped inside the server
keeps working. The objects are the same: `scheduler_host.client.SchedulerHostClient is
scheduler_host_client.SchedulerHostClient`. New code may import `scheduler_host_client` directly.
"""

from __future__ import annotations

import scheduler_host_client
from scheduler_host_client import *  # noqa: F403 - every public name, as the client lists them

__all__ = scheduler_host_client.__all__
