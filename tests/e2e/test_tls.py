"""TLS and mTLS: SCHEDULER_HOST_TLS_CERT + _KEY serve TLS; adding _CLIENT_CA
requires a client certificate signed by that CA."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from schedulerhost.v1 import scheduler_admin_pb2 as admin_pb
from schedulerhost.v1 import scheduler_host_pb2 as pb

from scheduler_host.app import Application, start_application
from tests.e2e.conftest import e2e_settings
from tests.support.grpc_status_details import rpc_failure
from tests.support.server import Stubs, admin_metadata, register_install

CALL_TIMEOUT = 5.0
# What a client sees when the TLS handshake cannot happen (or the plaintext bytes are dropped).
REFUSED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class Pki:
    ca_pem: bytes
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert_pem: bytes
    client_key_pem: bytes
    foreign_ca_pem: bytes
    foreign_client_cert_pem: bytes
    foreign_client_key_pem: bytes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = ca.issue_cert("client")
    foreign = trustme.CA()
    foreign_client = foreign.issue_cert("client")
    return Pki(
        ca_pem=ca.cert_pem.bytes(),
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_ca=directory / "ca.pem",
        client_cert_pem=client.cert_chain_pems[0].bytes(),
        client_key_pem=client.private_key_pem.bytes(),
        foreign_ca_pem=foreign.cert_pem.bytes(),
        foreign_client_cert_pem=foreign_client.cert_chain_pems[0].bytes(),
        foreign_client_key_pem=foreign_client.private_key_pem.bytes(),
    )


@pytest.fixture(scope="module")
async def tls_server(pki: Pki, app: Application) -> AsyncIterator[int]:
    server = await start_application(
        e2e_settings(app.database_url, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)),
        migrate=True,
    )
    try:
        yield server.port
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def mtls_server(pki: Pki, app: Application) -> AsyncIterator[int]:
    server = await start_application(
        e2e_settings(
            app.database_url,
            tls_cert=str(pki.server_cert),
            tls_key=str(pki.server_key),
            tls_client_ca=str(pki.client_ca),
        ),
        migrate=True,
    )
    try:
        yield server.port
    finally:
        await server.stop()


def secure_channel(port: int, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def health_check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
    )
    return int(reply.status)


async def assert_works(channel: grpc.aio.Channel) -> None:
    """Health, an admin call and a SchedulerHost call all pass over this channel."""
    assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    stubs = Stubs(channel)
    missing = await rpc_failure(
        stubs.admin.GetInstall(
            admin_pb.GetInstallRequest(install_id=str(uuid.uuid4())),
            metadata=admin_metadata(),
            timeout=CALL_TIMEOUT,
        )
    )
    # The call went all the way through: the answer is about the install, not the connection.
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "INSTALL_NOT_FOUND")
    install = await register_install(stubs.admin)
    listed = await stubs.host.ListSchedules(
        pb.ListSchedulesRequest(), metadata=install.metadata, timeout=CALL_TIMEOUT
    )
    assert listed.total_size == 0


async def assert_refused(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await health_check(channel)
    assert raised.value.code() in REFUSED, raised.value


# --- TLS -------------------------------------------------------------------------------------


async def test_tls_client_trusting_the_ca_is_served(tls_server: int, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
    async with secure_channel(tls_server, creds) as channel:
        await assert_works(channel)


async def test_tls_server_also_accepts_a_client_certificate(tls_server: int, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=pki.client_key_pem,
        certificate_chain=pki.client_cert_pem,
    )
    async with secure_channel(tls_server, creds) as channel:
        assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_client_is_refused_by_a_tls_server(tls_server: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_server}") as channel:
        await assert_refused(channel)


async def test_client_not_trusting_the_server_ca_is_refused(tls_server: int, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.foreign_ca_pem)
    async with secure_channel(tls_server, creds) as channel:
        await assert_refused(channel)


# --- mTLS ------------------------------------------------------------------------------------


async def test_mtls_client_with_a_certificate_is_served(mtls_server: int, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=pki.client_key_pem,
        certificate_chain=pki.client_cert_pem,
    )
    async with secure_channel(mtls_server, creds) as channel:
        await assert_works(channel)


async def test_mtls_client_without_a_certificate_is_refused(mtls_server: int, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
    async with secure_channel(mtls_server, creds) as channel:
        await assert_refused(channel)


async def test_mtls_client_with_a_certificate_from_another_ca_is_refused(
    mtls_server: int, pki: Pki
) -> None:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=pki.foreign_client_key_pem,
        certificate_chain=pki.foreign_client_cert_pem,
    )
    async with secure_channel(mtls_server, creds) as channel:
        await assert_refused(channel)


async def test_plaintext_client_is_refused_by_an_mtls_server(mtls_server: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mtls_server}") as channel:
        await assert_refused(channel)
