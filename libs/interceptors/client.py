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
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar, cast

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from libs.interceptors.core import split_method
from libs.interceptors.deadlines import DeadlineExpired, clamp
from libs.interceptors.metrics import RpcMetrics, Series
from libs.interceptors.request_id import METADATA_KEY, current_request_id, new_request_id
from libs.interceptors.tracing import PROPAGATOR, end_span, rpc_attributes

logger = logging.getLogger("grpc.client")

if TYPE_CHECKING:  # grpc-stubs makes these classes generic; grpc's own take no type arguments at run time
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    _SyncUnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _SyncUnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _SyncStreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _SyncStreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
else:
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor
    _SyncUnaryUnary = grpc.UnaryUnaryClientInterceptor
    _SyncUnaryStream = grpc.UnaryStreamClientInterceptor
    _SyncStreamUnary = grpc.StreamUnaryClientInterceptor
    _SyncStreamStream = grpc.StreamStreamClientInterceptor

_Metadata = list[tuple[str, str | bytes]]
_AioCall = TypeVar("_AioCall", bound=grpc.aio.Call)
_SyncOutcome = TypeVar("_SyncOutcome")


class _State(TypedDict):
    """What `finish` needs of a call that `prepare` started."""

    series: Series
    span: trace.Span
    started: float
    method: str
    id: str


class _CallFuture(Protocol):
    """What a sync continuation returns, for every kind of call: a grpc.Call that is also a grpc.Future and
    passes itself to its done callbacks (grpc-stubs has no add_done_callback on the streaming kinds' CallIterator,
    and types the callback's argument as a plain Future)."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def add_done_callback(self, fn: Callable[[_CallFuture], None]) -> None: ...


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

    def prepare(
        self, method: str, timeout: float | None, metadata: Iterable[tuple[str, str | bytes]] | None, kind: str
    ) -> tuple[_State, float | None, _Metadata]:
        service, name = split_method(method)
        timeout = clamp(timeout if timeout is not None else self._default_timeout)
        span = self._tracer.start_span(
            f"{service}/{name}", kind=SpanKind.CLIENT, attributes=rpc_attributes(service, name)
        )
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        outgoing: _Metadata = [
            (k, v) for k, v in (metadata or ()) if k not in (METADATA_KEY, "traceparent", "tracestate")
        ]
        request_id = current_request_id() or new_request_id()
        outgoing.append((METADATA_KEY, request_id))
        outgoing.extend(carrier.items())
        series = self._metrics.series((service, name, kind))
        self._metrics.started(series)
        state: _State = {
            "series": series,
            "span": span,
            "started": time.perf_counter(),
            "method": method,
            "id": request_id,
        }
        return state, timeout, outgoing

    def finish(self, state: _State, code: grpc.StatusCode, details: str | None = None) -> None:
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
        debug_error_string=None,  # gRPC's default; grpc-stubs makes it a required argument
    )


class _AsyncOutgoing(_Outgoing):
    """The grpc.aio side. A unary call is awaited here (the cheapest way to see its outcome). Streaming
    calls are handed back untouched, so the caller keeps the whole call API (read, write, done_writing,
    cancel), and their outcome is recorded when gRPC reports them done, however they ended."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._recording: set[asyncio.Task[None]] = set()

    def _details(self, details: grpc.aio.ClientCallDetails, kind: str) -> tuple[grpc.aio.ClientCallDetails, _State]:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        try:
            state, timeout, metadata = self.prepare(method, details.timeout, details.metadata, kind)
        except DeadlineExpired:
            raise _expired(method) from None
        outgoing = grpc.aio.Metadata(*metadata)
        # grpc.aio.ClientCallDetails is a namedtuple; grpc-stubs declares a plain class, without _replace.
        return details._replace(timeout=timeout, metadata=outgoing), state  # type: ignore[attr-defined]

    async def _streaming(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[_AioCall]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_or_iterator: Any,
        kind: str,
    ) -> _AioCall:
        details, state = self._details(client_call_details, kind)
        call = await continuation(details, request_or_iterator)
        call.add_done_callback(functools.partial(self._done, state))
        return call

    def _done(self, state: _State, call: grpc.aio.Call) -> None:
        # On the event loop, once the call has its status; code() and details() then return at once.
        task = asyncio.get_running_loop().create_task(self._record(state, call))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record(self, state: _State, call: grpc.aio.Call) -> None:
        self.finish(state, await call.code(), await call.details())


# grpc.aio files an interceptor under the first kind it is an instance of (aio/_channel.py), so an object
# that is both a UnaryUnary and a UnaryStream interceptor would never see a stream: one class per kind.
#
# The signatures are grpc.aio's: its continuation is a coroutine function that gives the call, and an
# interceptor of a stream-unary call returns a StreamUnaryCall. grpc-stubs has the continuation return the
# call itself and the stream-unary interceptor a UnaryStreamCall, hence the `ignore[override]`s below.


class AsyncUnaryUnaryInterceptor(_AsyncOutgoing, _AioUnaryUnary):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[grpc.aio.UnaryUnaryCall[Any, Any]]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
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


class AsyncUnaryStreamInterceptor(_AsyncOutgoing, _AioUnaryStream):
    async def intercept_unary_stream(  # type: ignore[override]  # continuation: see above
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[grpc.aio.UnaryStreamCall[Any, Any]]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> grpc.aio.UnaryStreamCall[Any, Any]:
        return await self._streaming(continuation, client_call_details, request, "server_stream")


class AsyncStreamUnaryInterceptor(_AsyncOutgoing, _AioStreamUnary):
    async def intercept_stream_unary(  # type: ignore[override]  # return type: see above
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[grpc.aio.StreamUnaryCall[Any, Any]]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> grpc.aio.StreamUnaryCall[Any, Any]:
        return await self._streaming(continuation, client_call_details, request_iterator, "client_stream")


class AsyncStreamStreamInterceptor(_AsyncOutgoing, _AioStreamStream):
    async def intercept_stream_stream(  # type: ignore[override]  # continuation: see above
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[grpc.aio.StreamStreamCall[Any, Any]]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> grpc.aio.StreamStreamCall[Any, Any]:
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
    _SyncUnaryUnary,
    _SyncUnaryStream,
    _SyncStreamUnary,
    _SyncStreamStream,
):
    """For sync channels: `grpc.intercept_channel(channel, SyncClientInterceptor(...))`."""

    def _observed(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], _SyncOutcome],
        client_call_details: grpc.ClientCallDetails,
        request_or_iterator: Any,
        kind: str,
    ) -> _SyncOutcome:
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
        # Whatever the kind, the outcome is a grpc.Call and a grpc.Future (see _CallFuture).
        cast(_CallFuture, outcome).add_done_callback(lambda done: self.finish(state, done.code(), done.details()))
        return outcome

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], grpc.CallFuture[Any]],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> grpc.CallFuture[Any]:
        return self._observed(continuation, client_call_details, request, "unary")

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], grpc.CallIterator[Any]],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> grpc.CallIterator[Any]:
        return self._observed(continuation, client_call_details, request, "server_stream")

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], grpc.CallFuture[Any]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> grpc.CallFuture[Any]:
        return self._observed(continuation, client_call_details, request_iterator, "client_stream")

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], grpc.CallIterator[Any]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> grpc.CallIterator[Any]:
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

    def trailing_metadata(self) -> tuple[()]:
        return ()
