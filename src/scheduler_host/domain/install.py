"""Installs: the extension version, capabilities and endpoints a schedule is scoped to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from scheduler_host.domain.endpoints import Endpoint

SCHEDULER_CAPABILITY = "cap:scheduler.manage"


@dataclass(frozen=True)
class InstallIdentity:
    """Which extension version an install is, and whose: what an install, its context and an
    upsert's validated input have in common."""

    install_id: uuid.UUID
    tenant_id: str
    registry_id: str
    version_id: str
    content_hash: str

    def identity_fields(self) -> dict[str, Any]:
        """The identity's fields by name, to build another of the install's forms from this one."""
        return {f.name: getattr(self, f.name) for f in fields(InstallIdentity)}


@dataclass(frozen=True)
class InstallContext(InstallIdentity):
    """What a SchedulerHost call knows about its caller once metadata is checked."""

    enabled: bool
    capabilities: frozenset[str]


@dataclass(frozen=True)
class Install(InstallIdentity):
    enabled: bool
    granted_capabilities: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    create_time: datetime
    update_time: datetime

    def context(self) -> InstallContext:
        return InstallContext(
            **self.identity_fields(),
            enabled=self.enabled,
            capabilities=frozenset(self.granted_capabilities),
        )
