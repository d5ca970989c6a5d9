"""SchedulerAdmin install use cases: upsert (with the remap of schedules), get and delete."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from scheduler_host.domain.endpoints import (
    Endpoint,
    endpoint_id,
    normalise_method,
    normalise_path,
)
from scheduler_host.domain.errors import (
    FieldViolation,
    InstallNotFound,
    RemapFailed,
    ValidationFailed,
)
from scheduler_host.domain.install import Install, InstallContext, InstallIdentity
from scheduler_host.domain.remap import remap_schedules
from scheduler_host.domain.schedule import validate_uuid
from scheduler_host.domain.timing import next_run_of
from scheduler_host.service.access import InstallContextCache, mutations_scope
from scheduler_host.service.ports import Clock, UnitOfWork, UnitOfWorkFactory

_MAX_ID_LENGTH = 128
_MAX_HANDLER_LENGTH = 256
_METHOD = re.compile(r"^[A-Z]{1,16}$")


@dataclass(frozen=True)
class EndpointSpecInput:
    method: str
    path: str
    handler: str


@dataclass(frozen=True)
class InstallInput:
    install_id: str
    tenant_id: str
    registry_id: str
    version_id: str
    content_hash: str
    enabled: bool | None
    granted_capabilities: tuple[str, ...]
    endpoints: tuple[EndpointSpecInput, ...]


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _text(
    value: str,
    name: str,
    violations: list[FieldViolation],
    *,
    required: bool,
    limit: int = _MAX_ID_LENGTH,
) -> str:
    text = value.strip()
    if (required and not text) or len(text) > limit or _has_control(text):
        violations.append(
            FieldViolation(
                name,
                "INSTALL_INVALID",
                f"{name} must be {int(required)}-{limit} characters without control characters",
            )
        )
    return text


def _endpoints(
    install_id: uuid.UUID,
    version_id: str,
    specs: tuple[EndpointSpecInput, ...],
    violations: list[FieldViolation],
) -> tuple[Endpoint, ...]:
    seen: set[tuple[str, str]] = set()
    out: list[Endpoint] = []
    for i, spec in enumerate(specs):
        name = f"install.endpoints[{i}]"
        method, path = normalise_method(spec.method), normalise_path(spec.path)
        if (
            not _METHOD.match(method)
            or not spec.path.strip()
            or len(path) > 1024
            # Refused rather than cut to the column's 256 characters: nothing is truncated silently.
            or len(spec.handler.strip()) > _MAX_HANDLER_LENGTH
            or _has_control(path + spec.handler)
        ):
            violations.append(
                FieldViolation(
                    name,
                    "INSTALL_INVALID",
                    "an endpoint needs a method, a path (at most 1024 characters) and a handler "
                    "(at most 256), without control characters",
                )
            )
            continue
        if (method, path) in seen:
            violations.append(
                FieldViolation(name, "INSTALL_INVALID", f"{method} {path} is declared twice")
            )
            continue
        seen.add((method, path))
        out.append(
            Endpoint(
                endpoint_id(install_id, version_id, method, path),
                method,
                path,
                spec.handler.strip(),
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class _ValidInstall(InstallIdentity):
    """An upsert's fields once they passed validation: trimmed, endpoints normalised."""

    enabled: bool | None
    capabilities: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]

    def install(self, current: Install | None, now: datetime) -> Install:
        """The install to store; `enabled` and `create_time` default to `current`'s."""
        if self.enabled is not None:
            enabled = self.enabled
        else:
            enabled = current.enabled if current is not None else True
        return Install(
            **self.identity_fields(),
            enabled=enabled,
            granted_capabilities=self.capabilities,
            endpoints=self.endpoints,
            create_time=current.create_time if current is not None else now,
            update_time=now,
        )


def _validate_install(data: InstallInput) -> _ValidInstall:
    """`data` validated, or ValidationFailed with every violation found."""
    violations: list[FieldViolation] = []
    install_id = validate_uuid(data.install_id, "install.install_id")
    if isinstance(install_id, FieldViolation):
        violations.append(install_id)
        install_id = uuid.UUID(int=0)
    tenant_id = _text(data.tenant_id, "install.tenant_id", violations, required=True)
    registry_id = _text(data.registry_id, "install.registry_id", violations, required=True)
    version_id = _text(data.version_id, "install.version_id", violations, required=True)
    content_hash = _text(
        data.content_hash, "install.content_hash", violations, required=False, limit=256
    )
    endpoints = _endpoints(install_id, version_id, data.endpoints, violations)
    for i, capability in enumerate(data.granted_capabilities):
        _text(capability, f"install.granted_capabilities[{i}]", violations, required=True)
    capabilities = tuple(sorted({c.strip() for c in data.granted_capabilities if c.strip()}))
    if violations:
        raise ValidationFailed(violations)
    return _ValidInstall(
        install_id,
        tenant_id,
        registry_id,
        version_id,
        content_hash,
        data.enabled,
        capabilities,
        endpoints,
    )


async def _remap_schedules(
    uow: UnitOfWork,
    install: Install,
    current: Install,
    now: datetime,
    disable_missing_schedules: bool,
) -> list[uuid.UUID]:
    """The install's schedules moved to its new endpoints; the ids of those disabled because
    their endpoint is gone (RemapFailed instead, unless `disable_missing_schedules`)."""
    tenant_id, install_id = install.tenant_id, install.install_id
    remap = remap_schedules(
        await uow.schedules.lock_install_schedules(tenant_id, install_id),
        install.endpoints,
        reenabled=install.enabled and not current.enabled,
        now=now,
        next_run=next_run_of,
    )
    if remap.missing and not disable_missing_schedules:
        raise RemapFailed(remap.missing)
    await uow.schedules.apply_remap(tenant_id, install_id, remap.changes)
    return remap.disabled


async def upsert_install(
    data: InstallInput,
    disable_missing_schedules: bool,
    *,
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    install_cache: InstallContextCache,
) -> tuple[Install, list[uuid.UUID]]:
    valid = _validate_install(data)
    tenant_id, install_id = valid.tenant_id, valid.install_id
    now = clock()
    disabled: list[uuid.UUID] = []
    async with uow_factory() as uow:
        # The install's lock first (as a create takes it), then its schedules: a create, an
        # update or a dispatcher's finish either commits before the remap reads or waits for it.
        await uow.installs.lock(tenant_id, install_id)
        current = await uow.installs.get(install_id)
        if current is not None and current.tenant_id != tenant_id:
            raise _tenant_change()
        install = valid.install(current, now)
        if current is not None:
            disabled = await _remap_schedules(uow, install, current, now, disable_missing_schedules)
        if not await uow.installs.save(install):
            raise _tenant_change()
        await uow.commit()
    install_cache.invalidate(install_id)
    return install, disabled


def _tenant_change() -> ValidationFailed:
    return ValidationFailed(
        [FieldViolation("install.tenant_id", "INSTALL_INVALID", "an install cannot change tenant")]
    )


def _install_id(install_id: str) -> uuid.UUID:
    """An operator's install id, or ValidationFailed when it is no UUID."""
    iid = validate_uuid(install_id, "install_id")
    if isinstance(iid, FieldViolation):
        raise ValidationFailed([iid])
    return iid


async def get_install(install_id: str, *, uow_factory: UnitOfWorkFactory) -> Install:
    iid = _install_id(install_id)
    async with uow_factory() as uow:
        found = await uow.installs.get(iid)
    if found is None:
        raise InstallNotFound(str(iid))
    return found


async def install_context(install_id: str, *, uow_factory: UnitOfWorkFactory) -> InstallContext:
    """The context of an install named by an operator, whatever its state."""
    iid = _install_id(install_id)
    async with uow_factory(autocommit=True) as uow:
        ctx = await uow.installs.context(iid)
    if ctx is None:
        raise InstallNotFound(str(iid))
    return ctx


async def delete_install(
    install_id: str, *, uow_factory: UnitOfWorkFactory, install_cache: InstallContextCache
) -> None:
    iid = _install_id(install_id)
    async with uow_factory() as uow:
        ctx = await uow.installs.context(iid)
        if ctx is None:
            raise InstallNotFound(str(iid))
        # Its schedules locked in id order first, the order a dispatcher's finish takes: the
        # delete's cascade then cannot deadlock with one.
        await uow.schedules.lock_install_schedules(ctx.tenant_id, iid)
        # Endpoints, schedules, runs and idempotency keys go with it; so do its rate-limit hits.
        if not await uow.installs.delete(iid):
            raise InstallNotFound(str(iid))
        await uow.rate_limits.forget(mutations_scope(iid), ctx.tenant_id)
        await uow.commit()
    install_cache.invalidate(iid)
