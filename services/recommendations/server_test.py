"""The Recommendations server as wired in main.py, over mTLS on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.interceptors.errors import FieldViolation, field_violations
from libs.runtime.config import ServerConfig
from libs.runtime.tls import TlsFiles, channel_credentials
from services.recommendations.catalog import Book, Catalog
from services.recommendations.main import build_server
from services.recommendations.servicer import SERVICE_NAME, category_names
from services.recommendations.testing.slow_catalog import SlowCatalog
from tools.certs.certs import mint_all, mint_leaf, write_leaf

# One event loop for the whole module: grpc.aio objects do not survive a switch between loops
# (each asyncio.run makes a new one), and a test after such a switch can hang.
run_in_loop = asyncio.Runner().run

BOOKS = [Book(i, "MYSTERY", f"Mystery {i}", f"Author {i}", 1900 + i) for i in range(1, 8)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    ca = mint_all(out)
    write_leaf(out, "intruder", mint_leaf(ca, "intruder"))
    return out


def run(certs: Path, catalog: Catalog, scenario) -> None:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        drain_seconds=0,
        blocking_workers=5,
        tls=TlsFiles(certs / "recommendations.pem", certs / "recommendations.key", certs / "ca.pem"),
    )

    async def main() -> None:
        server = build_server(config, catalog)
        await server.start()
        as_marketplace = channel(certs, "marketplace", server.port)
        try:
            await scenario(server, as_marketplace)
        finally:
            await as_marketplace.close(grace=None)  # grpc-stubs: `grace` has no default; at run time, None
            await server.shutdown()

    run_in_loop(main())


def channel(certs: Path, identity: str, port: int) -> grpc.aio.Channel:
    credentials = channel_credentials(TlsFiles(certs / f"{identity}.pem", certs / f"{identity}.key", certs / "ca.pem"))
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


def raw_bytes_method(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A unary method that sends and receives bytes as they are (no (de)serializer, as by default: grpc-stubs
    makes both arguments required)."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def request(**fields) -> recommendations_pb2.RecommendRequest:
    return recommendations_pb2.RecommendRequest(
        **{"user_id": 1, "category": catalog_pb2.MYSTERY, "max_results": 3, **fields}
    )


def test_five_concurrent_blocking_calls_overlap(certs: Path) -> None:
    async def scenario(server, as_marketplace: grpc.aio.Channel) -> None:
        stub = recommendations_pb2_grpc.RecommendationServiceStub(as_marketplace)
        # Each call's query blocks until all five are blocked at once: served one after the other, the first
        # would hold the rest until its barrier broke, and the calls would fail.
        calls = asyncio.gather(*(stub.Recommend(request(), timeout=30) for _ in range(5)))
        try:
            responses = await calls
        except grpc.aio.AioRpcError as error:
            pytest.fail(f"5 concurrent blocking calls did not overlap: {error}")
        assert all(len(r.recommendations) == 3 for r in responses)

    run(certs, SlowCatalog(BOOKS, parties=5), scenario)


def test_bad_request_carries_field_violations_over_the_wire(certs: Path) -> None:
    async def scenario(server, as_marketplace: grpc.aio.Channel) -> None:
        stub = recommendations_pb2_grpc.RecommendationServiceStub(as_marketplace)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Recommend(request(user_id=0, category=0, max_results=99), timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(raised.value) == [
            FieldViolation("user_id", "must be greater than 0, got 0"),
            FieldViolation("category", "is required"),
            FieldViolation("max_results", "must be between 1 and 20, got 99"),
        ]

    run(certs, Catalog(BOOKS, category_names()), scenario)


def test_only_the_marketplace_may_recommend(certs: Path) -> None:
    async def scenario(server, as_marketplace: grpc.aio.Channel) -> None:
        async with channel(certs, "intruder", server.port) as as_intruder:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await recommendations_pb2_grpc.RecommendationServiceStub(as_intruder).Recommend(request(), timeout=5)
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # Health is open to any verified caller.
            health = await health_pb2_grpc.HealthStub(as_intruder).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING

    run(certs, Catalog(BOOKS, category_names()), scenario)


def test_reflection_describes_the_recommendation_service(certs: Path) -> None:
    async def scenario(server, as_marketplace: grpc.aio.Channel) -> None:
        stub = reflection_pb2_grpc.ServerReflectionStub(as_marketplace)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
        ]
        responses = [response async for response in stub.ServerReflectionInfo(iter(requests))]
        assert SERVICE_NAME in {s.name for s in responses[0].list_services_response.service}
        assert responses[1].file_descriptor_response.file_descriptor_proto  # clients can build stubs from it

    run(certs, Catalog(BOOKS, category_names()), scenario)


def test_bytes_that_are_no_request_are_refused_after_authorisation(certs: Path) -> None:
    """Malformed protobuf from a certificate of our CA: PERMISSION_DENIED for a caller the policy does not
    name, INVALID_ARGUMENT naming the message type for one it does (was UNKNOWN with a traceback for both)."""
    garbage = b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # field 1, a length that overflows

    async def scenario(server, as_marketplace: grpc.aio.Channel) -> None:
        method = f"/{SERVICE_NAME}/Recommend"
        async with channel(certs, "intruder", server.port) as as_intruder:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw_bytes_method(as_intruder, method)(garbage, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await raw_bytes_method(as_marketplace, method)(garbage, timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.details() == "the request is not a valid books.recommendations.v1.RecommendRequest"

    run(certs, Catalog(BOOKS, category_names()), scenario)


def test_a_million_categories_get_one_violation_over_the_wire(certs: Path) -> None:
    async def scenario(server, as_marketplace: grpc.aio.Channel) -> None:
        stub = recommendations_pb2_grpc.RecommendationServiceStub(as_marketplace)
        unknown = catalog_pb2.BookCategory.ValueType(7)  # no such category
        request = recommendations_pb2.RecommendEachRequest(user_id=1, categories=[unknown] * 1_000_000, max_results=3)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RecommendEach(request, timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(raised.value)] == ["categories"]

    run(certs, Catalog(BOOKS, category_names()), scenario)
