"""The shared server runtime over the wire: mTLS and identities, health, reflection, drain, rotation."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from libs.interceptors.batched_lines import flush_all
from libs.processes.processes import free_port
from libs.runtime.channel import ReloadingChannel
from libs.runtime.config import ServerConfig
from libs.runtime.server import SERVING, GrpcServer, StartError
from libs.runtime.testing.echo_server import SERVICE, register
from libs.runtime.tls import TlsFiles
from tools.certs.certs import Issued, mint_all, mint_leaf, write_leaf

# One event loop for the whole module: grpc.aio objects do not survive a switch between loops
# (each asyncio.run makes a new one), and a test after such a switch can hang.
run_in_loop = asyncio.Runner().run

ECHO = f"/{SERVICE}/Echo"


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A CA with certificates for the server, an allowed caller and a caller with no rights."""
    out = tmp_path / "certs"
    ca = mint_all(out, services=("orders", "shop"))
    write_leaf(out, "intruder", mint_leaf(ca, "intruder"))
    return out


def files(certs: Path, service: str) -> TlsFiles:
    return TlsFiles(certs / f"{service}.pem", certs / f"{service}.key", certs / "ca.pem")


def credentials(certs: Path, service: str | None, ca: Path | None = None) -> grpc.ChannelCredentials:
    root = (ca or certs / "ca.pem").read_bytes()
    if service is None:
        return grpc.ssl_channel_credentials(root)
    key, cert = (certs / f"{service}.key").read_bytes(), (certs / f"{service}.pem").read_bytes()
    return grpc.ssl_channel_credentials(root, key, cert)


def serve(config: ServerConfig, scenario: Callable[[GrpcServer], Awaitable[None]], serving: str = "aio") -> None:
    async def main() -> None:
        server = GrpcServer(config, {"Echo": ["shop"]}, serving=serving)
        server.add_service(SERVICE, lambda target: register(target, serving))
        await server.start()
        try:
            await scenario(server)
        finally:
            await server.shutdown()

    run_in_loop(main())


def mtls_config(certs: Path, **overrides) -> ServerConfig:
    values = {"host": "127.0.0.1", "port": 0, "tls": files(certs, "orders"), "drain_seconds": 0}
    return ServerConfig(**{**values, **overrides})


async def call_echo(port: int, creds: grpc.ChannelCredentials | None, payload: bytes = b"hi") -> bytes:
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    async with channel:
        # Bytes in, bytes out (grpc-stubs makes the serializers, None by default, required).
        return await channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)(payload, timeout=5)


async def expect_failure(port: int, creds: grpc.ChannelCredentials | None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call_echo(port, creds)
    return raised.value


@pytest.mark.parametrize("serving", SERVING)
def test_allowed_identity_succeeds(certs: Path, serving: str) -> None:
    async def scenario(server: GrpcServer) -> None:
        assert await call_echo(server.port, credentials(certs, "shop")) == b"echo:hi"

    serve(mtls_config(certs), scenario, serving)


def test_plaintext_client_is_rejected(certs: Path) -> None:
    async def scenario(server: GrpcServer) -> None:
        error = await expect_failure(server.port, None)
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    serve(mtls_config(certs), scenario)


def test_client_without_certificate_fails_the_handshake(certs: Path) -> None:
    async def scenario(server: GrpcServer) -> None:
        error = await expect_failure(server.port, credentials(certs, None))
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    serve(mtls_config(certs), scenario)


def test_client_certificate_from_another_ca_fails_the_handshake(certs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    mint_all(other, services=("shop",))  # same name, different CA

    async def scenario(server: GrpcServer) -> None:
        error = await expect_failure(server.port, credentials(other, "shop", ca=certs / "ca.pem"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    serve(mtls_config(certs), scenario)


@pytest.mark.parametrize("serving", SERVING)
def test_valid_but_not_allowed_identity_is_permission_denied(certs: Path, serving: str) -> None:
    async def scenario(server: GrpcServer) -> None:
        error = await expect_failure(server.port, credentials(certs, "intruder"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == f"intruder may not call {ECHO}"

    serve(mtls_config(certs), scenario, serving)


def test_logs_name_the_caller_by_the_identity_authorisation_went_by(certs: Path, caplog) -> None:
    """A certificate whose CN says one thing and whose DNS names another: authorisation uses the DNS
    names, so the access log and the refusal must name that identity, not the CN."""
    ca = Issued(
        # tools/certs mints EC keys.
        cast(ec.EllipticCurvePrivateKey, serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)),
        x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes()),
    )
    write_leaf(certs, "disguised", mint_leaf(ca, "shop", common_name="root-admin"))
    write_leaf(certs, "impostor", mint_leaf(ca, "intruder", common_name="shop"))

    async def scenario(server: GrpcServer) -> None:
        assert await call_echo(server.port, credentials(certs, "disguised")) == b"echo:hi"
        error = await expect_failure(server.port, credentials(certs, "impostor"))
        assert error.details() == f"intruder may not call {ECHO}"

    caplog.set_level(logging.INFO, logger="access")
    serve(mtls_config(certs), scenario)
    flush_all()
    lines = [json.loads(line) for r in caplog.records if r.name == "access" for line in r.getMessage().split("\n")]
    assert [(line["code"], line["peer"]) for line in lines if line["method"] == ECHO] == [
        ("OK", "shop"),
        ("PERMISSION_DENIED", "intruder"),
    ]


def test_only_dns_names_identify_a_caller(certs: Path) -> None:
    """Certificates of our CA that name `shop` only as a URI or an email address, and one with an
    IP address only: none is the shop (gRPC lists every kind of SAN together)."""
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    sans = {
        "by-uri": x509.UniformResourceIdentifier("shop"),
        "by-email": x509.RFC822Name("shop"),
        "by-ip": x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    }
    for name, san in sans.items():
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "shop")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(cast(ec.EllipticCurvePrivateKey, ca_key), hashes.SHA256())
        )
        write_leaf(certs, name, Issued(key, cert))

    async def scenario(server: GrpcServer) -> None:
        for name in sans:
            error = await expect_failure(server.port, credentials(certs, name))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert "DNS SAN" in (error.details() or "")

    serve(mtls_config(certs), scenario)


def test_allow_flag_overrides_the_service_policy(certs: Path) -> None:
    async def scenario(server: GrpcServer) -> None:
        assert await call_echo(server.port, credentials(certs, "intruder")) == b"echo:hi"
        error = await expect_failure(server.port, credentials(certs, "shop"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    serve(mtls_config(certs, allow={"Echo": frozenset({"intruder"})}), scenario)


def test_rotated_certificates_are_picked_up_without_restart(certs: Path, tmp_path: Path) -> None:
    rotated = tmp_path / "rotated"
    mint_all(rotated, services=("orders", "shop"))  # a whole new CA

    async def scenario(server: GrpcServer) -> None:
        assert await call_echo(server.port, credentials(certs, "shop")) == b"echo:hi"
        for name in ("orders.pem", "orders.key", "ca.pem"):
            shutil.copyfile(rotated / name, certs / f".{name}")
            os.replace(certs / f".{name}", certs / name)
        # New connections now need the new CA: the old client fails, a client of the new CA works.
        assert await call_echo(server.port, credentials(rotated, "shop")) == b"echo:hi"
        old = credentials(tmp_path / "certs", "shop", ca=rotated / "ca.pem")
        error = await expect_failure(server.port, old)
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    serve(mtls_config(certs), scenario)


def test_client_channel_follows_certificate_rotation(certs: Path, tmp_path: Path) -> None:
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    for name in ("shop.pem", "shop.key", "ca.pem"):
        shutil.copyfile(certs / name, client_dir / name)
    rotated = tmp_path / "rotated"
    mint_all(rotated, services=("orders", "shop"))  # a whole new CA

    def replace(directory: Path, names: tuple[str, ...]) -> None:
        for name in names:
            shutil.copyfile(rotated / name, directory / f".{name}")
            os.replace(directory / f".{name}", directory / name)

    async def scenario(server: GrpcServer) -> None:
        channel = ReloadingChannel(f"127.0.0.1:{server.port}", tls=files(client_dir, "shop"), check_every=3600, drain=0)
        async with channel:
            echo = channel.unary_unary(ECHO)
            assert await echo(b"before", timeout=5) == b"echo:before"
            replace(certs, ("orders.pem", "orders.key", "ca.pem"))
            replace(client_dir, ("shop.pem", "shop.key", "ca.pem"))
            # A new connection with the old client certificate is now refused...
            error = await expect_failure(server.port, credentials(tmp_path / "certs", "shop"))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            # ...and the reloading channel moves to the new one.
            assert channel.reload_if_changed()
            assert channel.generation == 1
            assert not channel.reload_if_changed()
            assert await echo(b"after", timeout=5) == b"echo:after"

    serve(mtls_config(certs), scenario)


async def health_status(port: int, creds: grpc.ChannelCredentials | None, service: str = "") -> int:
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    async with channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return response.status


async def until_health(port: int, creds: grpc.ChannelCredentials | None, wanted: int, timeout: float = 10) -> None:
    give_up = asyncio.get_running_loop().time() + timeout
    while (status := await health_status(port, creds)) != wanted:
        assert asyncio.get_running_loop().time() < give_up, f"health stayed {status}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("serving", SERVING)
def test_health_serving_then_not_serving_during_drain_while_calls_still_work(certs: Path, serving: str) -> None:
    up, down = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

    async def scenario(server: GrpcServer) -> None:
        creds = credentials(certs, "shop")
        assert await health_status(server.port, creds) == up
        assert await health_status(server.port, creds, SERVICE) == up
        shutdown = asyncio.create_task(server.shutdown())
        await until_health(server.port, creds, down)
        assert await health_status(server.port, creds, SERVICE) == down
        assert await call_echo(server.port, creds) == b"echo:hi"  # draining: still served
        await shutdown
        error = await expect_failure(server.port, creds)
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    # A drain long enough for the checks above on a loaded machine (the test waits for all of it).
    serve(mtls_config(certs, drain_seconds=3.0), scenario, serving)


@pytest.mark.parametrize("serving", SERVING)
def test_plaintext_health_port_serves_probes_only(certs: Path, serving: str) -> None:
    async def scenario(server: GrpcServer) -> None:
        assert server.health_port
        assert await health_status(server.health_port, None) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call_echo(server.health_port, None)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED

    serve(mtls_config(certs, health_port=free_port()), scenario, serving)


@pytest.mark.parametrize("serving", SERVING)
def test_reflection_lists_our_service(certs: Path, serving: str) -> None:
    async def scenario(server: GrpcServer) -> None:
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials(certs, "shop")) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            async for response in responses:
                names = {service.name for service in response.list_services_response.service}
                break
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names

    serve(mtls_config(certs), scenario, serving)


@pytest.mark.parametrize("serving", SERVING)
def test_insecure_mode_has_no_identity_checks(serving: str) -> None:
    async def scenario(server: GrpcServer) -> None:
        assert await call_echo(server.port, None) == b"echo:hi"

    serve(ServerConfig(host="127.0.0.1", port=0, tls=None, drain_seconds=0), scenario, serving)


def test_port_in_use_is_a_start_error(certs: Path) -> None:
    async def scenario(server: GrpcServer) -> None:
        second = GrpcServer(mtls_config(certs, port=server.port))
        second.add_service(SERVICE, register)
        with pytest.raises(StartError, match=f"cannot listen on 127.0.0.1:{server.port}"):
            await second.start()

    serve(mtls_config(certs), scenario)


def test_a_connection_that_never_completes_its_handshake_is_closed(certs: Path) -> None:
    """Idle TCP connections (slowloris on the gRPC port) are closed after --handshake-timeout."""

    async def scenario(server: GrpcServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # Closed by the server, and long before gRPC's own default (120 s) would: the configured 0.5 s.
        assert await asyncio.wait_for(reader.read(1024), timeout=8) == b""
        writer.close()

    serve(mtls_config(certs, handshake_timeout=0.5), scenario)


def test_idle_and_old_connections_are_sent_away_and_clients_reconnect(certs: Path) -> None:
    async def scenario(server: GrpcServer) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            echo = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)
            assert await echo(b"first", timeout=5) == b"echo:first"
            # max_connection_idle: the server closes it (GOAWAY) and the channel goes IDLE
            await asyncio.wait_for(wait_until(channel, grpc.ChannelConnectivity.IDLE), 20)
            assert await echo(b"again", timeout=5) == b"echo:again"  # a new connection, transparently

    config = ServerConfig(host="127.0.0.1", port=0, tls=None, drain_seconds=0, max_connection_idle=0.3)
    serve(config, scenario)


async def wait_until(channel: grpc.aio.Channel, wanted: grpc.ChannelConnectivity) -> None:
    while (state := channel.get_state()) != wanted:
        await channel.wait_for_state_change(state)


@pytest.mark.parametrize("serving", SERVING)
def test_health_watch_streams_are_capped(certs: Path, serving: str) -> None:
    """The plaintext probe port held 3,357 Watch streams on one connection; now a few, then RESOURCE_EXHAUSTED."""

    async def scenario(server: GrpcServer) -> None:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") for _ in range(3)]
        watches = []
        # Deadlines far off: the streams held must not end by themselves while the test runs.
        for n in range(4):  # over two connections: the per-connection stream limit is not what refuses
            stream = health_pb2_grpc.HealthStub(channels[n % 2]).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert (await stream.read()).status == health_pb2.HealthCheckResponse.SERVING
            watches.append(stream)
        refused = health_pb2_grpc.HealthStub(channels[2]).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await refused.read()
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watches.pop().cancel()
        give_up = asyncio.get_running_loop().time() + 10
        while True:  # the freed slot is given back once the server has seen the cancellation
            again = health_pb2_grpc.HealthStub(channels[2]).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            try:
                response = await again.read()
            except grpc.aio.AioRpcError as error:
                refusal = error.code()
            else:
                break
            assert refusal == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert asyncio.get_running_loop().time() < give_up, "a freed Watch slot was never given back"
            await asyncio.sleep(0.02)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        for channel in channels:
            await channel.close(None)

    serve(mtls_config(certs, health_port=free_port(), max_health_watches=4), scenario, serving)


def test_a_stream_that_never_sends_is_ended_by_the_connection_age_limit(certs: Path) -> None:
    """A bidi call (reflection's) that sends nothing holds a stream until --max-connection-age and its
    grace have passed; then the server closes the connection and the call ends."""

    async def scenario(server: GrpcServer) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()  # never written to
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                # Ended by the server's age limit: nothing else ends it (the call has no deadline, its
                # connection is not idle), and a call still open when this gives up fails the test.
                await asyncio.wait_for(stream.read(), timeout=20)
        assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    config = ServerConfig(
        host="127.0.0.1", port=0, tls=None, drain_seconds=0, max_connection_age=0.5, max_connection_age_grace=0.5
    )
    serve(config, scenario)
