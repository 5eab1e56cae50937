"""Unary gRPC methods called with JSON and answered in JSON, from their descriptors: what a web service's
JSON endpoint does with a service it calls, with no code per method.

    methods = unary_methods("books.order_history.v1.OrderHistoryService")  # its _pb2 module imported
    answer = await call_json(channel, methods["ListOrders"], {"userId": "7"})

`json_call` is that as a route, `/api/{service}/{method}` over the `Backend`s in `app.state.backends`:
GET takes the request from query parameters, POST from a JSON object; errors are JSON with the HTTP
status of their gRPC code, and the fields a BadRequest names.

Requests are read with protobuf's own JSON mapping (json_format: field names in lowerCamelCase or as
in the proto, numbers also as strings, enums by name); a field the message does not have, or a value
of the wrong type, raises `BadJson` naming it. Answers are written with the same mapping. A failed call
raises grpc.aio.AioRpcError; `http_status` gives the HTTP status of its code (google.rpc.Code's
canonical mapping, as grpc-gateway and Envoy's transcoder use it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool, json_format, message, message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from libs.interceptors.errors import field_violations

logger = logging.getLogger("http.grpc_json")
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class BadJson(ValueError):
    """A request the method's message cannot hold; the message names the field and why."""


@dataclass(frozen=True)
class Method:
    """A method of a gRPC service, as a caller with JSON sees it."""

    name: str
    path: str  # /package.Service/Method, as gRPC calls it
    request: type[message.Message]
    response: type[message.Message]
    description: MethodDescriptor

    @property
    def streams_responses(self) -> bool:
        return bool(self.description.server_streaming)

    def request_fields(self) -> list[str]:
        """The request's fields by their JSON names, in declaration order."""
        return [field.json_name for field in self.description.input_type.fields]


def unary_methods(service: str) -> dict[str, Method]:
    """The unary methods of the proto service `service` (its full name; its _pb2 module must have been
    imported), by name. Streaming methods are left out: one JSON answer cannot carry them."""
    return {name: method for name, method in callable_methods(service).items() if not method.streams_responses}


def callable_methods(service: str) -> dict[str, Method]:
    """The methods of `service` a caller with one JSON request can call: unary and server-streaming ones
    (a client-streaming method needs a stream of requests), by name."""
    found = descriptor_pool.Default().FindServiceByName(service)
    return {
        method.name: Method(
            method.name,
            f"/{found.full_name}/{method.name}",
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
            method,
        )
        for method in found.methods
        if not method.client_streaming
    }


def query_fields(method: Method, items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Query parameters (`?word=a&word=b&top=3`) as a JSON object for the request: a repeated field gets
    every value given, any other field the last one."""
    repeated = set()
    for field in method.description.input_type.fields:
        if field.is_repeated:
            repeated |= {field.name, field.json_name}
    fields: dict[str, Any] = {}
    for key, value in items:
        if key in repeated:
            fields.setdefault(key, []).append(value)
        else:
            fields[key] = value
    return fields


def parse_request(method: Method, fields: Mapping[str, Any]) -> message.Message:
    """`fields` (a JSON object, or query parameters: a list for a repeated field) as the method's request."""
    try:
        return json_format.ParseDict(dict(fields), method.request())
    except json_format.ParseError as error:
        raise BadJson(str(error)) from None


async def call_json(
    channel: grpc.aio.Channel, method: Method, fields: Mapping[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    """Calls `method` with the request `fields` make and returns its answer as a JSON object."""
    request = parse_request(method, fields)
    call = channel.unary_unary(
        method.path,
        request_serializer=method.request.SerializeToString,
        response_deserializer=method.response.FromString,
    )
    response = await call(request, timeout=timeout)
    return json_format.MessageToDict(response)


HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


@dataclass(frozen=True)
class Backend:
    """A gRPC service a web app calls: its full name, its channel, its unary methods, each call's time
    budget in seconds."""

    service: str
    channel: grpc.aio.Channel
    methods: Mapping[str, Method]
    timeout: float

    @classmethod
    def of(cls, service: str, channel: grpc.aio.Channel, timeout: float) -> Backend:
        """The backend for the proto service `service` (its _pb2 module imported), reached over `channel`."""
        return cls(service, channel, unary_methods(service), timeout)


async def serving_status(channel: grpc.aio.Channel, service: str, timeout: float) -> str:
    """What grpc.health.v1 says of `service` over `channel` (SERVING, NOT_SERVING...), or the code of the
    failed check (UNAVAILABLE, DEADLINE_EXCEEDED...): for a web app's /readyz, which reports its callees."""
    check = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        reply = await check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError as failed:
        return failed.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def backends_status(request: Request) -> dict[str, str]:
    """A readiness for libs/http/app.py's web_app: the health of every backend in `app.state.backends`."""
    backends = cast(Mapping[str, Backend], request.app.state.backends)
    # At once, not one after another: a probe must answer within the kubelet's timeout however many are down.
    checks = [serving_status(b.channel, b.service, min(b.timeout, 1.0)) for b in backends.values()]
    return dict(zip(backends, await asyncio.gather(*checks), strict=True))


def error(status: int, text: str, request: Request, **extra: Any) -> JSONResponse:
    """A refusal or failure as JSON, logged with the caller (and counted per route by web_app's metrics)."""
    log = logger.warning if status >= 500 else logger.info
    client = request.client.host if request.client else "?"
    log("%s %s from %s: %d %s", request.method, request.url.path, client, status, text)
    return JSONResponse({"error": text, **extra}, status_code=status)


async def request_fields(request: Request, method: Method) -> Mapping[str, Any]:
    """The request's fields: its query parameters (GET), or its JSON object body (POST)."""
    if request.method == "GET":
        return query_fields(method, request.query_params.multi_items())
    try:
        fields = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise BadJson(f"the body is not JSON: {problem}") from None
    if not isinstance(fields, dict):
        raise BadJson("the body must be a JSON object")
    return fields


async def json_call(request: Request) -> Response:
    """GET or POST /api/{service}/{method}: calls a unary method of a service in `app.state.backends`."""
    backends = cast(Mapping[str, Backend], request.app.state.backends)  # Starlette's state is untyped
    service, name = request.path_params["service"], request.path_params["method"]
    backend = backends.get(service)
    if backend is None:
        return error(404, f"no service {service!r} here", request, services=sorted(backends))
    method = backend.methods.get(name)
    if method is None:
        return error(404, f"{service} has no unary method {name!r}", request, methods=sorted(backend.methods))
    try:
        return JSONResponse(
            await call_json(backend.channel, method, await request_fields(request, method), backend.timeout)
        )
    except BadJson as problem:
        return error(400, str(problem), request)
    except grpc.aio.AioRpcError as failed:
        fields = [{"field": v.field, "description": v.description} for v in field_violations(failed)]
        text = failed.details() or failed.code().name
        return error(http_status(failed.code()), text, request, code=failed.code().name, fields=fields)
