"""Every RPC kind (unary, server-streaming, client-streaming, bidi) through the whole stack, both sides.

One in-process server on libs/runtime with mTLS and the standard middleware (request id, tracing,
metrics, access log, errors, authorisation, deadlines); clients through `create_channel`,
`ReloadingChannel` (grpc.aio) and the sync client interceptors. For each kind: the answer, both sides'
metrics and the access log, request id and trace context reaching the handler, the caller's deadline
reaching the handler, errors with their details, UNAVAILABLE retried, a cancelled call recorded as such,
and a caller the policy does not name refused.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_interceptor.exceptions import Unavailable
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY, CollectorRegistry

from libs.interceptors import AccessPolicy, client_interceptors, server_middleware
from libs.interceptors.batched_lines import flush_all
from libs.interceptors.deadlines import deadline_scope, time_remaining
from libs.interceptors.errors import BadRequest, FieldViolation, field_violations
from libs.interceptors.request_id import current_request_id, use_request_id
from libs.interceptors.tracing import current_trace_id
from libs.runtime.channel import ReloadingChannel, create_channel
from libs.runtime.config import ServerConfig
from libs.runtime.server import GrpcServer
from libs.runtime.tls import TlsFiles, channel_credentials
from tools.certs.certs import mint_ca, mint_leaf, write_leaf

SERVICE = "test.v1.Kinds"
METHODS = {"unary": "Unary", "server_stream": "ServerStream", "client_stream": "ClientStream", "bidi_stream": "Bidi"}
KINDS = list(METHODS)
CHANNELS = ["create_channel", "ReloadingChannel"]
SPANS = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(PROVIDER)  # the client interceptors use the global provider
SERVER_METRICS = CollectorRegistry()


class Handlers:
    """What each method does with its request(s); `flaky:N:<tag>` fails with UNAVAILABLE until attempt N."""

    def __init__(self) -> None:
        self.attempts: collections.Counter[bytes] = collections.Counter()

    def answer(self, request: bytes) -> bytes:
        self.attempts[request] += 1
        kind, _, argument = request.partition(b":")
        if kind == b"fail":
            raise BadRequest([FieldViolation("payload", "must not say fail")])
        if kind == b"flaky" and self.attempts[request] < int(argument.split(b":")[0]):
            raise Unavailable("warming up")
        if kind == b"whoami":
            seen = {"request_id": current_request_id(), "trace_id": current_trace_id(), "remaining": time_remaining()}
            return json.dumps(seen).encode()
        return b"ok:" + request

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self.answer(request)

    async def server_stream(self, request: bytes, context: grpc.aio.ServicerContext):
        answer = self.answer(request)  # before the first message, so a failure is not committed
        yield answer
        yield b"end"

    async def client_stream(self, requests, context: grpc.aio.ServicerContext) -> bytes:
        return self.answer(b"".join([request async for request in requests]))

    async def bidi(self, requests, context: grpc.aio.ServicerContext):
        async for request in requests:
            yield self.answer(request)

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


EXPECTED = {  # what each kind answers to the requests [b"x"]
    "unary": [b"ok:x"],
    "server_stream": [b"ok:x", b"end"],
    "client_stream": [b"ok:x"],
    "bidi_stream": [b"ok:x"],
}


class Bed:
    """The server on its own event loop thread, the certificates, and a way to run client coroutines there."""

    def __init__(self, certs: Path) -> None:
        self.certs = certs
        self.handlers = Handlers()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        policy = AccessPolicy({method: ["client"] for method in METHODS.values()})
        config = ServerConfig(host="127.0.0.1", port=0, drain_seconds=0, tls=self.files("server"))
        middleware = server_middleware("kinds", policy=policy, registry=SERVER_METRICS, tracer_provider=PROVIDER)
        self.server = GrpcServer(config, middleware=middleware)
        self.server.add_service(SERVICE, self.handlers.register)
        self.run(self.server.start())

    def files(self, identity: str) -> TlsFiles:
        return TlsFiles(self.certs / f"{identity}.pem", self.certs / f"{identity}.key", self.certs / "ca.pem")

    def run(self, coroutine: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(20)

    def channel(self, kind: str, identity: str = "client"):
        target = f"127.0.0.1:{self.server.port}"
        if kind == "ReloadingChannel":
            return ReloadingChannel(target, tls=self.files(identity), tls_server_name="server")
        return create_channel(target, tls=self.files(identity), tls_server_name="server")

    def sync_channel(self) -> grpc.Channel:
        credentials = channel_credentials(self.files("client"))
        options = [("grpc.ssl_target_name_override", "server")]
        channel = grpc.secure_channel(f"127.0.0.1:{self.server.port}", credentials, options=options)
        return grpc.intercept_channel(channel, *client_interceptors(asynchronous=False, default_timeout=5))

    def stop(self) -> None:
        self.run(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    certs = tmp_path_factory.mktemp("certs")
    ca = mint_ca()
    (certs / "ca.pem").write_bytes(ca.cert_pem)
    for identity in ("server", "client", "intruder"):
        write_leaf(certs, identity, mint_leaf(ca, identity))
    bed = Bed(certs)
    yield bed
    bed.stop()


async def invoke(channel: Any, kind: str, requests: list[bytes], **kwargs: Any) -> list[bytes]:
    """One call of `kind` on an aio channel (or ReloadingChannel); every response."""
    method = f"/{SERVICE}/{METHODS[kind]}"
    if kind == "unary":
        return [await channel.unary_unary(method)(requests[0], **kwargs)]
    if kind == "server_stream":
        return [response async for response in channel.unary_stream(method)(requests[0], **kwargs)]
    if kind == "client_stream":
        return [await channel.stream_unary(method)(iter(requests), **kwargs)]
    return [response async for response in channel.stream_stream(method)(iter(requests), **kwargs)]


def invoke_sync(channel: grpc.Channel, kind: str, requests: list[bytes]) -> list[bytes]:
    method = f"/{SERVICE}/{METHODS[kind]}"
    # Bytes in, bytes out: no serializers (None by default; grpc-stubs makes them required).
    if kind == "unary":
        return [channel.unary_unary(method, request_serializer=None, response_deserializer=None)(requests[0])]
    if kind == "server_stream":
        return list(channel.unary_stream(method, request_serializer=None, response_deserializer=None)(requests[0]))
    if kind == "client_stream":
        return [channel.stream_unary(method, request_serializer=None, response_deserializer=None)(iter(requests))]
    return list(channel.stream_stream(method, request_serializer=None, response_deserializer=None)(iter(requests)))


def client_calls_unrecorded() -> float:
    """Client calls of SERVICE started but not yet in the client metrics (and their span not ended)."""
    started = handled = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.labels.get("grpc_service") == SERVICE:
                if sample.name == "grpc_client_started_total":
                    started += sample.value
                elif sample.name == "grpc_client_handled_total":
                    handled += sample.value
    return started - handled


def settle(timeout: float = 10) -> None:
    """Waits until every client call is recorded: a streaming call's outcome is recorded when gRPC reports
    it done (a done callback, on the event loop; for sync calls on gRPC's thread), just after the caller
    saw it end."""
    give_up = time.monotonic() + timeout
    while client_calls_unrecorded() and time.monotonic() < give_up:
        time.sleep(0.01)
    assert not client_calls_unrecorded(), "a client call was never recorded"


def call(bed: Bed, channel_kind: str, kind: str, requests: list[bytes], identity: str = "client", **kw) -> list[bytes]:
    async def go() -> list[bytes]:
        channel = bed.channel(channel_kind, identity)
        try:
            return await invoke(channel, kind, requests, **kw)
        finally:
            await channel.close()

    try:
        return bed.run(go())
    finally:
        settle()


def failure(bed: Bed, channel_kind: str, kind: str, requests: list[bytes], identity: str = "client") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(bed, channel_kind, kind, requests, identity)
    return raised.value


def handled(side: str, kind: str, code: str) -> float:
    registry = SERVER_METRICS if side == "server" else REGISTRY
    labels = {"grpc_service": SERVICE, "grpc_method": METHODS[kind], "grpc_type": kind, "grpc_code": code}
    return registry.get_sample_value(f"grpc_{side}_handled_total", labels) or 0.0


@pytest.mark.parametrize("channel_kind", CHANNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_answers_and_is_counted_and_logged_on_both_sides(
    bed: Bed, kind: str, channel_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = handled("server", kind, "OK"), handled("client", kind, "OK")
    flush_all()  # what earlier tests left queued
    with caplog.at_level(logging.INFO, logger="access"):
        assert call(bed, channel_kind, kind, [b"x"]) == EXPECTED[kind]
        flush_all()
    assert (handled("server", kind, "OK"), handled("client", kind, "OK")) == (before[0] + 1, before[1] + 1)
    batches = [r.getMessage() for r in caplog.records if r.name == "access"]  # lines are written in batches
    lines = [json.loads(line) for batch in batches for line in batch.split("\n")]
    method = f"/{SERVICE}/{METHODS[kind]}"
    assert [(line["code"], line["peer"]) for line in lines if line["method"] == method] == [("OK", "client")]


@pytest.mark.parametrize("kind", KINDS)
def test_request_id_and_trace_context_reach_the_handler(bed: Bed, kind: str) -> None:
    async def go() -> dict:
        use_request_id("0123456789abcdef0123456789abcdef")
        channel = bed.channel("create_channel")
        async with channel:
            (answer,) = [r for r in await invoke(channel, kind, [b"whoami"]) if r != b"end"]
        return json.loads(answer)

    SPANS.clear()
    seen = bed.run(go())
    settle()  # the client span ends as the call is recorded
    assert seen["request_id"] == "0123456789abcdef0123456789abcdef"
    client_spans = [
        s for s in SPANS.get_finished_spans() if s.kind == SpanKind.CLIENT and s.name.endswith(METHODS[kind])
    ]
    server_spans = [
        s for s in SPANS.get_finished_spans() if s.kind == SpanKind.SERVER and s.name.endswith(METHODS[kind])
    ]
    assert seen["trace_id"] == format(client_spans[-1].context.trace_id, "032x")
    parent = server_spans[-1].parent
    assert parent is not None
    assert parent.span_id == client_spans[-1].context.span_id


@pytest.mark.parametrize("kind", KINDS)
def test_the_callers_deadline_reaches_the_handler(bed: Bed, kind: str) -> None:
    async def go() -> dict:
        channel = bed.channel("ReloadingChannel")
        async with channel:
            await asyncio.wait_for(channel.channel_ready(), 10)  # the 2 s below are then the call's alone
            with deadline_scope(2.0):  # as if handling a request with 2 s left
                (answer,) = [r for r in await invoke(channel, kind, [b"whoami"]) if r != b"end"]
        return json.loads(answer)

    remaining = bed.run(go())["remaining"]
    settle()
    # The caller's 2 s (not the channel's default 5 s); gRPC's clocks and grpc-timeout's units add a few ms.
    assert 0 < remaining <= 2.5


@pytest.mark.parametrize("channel_kind", CHANNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_errors_keep_their_status_and_details_and_are_counted(bed: Bed, kind: str, channel_kind: str) -> None:
    before = handled("server", kind, "INVALID_ARGUMENT"), handled("client", kind, "INVALID_ARGUMENT")
    error = failure(bed, channel_kind, kind, [b"fail"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [FieldViolation("payload", "must not say fail")]
    after = handled("server", kind, "INVALID_ARGUMENT"), handled("client", kind, "INVALID_ARGUMENT")
    assert after == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize("channel_kind", CHANNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_unavailable_is_retried(bed: Bed, kind: str, channel_kind: str) -> None:
    request = f"flaky:2:{kind}:{channel_kind}".encode()
    answers = call(bed, channel_kind, kind, [request])
    assert answers[0] == b"ok:" + request
    assert bed.handlers.attempts[request] == 2  # the first attempt failed, the retry succeeded


@pytest.mark.parametrize("kind", KINDS)
def test_a_caller_the_policy_does_not_name_is_refused(bed: Bed, kind: str) -> None:
    before = handled("server", kind, "PERMISSION_DENIED")
    assert failure(bed, "create_channel", kind, [b"x"], identity="intruder").code() == grpc.StatusCode.PERMISSION_DENIED
    assert handled("server", kind, "PERMISSION_DENIED") == before + 1


@pytest.mark.parametrize("kind", ["server_stream", "bidi_stream"])
def test_a_stream_the_caller_cancels_is_counted_as_cancelled(bed: Bed, kind: str) -> None:
    async def go() -> None:
        channel = bed.channel("create_channel")
        async with channel:
            method = f"/{SERVICE}/{METHODS[kind]}"
            if kind == "server_stream":
                stream = channel.unary_stream(method)(b"x")
            else:
                stream = channel.stream_stream(method)()
                await stream.write(b"x")  # the call's own write API stays usable through the interceptor
            assert await stream.read() == b"ok:x"
            stream.cancel()

    before = handled("client", kind, "CANCELLED")
    bed.run(go())
    settle()
    assert handled("client", kind, "CANCELLED") == before + 1


@pytest.mark.parametrize("kind", KINDS)
def test_sync_clients_get_the_same_middleware(bed: Bed, kind: str) -> None:
    before = handled("client", kind, "OK")
    use_request_id("fedcba9876543210fedcba9876543210")
    with bed.sync_channel() as channel:
        assert invoke_sync(channel, kind, [b"x"]) == EXPECTED[kind]
        (answer,) = [r for r in invoke_sync(channel, kind, [b"whoami"]) if r != b"end"]
    settle()
    assert json.loads(answer)["request_id"] == "fedcba9876543210fedcba9876543210"
    assert handled("client", kind, "OK") == before + 2
