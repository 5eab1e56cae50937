"""HttpRule transcoding (libs/http/transcoding.py): templates, bindings and errors, against a grpc.aio
server of testdata/shelves.proto on loopback, through the routes a web service would serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx2 as httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # .pyi, no py.typed
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from libs.http.grpc_json import Backend
from libs.http.testdata import shelves_pb2
from libs.http.transcoding import TemplateError, parse_template, parse_timeout, routes_of, transcoded_routes
from libs.interceptors import client_interceptors
from libs.interceptors.errors import BadRequest as RichBadRequest
from libs.interceptors.errors import FieldViolation

SERVICE = "testdata.shelves.v1.ShelfService"
SEEN: list[dict[str, Any]] = []  # the requests the server got, as JSON, in order


def _echo(response_type: Any, build: Any) -> Any:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        SEEN.append(json_format.MessageToDict(request, preserving_proto_field_name=True))
        remaining = context.time_remaining()
        if remaining is not None:
            SEEN[-1]["_deadline"] = remaining
        SEEN[-1]["_metadata"] = dict(context.invocation_metadata() or ())
        return await build(request, context)

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=None, response_serializer=response_type.SerializeToString
    )


async def get_shelf(request: shelves_pb2.GetShelfRequest, context: grpc.aio.ServicerContext) -> shelves_pb2.Shelf:
    if request.shelf_id == 404:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no shelf 404")
    if request.shelf_id == 400:
        status = rpc_status.to_status(RichBadRequest([FieldViolation("shelf_id", "must not be 400")]).status_proto())
        await context.abort(status.code, status.details, status.trailing_metadata)
    return shelves_pb2.Shelf(shelf_id=request.shelf_id, library=request.library, theme="sea")


async def list_books(request: Any, context: grpc.aio.ServicerContext) -> shelves_pb2.ListBooksResponse:
    books = [shelves_pb2.Book(name=f"{request.parent}/books/{author}", title=author) for author in request.authors]
    return shelves_pb2.ListBooksResponse(books=books, next_page_token="more")


async def book(request: Any, context: grpc.aio.ServicerContext) -> shelves_pb2.Book:
    if isinstance(request, shelves_pb2.CreateBookRequest):
        return request.book
    return shelves_pb2.Book(name=request.destination or request.name)


async def get_file(request: shelves_pb2.GetFileRequest, context: grpc.aio.ServicerContext) -> shelves_pb2.File:
    return shelves_pb2.File(path=request.path, size=len(request.path))


async def follow_books(request: shelves_pb2.ListBooksRequest, context: grpc.aio.ServicerContext) -> Any:
    SEEN.append(json_format.MessageToDict(request, preserving_proto_field_name=True))
    if request.page_size < 0:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
    for author in request.authors:
        yield shelves_pb2.Book(name=f"{request.parent}/books/{author}", title=author)
    if "broken" in request.authors:
        await context.abort(grpc.StatusCode.DATA_LOSS, "the shelf fell over")


def _handlers() -> grpc.GenericRpcHandler:
    def typed(handler: grpc.RpcMethodHandler, request_type: type) -> grpc.RpcMethodHandler:
        return handler._replace(request_deserializer=request_type.FromString)  # type: ignore[attr-defined]

    methods = {
        "GetShelf": typed(_echo(shelves_pb2.Shelf, get_shelf), shelves_pb2.GetShelfRequest),
        "ListBooks": typed(_echo(shelves_pb2.ListBooksResponse, list_books), shelves_pb2.ListBooksRequest),
        "ListTitles": typed(_echo(shelves_pb2.ListBooksResponse, list_books), shelves_pb2.ListBooksRequest),
        "CreateBook": typed(_echo(shelves_pb2.Book, book), shelves_pb2.CreateBookRequest),
        "MoveBook": typed(_echo(shelves_pb2.Book, book), shelves_pb2.MoveBookRequest),
        "GetFile": typed(_echo(shelves_pb2.File, get_file), shelves_pb2.GetFileRequest),
        "FollowBooks": grpc.unary_stream_rpc_method_handler(
            follow_books,
            request_deserializer=shelves_pb2.ListBooksRequest.FromString,
            response_serializer=shelves_pb2.Book.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


@contextlib.asynccontextmanager
async def shelves_channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        # With our client interceptors, as a web service's channels have them (they send traceparent on).
        interceptors = client_interceptors(registry=CollectorRegistry())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as channel:
            yield channel
    finally:
        await server.stop(0)


def over_http(*requests: tuple[str, str, Any], headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """(verb, path, body) requests to an app of the transcoded routes of the shelves service."""
    SEEN.clear()

    async def scenario() -> list[httpx.Response]:
        async with shelves_channel() as channel:
            backends = {"shelves": Backend.of(SERVICE, channel, timeout=10)}
            app = Starlette(routes=transcoded_routes(backends))
            app.state.backends = backends
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                answers = []
                for verb, path, body in requests:
                    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
                    answers.append(await client.request(verb, path, content=content, headers=headers))
                return answers

    return asyncio.run(scenario())


def one(verb: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return over_http((verb, path, body), **kwargs)[0]


@pytest.mark.parametrize(
    ("template", "path", "bound"),
    [
        ("/v1/shelves/{shelf_id}", "/v1/shelves/7", {"shelf_id": "7"}),
        ("/v1/{parent=shelves/*}/books", "/v1/shelves/7/books", {"parent": "shelves/7"}),
        ("/v1/{name=shelves/*/books/*}:move", "/v1/shelves/7/books/3:move", {"name": "shelves/7/books/3"}),
        ("/v1/files/{path=**}", "/v1/files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("/v1/{book.name=shelves/*/books/*}", "/v1/shelves/1/books/2", {"book.name": "shelves/1/books/2"}),
        ("/v1/*/items", "/v1/anything/items", {}),
    ],
)
def test_templates_match_what_http_rule_says(template: str, path: str, bound: dict[str, str]) -> None:
    parsed = parse_template(template)
    match = parsed.pattern.fullmatch(path)
    assert match is not None
    assert {parsed.variables[int(g[1:])]: v for g, v in match.groupdict().items()} == bound


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/shelves/{shelf_id}", "/v1/shelves/7/books"),
        ("/v1/{parent=shelves/*}/books", "/v1/racks/7/books"),
        ("/v1/{name=shelves/*/books/*}:move", "/v1/shelves/7/books/3"),
        ("/v1/{name=shelves/*/books/*}:move", "/v1/shelves/7/books/3:copy"),
    ],
)
def test_templates_refuse_other_paths(template: str, path: str) -> None:
    assert parse_template(template).pattern.fullmatch(path) is None


@pytest.mark.parametrize(
    "template",
    ["v1/x", "/v1/{a}/{a}", "/v1/{a=**}/b", "/v1/{a", "/v1/{a={b}}", "/v1/x:", "/v1/x:a:b", "/v1/{1a}", "/v1//x"],
)
def test_malformed_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_every_annotated_unary_binding_is_a_route_and_nothing_else() -> None:
    assert [(r.verb, r.template.text, r.method.name) for r in routes_of("shelves", SERVICE)] == [
        ("GET", "/v1/shelves/{shelf_id}", "GetShelf"),
        ("GET", "/v1/libraries/{library}/shelves/{shelf_id}", "GetShelf"),
        ("GET", "/v1/{parent=shelves/*}/books", "ListBooks"),
        ("GET", "/v1/{parent=shelves/*}/titles", "ListTitles"),
        ("POST", "/v1/{parent=shelves/*}/books", "CreateBook"),
        ("POST", "/v1/{name=shelves/*/books/*}:move", "MoveBook"),
        ("GET", "/v1/files/{path=**}", "GetFile"),
        ("GET", "/v1/{parent=shelves/*}/books:follow", "FollowBooks"),
    ]  # Compact has no annotation


def test_path_variables_and_additional_bindings() -> None:
    direct, through_library = over_http(
        ("GET", "/v1/shelves/7", None), ("GET", "/v1/libraries/central/shelves/8", None)
    )
    assert direct.status_code == 200, direct.text
    assert direct.json() == {"shelfId": "7", "theme": "sea"}  # int64 as a string: protobuf's JSON mapping
    assert through_library.json() == {"shelfId": "8", "library": "central", "theme": "sea"}


def test_query_parameters_fill_the_fields_the_path_leaves() -> None:
    answer = one(
        "GET",
        "/v1/shelves/7/books?page_size=2&authors=Austen&authors=Woolf&filter.genre=GENRE_FICTION"
        "&filter.inPrint=true&minRating=4.5&published_after=2020-01-01T00:00:00Z",
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["books"][1] == {"name": "shelves/7/books/Woolf", "title": "Woolf"}
    request = {k: v for k, v in SEEN[0].items() if not k.startswith("_")}
    assert request == {
        "parent": "shelves/7",
        "page_size": 2,
        "authors": ["Austen", "Woolf"],
        "filter": {"genre": "GENRE_FICTION", "in_print": True},
        "min_rating": 4.5,
        "published_after": "2020-01-01T00:00:00Z",
    }


def test_a_body_field_and_query_parameters_for_the_rest() -> None:
    answer = one("POST", "/v1/shelves/7/books?requested_by=ann", {"title": "Emma", "genre": "GENRE_FICTION"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"title": "Emma", "genre": "GENRE_FICTION"}
    assert SEEN[0]["parent"] == "shelves/7"
    assert SEEN[0]["requested_by"] == "ann"


def test_body_star_is_the_request_and_the_path_wins() -> None:
    answer = one(
        "POST", "/v1/shelves/7/books/3:move", {"name": "ignored", "destination": "shelves/9", "keepCopy": True}
    )
    assert answer.status_code == 200, answer.text
    assert SEEN[0]["name"] == "shelves/7/books/3"
    assert SEEN[0]["keep_copy"] is True


def test_double_star_binds_the_rest_of_the_path_and_response_body_answers_one_field() -> None:
    file, titles = over_http(("GET", "/v1/files/a/b/c.txt", None), ("GET", "/v1/shelves/1/titles?authors=X", None))
    assert file.json() == {"path": "a/b/c.txt", "size": "9"}
    assert titles.json() == [{"name": "shelves/1/books/X", "title": "X"}]


@pytest.mark.parametrize(
    ("verb", "path", "body", "field"),
    [
        ("GET", "/v1/shelves/7/books?colour=red", None, "colour"),
        ("GET", "/v1/shelves/7/books?filter.shade=red", None, "filter.shade"),
        ("GET", "/v1/shelves/7/books?page_size=many", None, "page_size"),
        ("GET", "/v1/shelves/7/books?filter.in_print=yes", None, "filter.in_print"),
        ("GET", "/v1/shelves/7/books?filter=x", None, "filter"),
        ("GET", "/v1/shelves/7/books?parent=shelves/8", None, "parent"),
        ("GET", "/v1/shelves/seven", None, "shelf_id"),
        ("POST", "/v1/shelves/7/books", {"title": "Emma", "pages": 3}, "book.pages"),
        ("POST", "/v1/shelves/7/books", b"{not json", ""),
        ("POST", "/v1/shelves/7/books/3:move", ["a list"], ""),
        ("POST", "/v1/shelves/7/books/3:move?keep_copy=true", {}, "keep_copy"),
        ("POST", "/v1/shelves/7/books/3:move", {"keep_copy": "maybe"}, "keep_copy"),
        ("GET", "/v1/shelves/7", b'{"a": 1}', ""),
    ],
)
def test_what_the_method_cannot_take_is_a_400_naming_the_field(verb: str, path: str, body: Any, field: str) -> None:
    answer = one(verb, path, body)
    assert answer.status_code == 400, answer.text
    status = answer.json()
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    [detail] = status["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"][0].get("field", "") == field, status
    assert not SEEN  # refused before any call


def test_backend_errors_are_google_rpc_status_with_the_http_status_of_their_code() -> None:
    missing, bad = over_http(("GET", "/v1/shelves/404", None), ("GET", "/v1/shelves/400", None))
    assert missing.status_code == 404
    assert missing.json() == {"code": 5, "message": "no shelf 404"}
    assert bad.status_code == 400
    detail = bad.json()["details"][0]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"] == [{"field": "shelf_id", "description": "must not be 400"}]
    assert error_details_pb2.BadRequest  # the type the JSON names is known to this process


def test_the_timeout_header_shortens_the_deadline_and_a_bad_one_is_refused() -> None:
    answer = one("GET", "/v1/shelves/7", headers={"grpc-timeout": "500m"})
    assert answer.status_code == 200
    assert 0 < SEEN[0]["_deadline"] < 0.6  # 500 ms, give or take gRPC's clock rounding (not 10 s)
    assert one("GET", "/v1/shelves/7", headers={"grpc-timeout": "soon"}).status_code == 400
    assert parse_timeout("2S") == 2.0
    assert parse_timeout("1500u") == pytest.approx(0.0015)


def test_traceparent_goes_on_with_the_call() -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    one("GET", "/v1/shelves/7", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert SEEN[0]["_metadata"]["traceparent"].split("-")[1] == trace_id


def test_unknown_paths_and_verbs() -> None:
    unknown, wrong_verb = over_http(("GET", "/v1/racks/1", None), ("DELETE", "/v1/shelves/7", None))
    assert unknown.status_code == 404
    assert wrong_verb.status_code == 405


def test_a_server_stream_is_newline_delimited_json_and_a_late_error_its_last_line() -> None:
    whole, broken, refused = over_http(
        ("GET", "/v1/shelves/2/books:follow?authors=A&authors=B", None),
        ("GET", "/v1/shelves/2/books:follow?authors=A&authors=broken", None),
        ("GET", "/v1/shelves/2/books:follow?page_size=-1", None),
    )
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in whole.text.splitlines()] == [
        {"result": {"name": "shelves/2/books/A", "title": "A"}},
        {"result": {"name": "shelves/2/books/B", "title": "B"}},
    ]
    *results, last = [json.loads(line) for line in broken.text.splitlines()]
    assert len(results) == 2
    assert last == {"error": {"code": grpc.StatusCode.DATA_LOSS.value[0], "message": "the shelf fell over"}}
    assert refused.status_code == 400  # an error before the first message is the answer itself
    assert refused.json()["message"] == "page_size must not be negative"
