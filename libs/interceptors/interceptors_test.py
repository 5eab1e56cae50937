"""The middleware stack against real in-process servers, in both forms: grpc.aio and sync grpc.server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_interceptor.exceptions import NotFound
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from libs.interceptors import AccessPolicy, client_interceptors, instrument, server_middleware
from libs.interceptors.access_log import AccessLog
from libs.interceptors.batched_lines import flush_all
from libs.interceptors.core import Call, Middleware
from libs.interceptors.deadlines import time_remaining
from libs.interceptors.errors import MAX_VIOLATIONS, BadRequest, FieldViolation, field_violations
from libs.interceptors.exception_to_status import INTERNAL_ERROR_DETAILS, ExceptionToStatus
from libs.interceptors.request_id import current_request_id, use_request_id
from libs.interceptors.tracing import current_trace_id

SERVICE = "test.v1.Probe"
KINDS = ["aio", "sync"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
WAIT = 10.0  # seconds: the bound of every wait for something to happen (they normally take milliseconds)
ACCESS_FIELDS = {
    "timestamp", "service", "method", "code", "duration_ms", "peer", "peer_address", "request_id", "trace_id",
}  # fmt: skip


def outcome(request: bytes) -> bytes:
    """What the handler does for a request, the same in both forms (aborts are form-specific)."""
    if request == b"not-found":
        raise NotFound("no such book")
    if request == b"bad-request":
        raise BadRequest([FieldViolation("max_results", "must be between 1 and 20"), FieldViolation("user_id", "<1")])
    if request == b"thousand-bad-fields":  # one violation per entry of a long repeated field, long texts
        raise BadRequest([FieldViolation(f"items[{i}]" * 20, "x" * 1000) for i in range(1000)])
    if request == b"crash":
        raise RuntimeError("secret: /var/lib/catalog.db is corrupt")
    if request == b"whoami":
        return json.dumps({"request_id": current_request_id(), "trace_id": current_trace_id()}).encode()
    if request == b"deadline":  # what an outgoing call made now would get
        return json.dumps(time_remaining()).encode()
    return b"ok:" + request


@dataclass
class Server:
    kind: str
    port: int
    registry: CollectorRegistry
    spans: InMemorySpanExporter
    provider: TracerProvider
    release: threading.Event  # b"hold" requests wait in the handler until it is set
    cancelled_with: list[float] = field(default_factory=list)  # aio: time_remaining() of each cancelled b"slow"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")


def unary_unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    # Raw bytes both ways. gRPC's (de)serializers default to None; grpc-stubs makes them required.
    return channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)


def unary_stream(channel: grpc.Channel, method: str) -> grpc.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Polls `condition` until it holds (True) or `timeout` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@contextlib.contextmanager
def serve(
    kind: str, downstream: Server | None = None, name: str = "probe", provider=None, middleware=None
) -> Iterator[Server]:
    """A server of `kind` with the full stack (or just `middleware`); `forward` requests go on to
    `downstream` through the client interceptors of the same kind."""
    registry = CollectorRegistry()
    spans = InMemorySpanExporter()
    if provider is None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
    options = {"registry": registry, "tracer_provider": provider}
    target = f"127.0.0.1:{downstream.port}" if downstream else None
    server = Server(kind, 0, registry, spans, provider, threading.Event())  # the port once it listens
    if kind == "sync":
        yield from _serve_sync(server, name, options, target, middleware)
    else:
        yield from _serve_aio(server, name, options, target, middleware)


def _serve_sync(server: Server, name, options, target, middleware) -> Iterator[Server]:
    downstream = None
    if target:
        interceptors = client_interceptors(asynchronous=False, **options)
        downstream = grpc.intercept_channel(grpc.insecure_channel(target), *interceptors)

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"slow":
            time.sleep(0.5)
        if request == b"hold":
            server.release.wait(WAIT)
        if request == b"abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "handler said no")
        if request == b"forward":
            assert downstream is not None
            return unary_unary(downstream, "Unary")(b"whoami", timeout=5)
        return outcome(request)

    def stream(request: bytes, context: grpc.ServicerContext):
        yield b"first"
        outcome(request)
        yield b"second"

    grpc_server = grpc.server(ThreadPoolExecutor(4))
    instrumented = instrument(grpc_server, name, asynchronous=False, middleware=middleware, **options)
    instrumented.add_generic_rpc_handlers((_handlers(unary, stream),))
    instrumented.finish()
    server.port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield server
    finally:
        server.release.set()  # no handler left waiting
        grpc_server.stop(None)


def _serve_aio(server: Server, name, options, target, middleware) -> Iterator[Server]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    state: dict = {}

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"slow":
            try:
                await asyncio.sleep(0.5)  # gRPC cancels this when the caller's deadline passes
            except asyncio.CancelledError:
                server.cancelled_with.append(context.time_remaining())
                raise
        if request == b"hold":
            await asyncio.to_thread(server.release.wait, WAIT)
        if request == b"abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "handler said no")
        if request == b"forward":
            return await state["downstream"].unary_unary(f"/{SERVICE}/Unary")(b"whoami", timeout=5)
        return outcome(request)

    async def stream(request: bytes, context: grpc.aio.ServicerContext):
        yield b"first"
        outcome(request)
        yield b"second"

    async def start() -> int:
        if target:
            state["downstream"] = grpc.aio.insecure_channel(target, interceptors=client_interceptors(**options))
        aio_server = grpc.aio.server()
        instrumented = instrument(aio_server, name, middleware=middleware, **options)
        instrumented.add_generic_rpc_handlers((_handlers(unary, stream),))
        instrumented.finish()
        port = aio_server.add_insecure_port("127.0.0.1:0")
        await aio_server.start()
        state["server"] = aio_server
        return port

    server.port = asyncio.run_coroutine_threadsafe(start(), loop).result(WAIT)
    try:
        yield server
    finally:
        server.release.set()  # no handler left waiting
        asyncio.run_coroutine_threadsafe(state["server"].stop(None), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def seconds(request: Duration, context: object) -> bytes:
    """A handler whose request is a real message: the pipeline decodes it (or refuses it)."""
    return str(request.seconds).encode()


def _handlers(unary, stream) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Decoded": grpc.unary_unary_rpc_method_handler(seconds, request_deserializer=Duration.FromString),
        },
    )


def counts(registry: CollectorRegistry, method: str) -> dict[str, float]:
    """grpc_server_handled_total of a unary `method`, by code."""
    found = {}
    for code in grpc.StatusCode:
        labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": "unary", "grpc_code": code.name}
        value = registry.get_sample_value("grpc_server_handled_total", labels)
        if value:
            found[code.name] = value
    return found


def call(server: Server, request: bytes, method: str = "Unary", metadata=()) -> bytes:
    with server.channel() as channel:
        return unary_unary(channel, method)(request, timeout=5, metadata=metadata)


def fail(server: Server, request: bytes, method: str = "Unary") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(server, request, method)
    return raised.value


# --- exception → status ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_named_exceptions_become_their_status(kind: str) -> None:
    with serve(kind) as server:
        assert call(server, b"hello") == b"ok:hello"
        error = fail(server, b"not-found")
        assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "no such book")


@pytest.mark.parametrize("kind", KINDS)
def test_bad_request_carries_every_field_violation(kind: str) -> None:
    with serve(kind) as server:
        error = fail(server, b"bad-request")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "max_results: must be between 1 and 20; user_id: <1"
        assert field_violations(error) == [
            FieldViolation("max_results", "must be between 1 and 20"),
            FieldViolation("user_id", "<1"),
        ]


def test_violations_of_a_status_that_contradicts_its_call_are_ignored() -> None:
    """A status in the trailers whose code is not the call's (another server's, or forged) names no fields."""
    status = BadRequest([FieldViolation("user_id", "<1")]).status_proto()

    def failed(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
        trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details=status.message, debug_error_string="")

    assert field_violations(failed(grpc.StatusCode.NOT_FOUND)) == []
    assert field_violations(failed(grpc.StatusCode.INVALID_ARGUMENT)) == [FieldViolation("user_id", "<1")]


@pytest.mark.parametrize("kind", KINDS)
def test_a_thousand_violations_still_reach_the_caller_as_invalid_argument(kind: str) -> None:
    with serve(kind) as server:
        error = fail(server, b"thousand-bad-fields")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED for oversized trailers
    violations = field_violations(error)
    assert len(violations) == MAX_VIOLATIONS
    assert violations[-1] == FieldViolation("", f"and {1000 - MAX_VIOLATIONS + 1} more violations")
    assert all(len(v.field) <= 64 for v in violations)
    assert all(len(v.description) <= 120 for v in violations)
    details = error.details()
    assert details is not None
    assert len(details) <= 600
    # Key and value pairs, which grpc-stubs types as objects with .key and .value.
    trailers = cast("tuple[tuple[str, str | bytes], ...]", error.trailing_metadata())
    assert sum(len(value) for _, value in trailers) < 4 * 1024


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_that_does_not_decode_is_invalid_argument_counted_and_logged_once(kind: str, caplog) -> None:
    fresh_access_log(caplog)
    with serve(kind) as server, server.channel() as channel:
        decoded = unary_unary(channel, "Decoded")
        with pytest.raises(grpc.RpcError) as raised:
            decoded(b"\xff\xff\xff\xff", timeout=5)  # not a protobuf message
        assert decoded(Duration(seconds=7).SerializeToString(), timeout=5) == b"7"
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "the request is not a valid google.protobuf.Duration"
    assert counts(server.registry, "Decoded") == {"INVALID_ARGUMENT": 1.0, "OK": 1.0}
    assert [line["code"] for line in access_lines(caplog) if line["method"].endswith("/Decoded")] == [
        "INVALID_ARGUMENT",
        "OK",
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "Decoded" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].exc_info is None  # a broken client is not a bug: no traceback


@pytest.mark.parametrize("kind", KINDS)
def test_unexpected_exception_is_internal_without_details(kind: str) -> None:
    with serve(kind) as server:
        error = fail(server, b"crash")
        assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, INTERNAL_ERROR_DETAILS)
        # Both forms' errors have it; grpc-stubs declares it on grpc.aio.AioRpcError only.
        assert "secret" not in str(error.debug_error_string())  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", KINDS)
def test_handler_abort_keeps_its_status(kind: str) -> None:
    with serve(kind) as server:
        error = fail(server, b"abort")
        assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "handler said no")


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_failure_after_the_first_message(kind: str) -> None:
    with serve(kind) as server, server.channel() as channel:
        received: list[bytes] = []
        with pytest.raises(grpc.RpcError) as raised:
            received.extend(unary_stream(channel, "Stream")(b"crash", timeout=5))
        assert received == [b"first"]
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert list(unary_stream(channel, "Stream")(b"fine", timeout=5)) == [b"first", b"second"]


# --- error log ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unexpected_exception_logged_once_with_method_and_traceback(kind: str, caplog) -> None:
    with caplog.at_level(logging.INFO), serve(kind) as server:
        for request in (b"hello", b"not-found", b"bad-request", b"abort", b"crash"):
            with contextlib.suppress(grpc.RpcError):
                call(server, request)
    errors = [r for r in caplog.records if r.name == "libs.interceptors.error_logging"]
    assert [r.getMessage() for r in errors] == [f"unexpected exception in /{SERVICE}/Unary"]
    assert errors[0].exc_info[0] is RuntimeError
    assert "Traceback" in caplog.text


# --- access log -----------------------------------------------------------------------------------


def fresh_access_log(caplog) -> None:
    """Drops what earlier tests' servers still had queued, then captures INFO."""
    flush_all()
    caplog.clear()
    caplog.set_level(logging.INFO)


def access_lines(caplog) -> list[dict]:
    flush_all()
    batches = [r.getMessage() for r in caplog.records if r.name == "access"]
    return [json.loads(line) for batch in batches for line in batch.split("\n")]


@pytest.mark.parametrize("kind", KINDS)
def test_access_log_is_one_json_line_per_rpc(kind: str, caplog) -> None:
    fresh_access_log(caplog)
    with serve(kind, name="recommendations") as server:
        call(server, b"hello", metadata=(("x-request-id", "req-123"), ("traceparent", TRACEPARENT)))
        fail(server, b"bad-request")
        fail(server, b"crash")
        fail(server, b"nothing", method="Missing")
    lines = access_lines(caplog)
    assert [line["code"] for line in lines] == ["OK", "INVALID_ARGUMENT", "INTERNAL", "UNIMPLEMENTED"]
    for line in lines:
        assert set(line) == ACCESS_FIELDS
        assert line["service"] == "recommendations"
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", line["timestamp"])
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] >= 0
        assert line["peer"] is None  # plaintext: no certificate identity
        assert re.match(r"^[0-9a-f]{32}$", line["trace_id"])
    first = lines[0]
    assert (first["method"], first["request_id"], first["trace_id"]) == (f"/{SERVICE}/Unary", "req-123", TRACE_ID)
    assert first["peer_address"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert re.match(r"^[0-9a-f]{32}$", lines[1]["request_id"])  # made up when the caller sent none
    assert lines[3]["method"] == "unknown"
    assert lines[3]["peer_address"].startswith(("ipv4:127.0.0.1:", "ipv6:"))  # was null: no context to ask


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_request_id_is_replaced(kind: str, caplog) -> None:
    fresh_access_log(caplog)
    with serve(kind) as server:
        call(server, b"hello", metadata=(("x-request-id", 'x" forged=1'),))
    assert re.match(r"^[0-9a-f]{32}$", access_lines(caplog)[0]["request_id"])


# --- metrics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_metric_values_after_known_calls(kind: str) -> None:
    with serve(kind) as server:
        call(server, b"hello")
        fail(server, b"bad-request")
        fail(server, b"crash")
        fail(server, b"nothing", method="Missing")
        fail(server, b"nothing", method="Missing2")
    value = server.registry.get_sample_value
    unary = {"grpc_service": SERVICE, "grpc_method": "Unary", "grpc_type": "unary"}
    unknown = {"grpc_service": "unknown", "grpc_method": "unknown", "grpc_type": "unary"}
    assert value("grpc_server_started_total", unary) == 3
    for code in ("OK", "INVALID_ARGUMENT", "INTERNAL"):
        assert value("grpc_server_handled_total", {**unary, "grpc_code": code}) == 1, code
    assert value("grpc_server_handling_seconds_count", unary) == 3
    assert value("grpc_server_handling_seconds_bucket", {**unary, "le": "10.0"}) == 3
    assert value("grpc_server_in_flight", unary) == 0
    assert value("grpc_server_handled_total", {**unknown, "grpc_code": "UNIMPLEMENTED"}) == 2  # collapsed


@pytest.mark.parametrize("kind", KINDS)
def test_a_call_past_its_deadline_is_counted_as_such(kind: str) -> None:
    with serve(kind) as server:
        with server.channel() as channel:
            grpc.channel_ready_future(channel).result(WAIT)  # the 0.2 s are the call's, not the connection's
            with pytest.raises(grpc.RpcError) as raised:
                unary_unary(channel, "Unary")(b"slow", timeout=0.2)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The handler finishes (sync) or is cancelled (aio) on the server after the caller gave up.
        assert wait_for(lambda: bool(counts(server.registry, "Unary")))
    if server.cancelled_with and server.cancelled_with[0] > 0:
        # aio, under load: the caller's cancellation (sent when its deadline passed) reached the server before the
        # server's own deadline, which runs from when it read the request, later than the caller sent it. The
        # server cannot tell why the caller cancelled; the middleware goes by the server's clock.
        assert counts(server.registry, "Unary") in ({"CANCELLED": 1.0}, {"DEADLINE_EXCEEDED": 1.0})
    else:
        assert counts(server.registry, "Unary") == {"DEADLINE_EXCEEDED": 1.0}
    unary = {"grpc_service": SERVICE, "grpc_method": "Unary", "grpc_type": "unary"}
    assert server.registry.get_sample_value("grpc_server_in_flight", unary) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_client_metrics_count_outgoing_calls(kind: str) -> None:
    with serve(kind) as downstream, serve(kind, downstream=downstream) as front:
        call(front, b"forward")
    labels = {"grpc_service": SERVICE, "grpc_method": "Unary", "grpc_type": "unary", "grpc_code": "OK"}
    assert front.registry.get_sample_value("grpc_client_handled_total", labels) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_in_flight_counts_the_calls_being_handled(kind: str) -> None:
    unary = {"grpc_service": SERVICE, "grpc_method": "Unary", "grpc_type": "unary"}

    def in_flight() -> float | None:
        return server.registry.get_sample_value("grpc_server_in_flight", unary)

    with serve(kind) as server, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(call, server, b"hold") for _ in range(2)]  # both wait in the handler
        assert wait_for(lambda: in_flight() == 2)
        assert not any(future.done() for future in held)
        server.release.set()
        assert [future.result(WAIT) for future in held] == [b"ok:hold"] * 2
        assert wait_for(lambda: in_flight() == 0)
    assert in_flight() == 0


# --- deadlines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_handler_sees_the_time_its_caller_has_left(kind: str) -> None:
    with serve(kind) as server:
        before = time.monotonic()
        remaining = json.loads(call(server, b"deadline"))  # call() gives 5 s
        elapsed = time.monotonic() - before
        with server.channel() as channel:
            unbounded = json.loads(unary_unary(channel, "Unary")(b"deadline"))
    # 5 s less the part of them that had passed when the handler asked, however long the call took.
    assert 5 - elapsed - 0.1 < remaining <= 5.1  # gRPC rounds deadlines up a little
    assert unbounded is None


# --- propagation across two hops ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_request_id_and_trace_context_cross_two_hops(kind: str, caplog) -> None:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    fresh_access_log(caplog)
    with (
        serve(kind, name="back", provider=provider) as back,
        serve(kind, downstream=back, name="front", provider=provider) as front,
    ):
        seen = json.loads(call(front, b"forward", metadata=(("x-request-id", "abc-1"), ("traceparent", TRACEPARENT))))
    assert seen == {"request_id": "abc-1", "trace_id": TRACE_ID}
    by_service = {line["service"]: line for line in access_lines(caplog)}
    assert by_service["front"]["request_id"] == by_service["back"]["request_id"] == "abc-1"
    assert by_service["front"]["trace_id"] == by_service["back"]["trace_id"] == TRACE_ID

    servers = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    clients = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(servers) == 2
    assert len(clients) == 1
    assert {format(s.context.trace_id, "032x") for s in servers + clients} == {TRACE_ID}
    front_span, back_span = sorted(servers, key=started)
    assert parent_id(clients[0]) == front_span.context.span_id
    assert parent_id(back_span) == clients[0].context.span_id
    attributes = dict(front_span.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == SERVICE
    assert attributes["rpc.method"] == "Unary"
    assert attributes["rpc.grpc.status_code"] == 0


def started(span: ReadableSpan) -> int:
    assert span.start_time is not None
    return span.start_time


def parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None
    return span.parent.span_id


@pytest.mark.parametrize("kind", KINDS)
def test_failed_calls_mark_the_span_as_error(kind: str) -> None:
    with serve(kind) as server:
        fail(server, b"crash")
    [span] = server.spans.get_finished_spans()
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert span.status.status_code.name == "ERROR"
    assert span.events[0].name == "exception"


# --- ordering -------------------------------------------------------------------------------------


def test_stack_order() -> None:
    names = [type(m).__name__ for m in server_middleware("x", registry=CollectorRegistry())]
    assert names == [
        "RequestId", "Tracing", "ServerMetrics", "AccessLog", "ExceptionToStatus", "ErrorLogging", "DeadlineRecorder",
    ]  # fmt: skip
    with_policy = server_middleware("x", policy=AccessPolicy({}), registry=CollectorRegistry())
    assert [type(m).__name__ for m in with_policy][-2:] == ["Authorization", "DeadlineRecorder"]


class Recorder(Middleware):
    """Notes its hooks in `log`; refuses the call in `begin` if `refuse`."""

    def __init__(self, name: str, log: list[str], refuse: bool = False) -> None:
        self.name, self.log, self.refuse = name, log, refuse

    def begin(self, call: Call) -> str:
        self.log.append(f"begin {self.name}")
        if self.refuse:
            raise NotFound("refused")
        return f"{self.name}'s state"

    def end(self, call: Call, state: str | None) -> None:
        self.log.append(f"end {self.name} {call.code_name} with {state}")


@pytest.mark.parametrize("kind", KINDS)
def test_ends_run_in_reverse_and_only_for_middleware_that_began(kind: str) -> None:
    log: list[str] = []
    refuser = Recorder("b", log, refuse=True)
    stack = [Recorder("a", log), ExceptionToStatus(), refuser, Recorder("c", log)]
    with serve(kind, middleware=stack) as server:
        assert fail(server, b"hello").code() == grpc.StatusCode.NOT_FOUND
        assert wait_for(lambda: len(log) >= 4)  # in case the server ends the call just after answering
        # Each end gets what its own begin returned; b's begin raised, so b gets None.
        assert log == ["begin a", "begin b", "end b NOT_FOUND with None", "end a NOT_FOUND with a's state"]
        log.clear()
        refuser.refuse = False
        assert call(server, b"hello") == b"ok:hello"
        assert wait_for(lambda: len(log) >= 6)
        assert log == [
            "begin a", "begin b", "begin c",
            "end c OK with c's state", "end b OK with b's state", "end a OK with a's state",
        ]  # fmt: skip


def test_access_lines_escape_what_they_must_and_null_what_is_unknown(caplog) -> None:
    access_log = AccessLog("svc", logger=logging.getLogger("test-access"))
    rows = [
        (1_764_470_000.1239, "/p.S/M", "OK", 0.0001234, "", 'unix:/tmp/a"b\\c\n', "id-1", ""),
        (1_764_470_001.9999, "/p.S/M", "NOT_FOUND", 12.5, 'cn="x"', "", "", "ab" * 16),
    ]
    first, second = (json.loads(line) for line in access_log._lines(rows).split("\n"))
    assert first == {
        "timestamp": "2025-11-30T02:33:20.123+00:00", "service": "svc", "method": "/p.S/M", "code": "OK",
        "duration_ms": 0.123, "peer": None, "peer_address": 'unix:/tmp/a"b\\c\n', "request_id": "id-1",
        "trace_id": None,
    }  # fmt: skip
    assert (second["timestamp"], second["duration_ms"]) == ("2025-11-30T02:33:21.999+00:00", 12500.0)
    assert (second["peer"], second["peer_address"], second["request_id"]) == ('cn="x"', None, None)
    assert second["trace_id"] == "ab" * 16


def test_no_value_can_split_or_forge_an_access_line() -> None:
    """Whatever reaches a row (RequestId and Tracing check theirs; a bug there must not break the log)."""
    access_log = AccessLog("svc", logger=logging.getLogger("test-access"))
    hostile = 'abc123\n{"forged": 1}\r"\\\u2028'
    rows = [(1_764_470_000.0, "/p.S/M\n", "OK", 0.001, hostile, hostile, hostile, hostile)] * 2
    lines = access_log._lines(rows).split("\n")
    assert len(lines) == 2
    for line in map(json.loads, lines):
        assert (line["method"], line["peer"], line["request_id"], line["trace_id"]) == ("/p.S/M\n", *[hostile] * 3)


@pytest.mark.parametrize("sent", ["abc123\n", "abc123\r\n", "abc\n123", "\nabc123", "a" * 129, "é"])
def test_a_request_id_that_is_not_a_whole_token_is_replaced(sent: str) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", use_request_id(sent))
    assert use_request_id("abc-123.x:y_z") == "abc-123.x:y_z"


def test_tracing_notices_a_provider_installed_later_within_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    from libs.interceptors import tracing

    monkeypatch.setattr(tracing, "_recording", lambda provider: False)
    middleware = tracing.Tracing()
    assert not middleware._records(now=100.0)
    monkeypatch.setattr(tracing, "_recording", lambda provider: True)  # configure_tracing ran meanwhile
    assert not middleware._records(now=100.5)  # not looked at again yet: the look costs an os.environ read
    assert middleware._records(now=101.0)
    monkeypatch.setattr(tracing, "_recording", lambda provider: False)
    assert middleware._records(now=500.0)  # an installed provider stays


def test_a_handler_on_a_thread_pool_of_its_own_keeps_it_and_is_counted_when_the_caller_leaves() -> None:
    """grpc_health's Watch, given a pool of its own (gRPC's experimental_thread_pool), still runs there
    under the pipeline: a sync server with one worker thread answers Check with two Watch streams open,
    and each Watch is counted when its caller leaves."""
    registry = CollectorRegistry()
    grpc_server = grpc.server(ThreadPoolExecutor(1))
    instrumented = instrument(grpc_server, "probe", asynchronous=False, registry=registry)
    watches_pool = ThreadPoolExecutor(2)
    servicer = health.HealthServicer(experimental_non_blocking=False, experimental_thread_pool=watches_pool)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, instrumented)
    instrumented.finish()
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    labels = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch", "grpc_type": "server_stream"}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watches = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=WAIT) for _ in range(2)]
            assert [next(watch).status for watch in watches] == [serving, serving]
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status == serving
            assert registry.get_sample_value("grpc_server_in_flight", labels) == 2
            for watch in watches:
                watch.cancel()
            cancelled = {**labels, "grpc_code": "CANCELLED"}
            assert wait_for(lambda: registry.get_sample_value("grpc_server_handled_total", cancelled) == 2)
            assert registry.get_sample_value("grpc_server_in_flight", labels) == 0
    finally:
        grpc_server.stop(None)
        watches_pool.shutdown(wait=False)


def test_a_coroutine_handler_on_a_sync_server_is_refused_when_it_registers() -> None:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    instrumented = instrument(grpc.server(ThreadPoolExecutor(1)), "probe", asynchronous=False)
    with pytest.raises(TypeError, match="is a coroutine function: a service served by threads needs plain functions"):
        instrumented.add_registered_method_handlers(SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)})


def test_a_finished_sync_call_leaves_no_stream_open_on_its_connection() -> None:
    """gRPC's sync server keeps a call's HTTP/2 stream until the call's objects are freed; a reference cycle
    through a context variable (DeadlineRecorder's, once) left them to the garbage collector, and past the
    connection's stream limit every new call was refused (RST_STREAM). With the collector off, 50 calls
    over a connection that allows 4 streams at once must all succeed."""
    grpc_server = grpc.server(ThreadPoolExecutor(2), options=[("grpc.max_concurrent_streams", 4)])
    instrumented = instrument(grpc_server, "probe", asynchronous=False, registry=CollectorRegistry())
    handlers = _handlers(lambda request, context: outcome(request), lambda request, context: iter(()))
    instrumented.add_generic_rpc_handlers((handlers,))
    instrumented.finish()
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    gc.disable()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for n in range(50):
                assert unary_unary(channel, "Unary")(b"%d" % n, timeout=WAIT) == b"ok:%d" % n
    finally:
        gc.enable()
        grpc_server.stop(None)
