"""Client interceptors (grpc.aio and sync): request ids, trace context, deadlines, metrics, logs.

Every outgoing call gets: the current request id in `x-request-id` (a new one outside any request);
a CLIENT span whose W3C `traceparent` goes in the metadata; the smaller of its timeout (or the
channel's default) and the caller's remaining deadline (libs/interceptors/deadlines.py), or an
immediate DEADLINE_EXCEEDED when that has passed; `grpc_client_*` metrics; and a WARNING log line for
each failed call. As on the server, one interceptor object runs every concern, and the logic is
shared by the aio and the sync adapter.
"""

from __future__ import annotations

import collections
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


class AsyncClientInterceptor(_Outgoing, grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """For grpc.aio channels: `grpc.aio.insecure_channel(..., interceptors=[AsyncClientInterceptor(...)])`."""

    def _details(self, details: grpc.aio.ClientCallDetails, kind: str) -> tuple[grpc.aio.ClientCallDetails, dict]:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        try:
            state, timeout, metadata = self.prepare(method, details.timeout, details.metadata, kind)
        except DeadlineExpired:
            raise _expired(method) from None
        return details._replace(timeout=timeout, metadata=grpc.aio.Metadata(*metadata)), state

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

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        details, state = self._details(client_call_details, "server_stream")
        call = await continuation(details, request)

        async def responses():
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as error:
                self.finish(state, error.code(), error.details())
                raise
            self.finish(state, grpc.StatusCode.OK)

        return responses()


class SyncClientInterceptor(_Outgoing, grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """For sync channels: `grpc.intercept_channel(channel, SyncClientInterceptor(...))`."""

    def _details(self, details: grpc.ClientCallDetails, kind: str) -> tuple[grpc.ClientCallDetails, dict]:
        try:
            state, timeout, metadata = self.prepare(details.method, details.timeout, details.metadata, kind)
        except DeadlineExpired as error:
            raise _SyncExpired(str(error)) from None
        new = _SyncDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready,
            getattr(details, "compression", None),
        )  # fmt: skip
        return new, state

    def intercept_unary_unary(self, continuation, client_call_details, request):
        details, state = self._details(client_call_details, "unary")
        outcome = continuation(details, request)
        outcome.add_done_callback(lambda done: self.finish(state, done.code(), done.details()))
        return outcome

    def intercept_unary_stream(self, continuation, client_call_details, request):
        details, state = self._details(client_call_details, "server_stream")
        call = continuation(details, request)
        call.add_done_callback(lambda done: self.finish(state, done.code(), done.details()))
        return call


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
