"""JSON in, a real gRPC call, JSON out: libs/http/grpc_json.py against a grpc.aio server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx2 as httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from libs.http.grpc_json import Backend, BadJson, call_json, http_status, json_call, query_fields, unary_methods
from libs.http.testdata import library_pb2

SERVICE = "testdata.library.v1.LibraryService"
BOOKS = [("Dune", "Frank Herbert", 20_000_000), ("Emma", "Jane Austen", 7), ("Persuasion", "Jane Austen", 5)]


async def find_books(request: library_pb2.FindBooksRequest, context: grpc.aio.ServicerContext) -> object:
    if request.limit < 0:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
    found = [library_pb2.Book(title=t, author=a, copies_sold=n) for t, a, n in BOOKS if a in request.authors]
    return library_pb2.FindBooksResponse(books=found[: request.limit or None])


@contextlib.asynccontextmanager
async def library_channel() -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a grpc.aio server of LibraryService on loopback."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        find_books,
        request_deserializer=library_pb2.FindBooksRequest.FromString,
        response_serializer=library_pb2.FindBooksResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"FindBooks": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


def call(fields: dict[str, Any]) -> dict[str, Any]:
    """FindBooks with `fields`, through call_json."""

    async def scenario() -> dict[str, Any]:
        async with library_channel() as channel:
            return await call_json(channel, unary_methods(SERVICE)["FindBooks"], fields, timeout=10)

    return asyncio.run(scenario())


def over_http(*requests: tuple[str, str, bytes | None]) -> list[httpx.Response]:
    """(method, path, body) requests to an app whose /api/{service}/{method} is json_call, calling the library."""

    async def scenario() -> list[httpx.Response]:
        async with library_channel() as channel:
            app = Starlette(routes=[Route("/api/{service}/{method}", json_call, methods=["GET", "POST"])])
            app.state.backends = {"library": Backend.of(SERVICE, channel, timeout=10)}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return [await client.request(verb, path, content=body) for verb, path, body in requests]

    return asyncio.run(scenario())


def test_only_unary_methods_are_offered() -> None:
    methods = unary_methods(SERVICE)
    assert list(methods) == ["FindBooks"]
    assert methods["FindBooks"].path == "/testdata.library.v1.LibraryService/FindBooks"
    assert methods["FindBooks"].request_fields() == ["authors", "limit", "format"]


def test_a_call_reads_and_writes_protobufs_json_mapping() -> None:
    answer = call({"authors": ["Jane Austen", "Frank Herbert"], "limit": "2"})
    # int64 as a string and lowerCamelCase names: proto3's JSON mapping, as every JSON client expects it.
    assert answer == {
        "books": [
            {"title": "Dune", "author": "Frank Herbert", "copiesSold": "20000000"},
            {"title": "Emma", "author": "Jane Austen", "copiesSold": "7"},
        ]
    }


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"author": ["x"]}, 'no field named "author"'),
        ({"limit": "many"}, "limit"),
        ({"limit": 2**40}, "limit"),
        ({"format": "FORMAT_VINYL"}, "FORMAT_VINYL"),
        ({"authors": "Jane Austen"}, "authors"),
    ],
)
def test_a_request_the_message_cannot_hold_is_refused(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(BadJson, match=named):
        call(fields)


def test_the_services_own_refusal_keeps_its_code() -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        call({"limit": -1})
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert http_status(raised.value.code()) == 400


def test_query_parameters_fill_repeated_fields_with_every_value() -> None:
    method = unary_methods(SERVICE)["FindBooks"]
    items = [("authors", "Jane Austen"), ("limit", "1"), ("limit", "3"), ("authors", "Frank Herbert")]
    assert query_fields(method, items) == {"authors": ["Jane Austen", "Frank Herbert"], "limit": "3"}


def test_every_failure_is_an_http_error_and_the_callers_fault_a_4xx() -> None:
    assert http_status(grpc.StatusCode.OK) == 200
    assert all(http_status(code) >= 400 for code in grpc.StatusCode if code != grpc.StatusCode.OK)
    callers_fault = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE}
    assert {http_status(code) for code in callers_fault} == {400, 404}
    assert http_status(grpc.StatusCode.UNAVAILABLE) == 503
    assert http_status(grpc.StatusCode.DEADLINE_EXCEEDED) == 504
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429


def test_the_json_endpoint_calls_with_query_parameters_or_a_json_body() -> None:
    by_query, by_body = over_http(
        ("GET", "/api/library/FindBooks?authors=Jane%20Austen&limit=1", None),
        ("POST", "/api/library/FindBooks", b'{"authors": ["Frank Herbert"], "format": "FORMAT_EBOOK"}'),
    )
    assert (by_query.status_code, by_query.json()) == (
        200,
        {"books": [{"title": "Emma", "author": "Jane Austen", "copiesSold": "7"}]},
    )
    assert by_body.json()["books"][0]["title"] == "Dune"


def test_the_json_endpoint_answers_every_mistake_with_a_4xx_that_says_what() -> None:
    answers = over_http(
        ("GET", "/api/shop/FindBooks", None),
        ("GET", "/api/library/FollowBooks", None),
        ("GET", "/api/library/FindBooks?limit=lots", None),
        ("POST", "/api/library/FindBooks", b"[1, 2]"),
        ("POST", "/api/library/FindBooks", b"\xff{"),
        ("GET", "/api/library/FindBooks?limit=-1", None),
    )
    assert [answer.status_code for answer in answers] == [404, 404, 400, 400, 400, 400]
    assert answers[0].json()["services"] == ["library"]
    assert answers[1].json()["methods"] == ["FindBooks"]  # a streaming method has no JSON endpoint
    assert "limit" in answers[2].json()["error"]
    assert answers[3].json()["error"] == "the body must be a JSON object"
    assert answers[4].json()["error"].startswith("the body is not JSON")
    assert answers[5].json() == {"error": "limit must not be negative", "code": "INVALID_ARGUMENT", "fields": []}
