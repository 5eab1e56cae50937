"""Client interceptors (grpc.aio and sync): request ids, trace context, deadlines, metrics, logs.

Every outgoing call, of every kind (unary, server-streaming, client-streaming, bidi), gets: the current
request id in `x-request-id` (a new one outside any request); a CLIENT span whose W3C `traceparent` goes
in the metadata; the smaller of its timeout (or the channel's default) and the caller's remaining
deadline (libs/interceptors/deadlines.py), or an immediate DEADLINE_EXCEEDED when that has passed;
`grpc_client_*` metrics; and a WARNING log line for each failed call. As on the server, one object
runs every concern of a call (per kind, for grpc.aio), and the logic is shared by the aio and the sync
adapters.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from libs.interceptors.core import split_method
from libs.interceptors.deadlines import DeadlineExpired, clamp
from libs.interceptors.metrics import RpcMetrics
from libs.interceptors.request_id import METADATA_KEY, current_request_id, new_request_id
from libs.interceptors.tracing import PROPAGATOR, end_span, rpc_attributes

logger = logging.getLogger("grpc.client")


class _SyncDetails(
    collections.namedtuple(
        "_SyncDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _Outgoing:
    """The shared part: prepares a call and records its outcome."""

    def __init__(
        self,
        default_timeout: float | None,
        registry: CollectorRegistry,
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        self._default_timeout = default_timeout
        self._metrics = RpcMetrics.of("client", registry)
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    def prepare(self, method: str, timeout: float | None, metadata: Any, kind: str) -> tuple[dict, float | None, list]:
        service, name = split_method(method)
        timeout = clamp(timeout if timeout is not None else self._default_timeout)
        span = self._tracer.start_span(
            f"{service}/{name}", kind=SpanKind.CLIENT, attributes=rpc_attributes(service, name)
        )
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        outgoing = [(k, v) for k, v in (metadata or ()) if k not in (METADATA_KEY, "traceparent", "tracestate")]
        request_id = current_request_id() or new_request_id()
        outgoing.append((METADATA_KEY, request_id))
        outgoing.extend(carrier.items())
        series = self._metrics.series((service, name, kind))
        self._metrics.started(series)
        state = {"series": series, "span": span, "started": time.perf_counter(), "method": method, "id": request_id}
        return state, timeout, outgoing

    def finish(self, state: dict, code: grpc.StatusCode, details: str | None = None) -> None:
        self._metrics.finished(state["series"], code.name, time.perf_counter() - state["started"])
        end_span(state["span"], code.name, code.value[0], None)
        if code != grpc.StatusCode.OK:
            logger.warning("call %s failed: %s: %s (request_id %s)", state["method"], code.name, details, state["id"])


def _expired(method: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=f"the caller's deadline expired before calling {method}",
    )


class _AsyncOutgoing(_Outgoing):
    """The grpc.aio side. A unary call is awaited here (the cheapest way to see its outcome). Streaming
    calls are handed back untouched, so the caller keeps the whole call API (read, write, done_writing,
    cancel), and their outcome is recorded when gRPC reports them done, however they ended."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._recording: set[asyncio.Task] = set()

    def _details(self, details: grpc.aio.ClientCallDetails, kind: str) -> tuple[grpc.aio.ClientCallDetails, dict]:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        try:
            state, timeout, metadata = self.prepare(method, details.timeout, details.metadata, kind)
        except DeadlineExpired:
            raise _expired(method) from None
        return details._replace(timeout=timeout, metadata=grpc.aio.Metadata(*metadata)), state

    async def _streaming(self, continuation, client_call_details, request_or_iterator, kind: str):
        details, state = self._details(client_call_details, kind)
        call = await continuation(details, request_or_iterator)
        call.add_done_callback(functools.partial(self._done, state))
        return call

    def _done(self, state: dict, call: grpc.aio.Call) -> None:
        # On the event loop, once the call has its status; code() and details() then return at once.
        task = asyncio.get_running_loop().create_task(self._record(state, call))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record(self, state: dict, call: grpc.aio.Call) -> None:
        self.finish(state, await call.code(), await call.details())


# grpc.aio files an interceptor under the first kind it is an instance of (aio/_channel.py), so an object
# that is both a UnaryUnary and a UnaryStream interceptor would never see a stream: one class per kind.


class AsyncUnaryUnaryInterceptor(_AsyncOutgoing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        details, state = self._details(client_call_details, "unary")
        try:
            call = await continuation(details, request)
            response = await call
        except grpc.aio.AioRpcError as error:
            self.finish(state, error.code(), error.details())
            raise
        except BaseException:
            self.finish(state, grpc.StatusCode.CANCELLED, "cancelled by the caller")
            raise
        self.finish(state, grpc.StatusCode.OK)
        return response


class AsyncUnaryStreamInterceptor(_AsyncOutgoing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await self._streaming(continuation, client_call_details, request, "server_stream")


class AsyncStreamUnaryInterceptor(_AsyncOutgoing, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await self._streaming(continuation, client_call_details, request_iterator, "client_stream")


class AsyncStreamStreamInterceptor(_AsyncOutgoing, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await self._streaming(continuation, client_call_details, request_iterator, "bidi_stream")


ASYNC_INTERCEPTORS = (
    AsyncUnaryUnaryInterceptor,
    AsyncUnaryStreamInterceptor,
    AsyncStreamUnaryInterceptor,
    AsyncStreamStreamInterceptor,
)
"""One of each for a grpc.aio channel: `interceptors=[kind(...) for kind in ASYNC_INTERCEPTORS]`."""


class SyncClientInterceptor(
    _Outgoing,
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """For sync channels: `grpc.intercept_channel(channel, SyncClientInterceptor(...))`."""

    def _observed(self, continuation, client_call_details, request_or_iterator, kind: str):
        """Sends the call on; its outcome is recorded when gRPC reports it done (it may already be)."""
        try:
            state, timeout, metadata = self.prepare(
                client_call_details.method, client_call_details.timeout, client_call_details.metadata, kind
            )
        except DeadlineExpired as error:
            raise _SyncExpired(str(error)) from None
        details = _SyncDetails(
            client_call_details.method, timeout, metadata, client_call_details.credentials,
            client_call_details.wait_for_ready, getattr(client_call_details, "compression", None),
        )  # fmt: skip
        outcome = continuation(details, request_or_iterator)
        outcome.add_done_callback(lambda done: self.finish(state, done.code(), done.details()))
        return outcome

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return self._observed(continuation, client_call_details, request, "unary")

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return self._observed(continuation, client_call_details, request, "server_stream")

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return self._observed(continuation, client_call_details, request_iterator, "client_stream")

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return self._observed(continuation, client_call_details, request_iterator, "bidi_stream")


class _SyncExpired(grpc.RpcError):
    """DEADLINE_EXCEEDED raised before a sync call was sent (shaped like a failed call)."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return ()
