"""Installs: the extension version, capabilities and endpoints a schedule is scoped to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from scheduler_host.domain.endpoints import Endpoint

SCHEDULER_CAPABILITY = "cap:scheduler.manage"


@dataclass(frozen=True)
class InstallContext:
    """What a SchedulerHost call knows about its caller once metadata is checked."""

    install_id: uuid.UUID
    tenant_id: str
    registry_id: str
    version_id: str
    content_hash: str
    enabled: bool
    capabilities: frozenset[str]


@dataclass(frozen=True)
class Install:
    install_id: uuid.UUID
    tenant_id: str
    registry_id: str
    version_id: str
    content_hash: str
    enabled: bool
    granted_capabilities: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    create_time: datetime
    update_time: datetime

    def context(self) -> InstallContext:
        return InstallContext(
            install_id=self.install_id,
            tenant_id=self.tenant_id,
            registry_id=self.registry_id,
            version_id=self.version_id,
            content_hash=self.content_hash,
            enabled=self.enabled,
            capabilities=frozenset(self.granted_capabilities),
        )
