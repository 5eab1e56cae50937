"""HTTP/JSON to gRPC transcoding from the `google.api.http` annotations of the services a web service calls.

Each unary or server-streaming method annotated with an HttpRule (google/api/http.proto) becomes a route, as
grpc-gateway and Envoy's JSON transcoder make them, from the descriptors alone, nothing written per method:

    rpc MoveBook(MoveBookRequest) returns (Book) {
      option (google.api.http) = {post: "/v1/{name=shelves/*/books/*}:move" body: "*"};
    }

answers `POST /v1/shelves/7/books/3:move` with the JSON of the Book. The HttpRule rules:

- the path template: literal segments, `*` (one segment), `**` (the rest), variables `{field.path}` and
  `{field.path=shelves/*}`, a custom verb (`:move`); `additional_bindings` are routes too;
- `body: "*"`: the JSON body is the request, the path variables set their fields, and there is no query
  parameter; `body: "field"`: the body is that field, the rest come from query parameters; no body: every
  field not bound by the path may come from a query parameter (`page_size=10&filter.genre=GENRE_FICTION`,
  a repeated field by repeating it), proto or JSON names;
- JSON both ways in protobuf's mapping (json_format); `response_body` answers with one field; a
  server-streaming method answers newline-delimited JSON, a `{"result": ...}` line per message.

A request the method cannot take (a field it does not have, a value of the wrong type, a query parameter
bound elsewhere, a body that is not JSON) is refused with 400 before any call. Every error is a
google.rpc.Status as JSON (`{"code", "message", "details"}`, a BadRequest's field violations among the
details) with the HTTP status of its gRPC code (grpc_json.HTTP_STATUS, the canonical mapping). The
`grpc-timeout` header (gRPC's format, `500m`, `2S`) shortens the call's deadline, never past the
backend's own budget; the request id (RequestIdMiddleware) and a W3C `traceparent` go on with the call.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]  # .pyi, no py.typed
from google.protobuf import any_pb2, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]  # .pyi, no py.typed
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.convertors import Convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from libs.http.grpc_json import Backend, Method, callable_methods, http_status, logger

VERBS = ("get", "put", "post", "delete", "patch")
TIMEOUT_HEADER = "grpc-timeout"
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_PROPAGATOR = TraceContextTextMapPropagator()
# Well-known types whose JSON form is a string, so a path variable or query parameter can hold one.
_STRING_FORMED = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
}


class TemplateError(ValueError):
    """An HttpRule path template that does not follow the grammar of google/api/http.proto."""


class BadRequest(ValueError):
    """A request the method cannot take: `field` (a field path, or "" for the request as a whole) and why."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}" if field else description)
        self.field, self.description = field, description


@dataclass(frozen=True)
class Template:
    """A parsed path template: the regex that matches a path, and the field path of each of its groups."""

    text: str
    pattern: re.Pattern[str]
    variables: tuple[str, ...]  # group g0, g1, ... binds this field path

    def example(self) -> str:
        """A path the template matches, each variable's `*` and `**` segments as "1" (for probes and tests)."""
        return re.sub(
            r"\{[^}=]+(?:=([^}]*))?\}", lambda m: (m.group(1) or "*").replace("**", "1").replace("*", "1"), self.text
        )


def _split(text: str, separator: str) -> list[str]:
    """`text` split at `separator` outside braces."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise TemplateError(f"unbalanced braces in {text!r}")
        if char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth:
        raise TemplateError(f"unbalanced braces in {text!r}")
    return [*parts, text[start:]]


def _segments(text: str, variables: list[str], nested: bool) -> str:
    """The regex of `Segments` (google/api/http.proto's grammar), adding each variable's field path."""
    segments = _split(text, "/")
    parts = []
    for position, segment in enumerate(segments):
        if segment == "**":
            if position != len(segments) - 1:
                raise TemplateError("`**` must be the last segment")
            parts.append(".+")
        elif segment == "*":
            parts.append("[^/]+")
        elif segment.startswith("{") and segment.endswith("}"):
            if nested:
                raise TemplateError("a variable cannot hold another")
            field, _, inner = segment[1:-1].partition("=")
            if "**" in inner and position != len(segments) - 1:
                raise TemplateError("`**` must be the last segment")
            if not _FIELD_PATH.fullmatch(field):
                raise TemplateError(f"{field!r} is not a field path")
            variables.append(field)
            group = f"g{len(variables) - 1}"
            parts.append(f"(?P<{group}>{_segments(inner or '*', variables, nested=True)})")
        elif segment and not set(segment) & set("{}*:"):
            parts.append(re.escape(segment))
        else:
            raise TemplateError(f"bad segment {segment!r}")
    return "/".join(parts)


def parse_template(text: str) -> Template:
    """The Template of an HttpRule path such as `/v1/{name=shelves/*/books/*}:move`."""
    if not text.startswith("/"):
        raise TemplateError(f"{text!r} does not start with /")
    path, verb = text[1:], ""
    last = _split(path, "/")[-1]
    pieces = _split(last, ":")
    if len(pieces) > 2:
        raise TemplateError(f"{text!r} has more than one verb")
    if len(pieces) == 2:
        verb = pieces[1]
        path = path[: len(path) - len(verb) - 1]
        if not verb or not re.fullmatch(r"[A-Za-z0-9_.~-]+", verb):
            raise TemplateError(f"bad verb {verb!r}")
    variables: list[str] = []
    regex = "/" + _segments(path, variables, nested=False) + (":" + re.escape(verb) if verb else "")
    if len(set(variables)) != len(variables):
        raise TemplateError(f"{text!r} binds a field twice")
    return Template(text, re.compile(regex), tuple(variables))


@dataclass(frozen=True)
class HttpRoute:
    """One HTTP binding of a unary method of a backend."""

    verb: str  # GET, POST, ...
    template: Template
    body: str  # "" (no body), "*" (the request) or a field path
    response_body: str  # "" (the response) or a field
    method: Method
    backend: str  # its key in app.state.backends


def http_rules(method: Method) -> list[http_pb2.HttpRule]:
    """The method's HttpRule and its additional bindings; empty when it has no annotation."""
    options = method.description.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule = options.Extensions[annotations_pb2.http]
    return [rule, *rule.additional_bindings]


def _field(message: Descriptor, path: str) -> list[FieldDescriptor]:
    """The fields along `path` (proto or JSON names), or BadRequest naming the part that is not one."""
    found, walked = [], []
    for name in path.split("."):
        walked.append(name)
        field = message.fields_by_name.get(name) or next((f for f in message.fields if f.json_name == name), None)
        if field is None:
            raise BadRequest(".".join(walked), f"{message.full_name} has no field {name!r}")
        found.append(field)
        if field.message_type is not None:
            message = field.message_type
    return found


def routes_of(name: str, service: str) -> list[HttpRoute]:
    """Every HTTP binding of every annotated unary or server-streaming method of `backend`, checked
    against its messages."""
    routes = []
    for method in callable_methods(service).values():
        for rule in http_rules(method):
            kind = rule.WhichOneof("pattern")
            if kind == "custom":
                verb, path = rule.custom.kind.upper(), rule.custom.path
            elif kind in VERBS:
                verb, path = kind.upper(), getattr(rule, kind)
            else:
                raise TemplateError(f"{method.path}: an HttpRule without a pattern")
            template = parse_template(path)
            request = method.description.input_type
            try:
                for variable in template.variables:
                    _field(request, variable)
                if rule.body not in ("", "*"):
                    _field(request, rule.body)
                if rule.response_body:
                    _field(method.description.output_type, rule.response_body)
            except BadRequest as problem:
                raise TemplateError(f"{method.path}: {path}: {problem}") from None
            routes.append(HttpRoute(verb, template, rule.body, rule.response_body, method, name))
    return routes


def _set(fields: dict[str, Any], path: Sequence[FieldDescriptor], value: Any) -> None:
    """Sets `value` at `path` in the JSON object `fields` (a repeated leaf gets it appended)."""
    for field in path[:-1]:
        inner = fields.setdefault(field.name, {})
        if not isinstance(inner, dict):
            raise BadRequest(field.name, "is set both as a whole and by its fields")
        fields = inner
    leaf = path[-1]
    if leaf.is_repeated:
        fields.setdefault(leaf.name, []).append(value)
    else:
        fields[leaf.name] = value


def _scalar(path: Sequence[FieldDescriptor], text: str, where: str) -> Any:
    """A path variable's or query parameter's text as the JSON value of its field."""
    field = path[-1]
    name = ".".join(f.name for f in path)
    if field.message_type is not None and field.message_type.full_name not in _STRING_FORMED:
        raise BadRequest(name, f"is a message ({field.message_type.full_name}): it cannot come from {where}")
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text not in ("true", "false"):
            raise BadRequest(name, f"must be true or false, got {text!r}")
        return text == "true"
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if text in ("NaN", "Infinity", "-Infinity"):
            return text
        try:
            return float(text)
        except ValueError:
            raise BadRequest(name, f"must be a number, got {text!r}") from None
    return text  # integers (protobuf's JSON takes them quoted), strings, enums by name or number


def build_request(
    route: HttpRoute, path_values: Mapping[str, str], query: Iterable[tuple[str, str]], body: bytes
) -> Any:
    """The request message of `route` from the matched path, the query parameters and the body."""
    request_type = route.method.description.input_type
    fields: dict[str, Any] = {}
    if route.body:
        try:
            document = json.loads(body) if body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as problem:
            raise BadRequest("", f"the body is not JSON: {problem}") from None
        if route.body == "*":
            if not isinstance(document, dict):
                raise BadRequest("", "the body must be a JSON object: it is the request")
            fields = document
        else:
            _set(fields, _field(request_type, route.body), document)
    elif body.strip():
        raise BadRequest("", f"{route.verb} {route.template.text} takes no body")
    bound = {route.body} if route.body not in ("", "*") else set()
    for variable, text in path_values.items():
        path = _field(request_type, variable)
        fields_path = ".".join(f.name for f in path)
        bound.add(fields_path)
        _set_over(fields, path, _scalar(path, text, "the path"))
    for key, text in query:
        if route.body == "*":
            raise BadRequest(key, "query parameters are not taken: the body is the whole request")
        path = _field(request_type, key)
        name = ".".join(f.name for f in path)
        if any(name == b or name.startswith(b + ".") or b.startswith(name + ".") for b in bound):
            raise BadRequest(name, "is set by the path or the body, not by a query parameter")
        _set(fields, path, _scalar(path, text, "a query parameter"))
    try:
        return json_format.ParseDict(fields, route.method.request())
    except json_format.ParseError as error:
        raise BadRequest(*_violation(str(error))) from None


def _set_over(fields: dict[str, Any], path: Sequence[FieldDescriptor], value: Any) -> None:
    """Sets a path variable's value, which wins over the body's (grpc-gateway's rule)."""
    for field in path[:-1]:
        inner = fields.get(field.name)
        if not isinstance(inner, dict):
            inner = fields[field.name] = {}
        fields = inner
    fields[path[-1].name] = value


_NO_FIELD = re.compile(r'has no field named "([^"]+)" at "([^"]+)"')
_FAILED_FIELD = re.compile(r"Failed to parse ([\w.]+) field: (.*?)(?: at \"[^\"]*\")?\.?$", re.S)


def _violation(error: str) -> tuple[str, str]:
    """The field and the description of a json_format.ParseError's message."""
    missing = _NO_FIELD.search(error)
    if missing:
        where = missing.group(2).split(".")[1:]  # "Request.book" → the field path below the request
        return ".".join([*where, missing.group(1)]), "is not a field of the message"
    failed = _FAILED_FIELD.search(error.splitlines()[0])
    if failed:
        return failed.group(1), failed.group(2)
    return "", error.splitlines()[0]


def parse_timeout(value: str) -> float:
    """A `grpc-timeout` header (gRPC's format: up to 8 digits and a unit of H M S m u n) in seconds."""
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise BadRequest(TIMEOUT_HEADER, f"must be up to 8 digits and a unit (H, M, S, m, u, n), got {value!r}")
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def status_json(status: status_pb2.Status) -> dict[str, Any]:
    """A google.rpc.Status as JSON; details of a type this process does not know are left out."""
    known = status_pb2.Status(code=status.code, message=status.message)
    for detail in status.details:
        try:
            json_format.MessageToDict(detail)
        except (TypeError, KeyError, json_format.SerializeToJsonError):
            continue
        known.details.append(detail)
    return json_format.MessageToDict(known)


def refusal(request: Request, problem: BadRequest) -> JSONResponse:
    """400 with a google.rpc.Status of INVALID_ARGUMENT whose BadRequest names the field."""
    detail = any_pb2.Any()
    violation = error_details_pb2.BadRequest.FieldViolation(field=problem.field, description=problem.description)
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(problem), details=[detail])
    _log(request, 400, str(problem))
    return JSONResponse(status_json(status), status_code=400)


def _status_of(failed: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The backend's google.rpc.Status: the rich one it sent, or its code and message."""
    return rpc_status.from_call(cast(grpc.Call, failed)) or status_pb2.Status(
        code=failed.code().value[0], message=failed.details() or failed.code().name
    )


def failure(request: Request, failed: grpc.aio.AioRpcError) -> JSONResponse:
    """The backend's status (with its details) as JSON, with the HTTP status of its code."""
    status = _status_of(failed)
    answer = http_status(failed.code())
    _log(request, answer, f"{failed.code().name}: {status.message}")
    return JSONResponse(status_json(status), status_code=answer)


def _log(request: Request, status: int, text: str) -> None:
    log = logger.warning if status >= 500 else logger.info
    client = request.client.host if request.client else "?"
    log("%s %s from %s: %d %s", request.method, request.url.path, client, status, text)


def _response_json(route: HttpRoute, response: Any) -> Any:
    answer = json_format.MessageToDict(response)
    if not route.response_body:
        return answer
    field = route.method.description.output_type.fields_by_name[route.response_body]
    return answer.get(field.json_name, [] if field.is_repeated else None)


async def transcode(request: Request) -> Response:
    """Answers one HTTP request of a route made by `transcoded_routes`."""
    route: HttpRoute = request.scope["route"].http_route
    backend = cast(Mapping[str, Backend], request.app.state.backends)[route.backend]
    path_values = {route.template.variables[int(group[1:])]: value for group, value in request.path_params.items()}
    try:
        message = build_request(route, path_values, request.query_params.multi_items(), await request.body())
        timeout = backend.timeout
        if TIMEOUT_HEADER in request.headers:
            timeout = min(timeout, parse_timeout(request.headers[TIMEOUT_HEADER]))
    except BadRequest as problem:
        return refusal(request, problem)
    # The caller's trace goes on: the client interceptors start their span under it and send traceparent.
    token = otel_context.attach(_PROPAGATOR.extract(request.headers))
    try:
        if route.method.streams_responses:
            return await _stream(request, route, backend.channel, message, timeout)
        call = backend.channel.unary_unary(
            route.method.path,
            request_serializer=route.method.request.SerializeToString,
            response_deserializer=route.method.response.FromString,
        )
        response = await call(message, timeout=timeout)
    except grpc.aio.AioRpcError as failed:
        return failure(request, failed)
    finally:
        otel_context.detach(token)
    return JSONResponse(_response_json(route, response))


async def _stream(
    request: Request, route: HttpRoute, channel: grpc.aio.Channel, message: Any, timeout: float
) -> Response:
    """A server-streaming method's answers as newline-delimited JSON, as grpc-gateway writes them: a line
    `{"result": ...}` per message, and `{"error": <google.rpc.Status>}` if the call fails after the first
    (before it, the error is the answer, with its HTTP status)."""
    call = channel.unary_stream(
        route.method.path,
        request_serializer=route.method.request.SerializeToString,
        response_deserializer=route.method.response.FromString,
    )
    responses = call(message, timeout=timeout)
    stream = aiter(responses)
    try:
        first = [await anext(stream)]  # an AioRpcError here is the answer (transcode turns it into one)
    except StopAsyncIteration:
        first = []

    def line(item: Any) -> bytes:
        return json.dumps({"result": _response_json(route, item)}).encode() + b"\n"

    async def lines() -> AsyncIterator[bytes]:
        try:
            for item in first:
                yield line(item)
            async for item in stream:
                yield line(item)
        except grpc.aio.AioRpcError as failed:
            _log(request, 200, f"the stream broke: {failed.code().name}: {failed.details()}")
            yield json.dumps({"error": status_json(_status_of(failed))}).encode() + b"\n"
        finally:
            responses.cancel()  # a client that went away mid-stream ends the call

    return StreamingResponse(lines(), media_type="application/x-ndjson")


class TranscodedRoute(Route):
    """A Starlette route matching an HttpRule template (which Starlette's own path syntax cannot say:
    `**`, variables over several segments, field paths); its `path` is the template, the route label of
    the request metrics."""

    def __init__(self, http_route: HttpRoute) -> None:
        # Starlette compiles a path of its own syntax, where the template's braces would be its parameters.
        literal = http_route.template.text.replace("{", "<").replace("}", ">")
        super().__init__(literal, transcode, methods=[http_route.verb])
        self.path = http_route.template.text
        self.path_regex = re.compile("^" + http_route.template.pattern.pattern + "$")
        self.param_convertors = {f"g{i}": _VALUE for i in range(len(http_route.template.variables))}
        self.http_route = http_route


class _Value(Convertor[str]):
    """A path variable's text, as matched (Starlette converts path parameters through one of these)."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


_VALUE = _Value()


def transcoded_routes(backends: Mapping[str, Backend]) -> list[TranscodedRoute]:
    """A route for every HTTP binding of every backend, refusing two bindings of the same verb and path."""
    routes: list[TranscodedRoute] = []
    seen: dict[tuple[str, str], str] = {}
    for name, backend in backends.items():
        for http_route in routes_of(name, backend.service):
            key = (http_route.verb, http_route.template.pattern.pattern)
            if key in seen:
                raise TemplateError(
                    f"{http_route.verb} {http_route.template.text} is bound by both {seen[key]} and "
                    f"{http_route.method.path}"
                )
            seen[key] = http_route.method.path
            routes.append(TranscodedRoute(http_route))
    return routes
