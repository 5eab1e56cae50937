"""One server pipeline for every concern, run by two thin adapters: grpc.aio and the sync grpc.server.

Each concern (request ids, tracing, metrics, access log, exception → status, error log,
authorisation, deadlines) is a `Middleware` with three hooks that know nothing of sync or async:

- `begin(call)` before the handler, in stack order (may raise, e.g. PermissionDenied);
- `fail(call, exc)` when the handler (or a `begin`) raised: may return the `Abort` to answer with;
- `end(call)` after the call, in reverse order, always, with the final status code in `call.code`.

`AsyncServerInterceptor` and `SyncServerInterceptor` run the whole stack in ONE interceptor layer.
We keep grpc-interceptor's named exceptions (one per status code) and its handler plumbing idea, but
not one interceptor per concern: every layer costs a wrapper closure (and, on aio, a coroutine) per
call, and this stack has eight concerns (see bench/interceptors for the measured cost of the stack).
Calls to methods no service registered never reach a handler; they are reported to the pipeline
with method "unknown" so that metrics count them without unbounded labels.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_interceptor.exceptions import GrpcException

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Abort:
    """The status to answer a failed call with."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str | bytes], ...] = ()


@dataclass
class Call:
    """What the middleware knows of one RPC; hooks read it and add to it."""

    method: str  # "/pkg.Service/Method", or "unknown" for an unregistered method
    service: str
    name: str
    kind: str  # unary, client_stream, server_stream, bidi_stream
    context: Any  # grpc.ServicerContext or grpc.aio.ServicerContext; None for unregistered methods
    metadata: dict[str, str]
    started: float = field(default_factory=time.perf_counter)
    code: grpc.StatusCode = grpc.StatusCode.OK
    exception: BaseException | None = None
    unexpected: bool = False  # an exception that is neither a GrpcException nor a deliberate abort
    duration: float = 0.0
    request_id: str = ""
    trace_id: str = ""
    begun: int = 0  # how many middleware began: only those are ended
    scratch: dict[str, Any] = field(default_factory=dict)


class Middleware:
    """Base class: override the hooks you need."""

    def begin(self, call: Call) -> None:
        return None

    def fail(self, call: Call, exc: BaseException) -> Abort | None:
        return None

    def end(self, call: Call) -> None:
        return None


def split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service or UNKNOWN, name or UNKNOWN


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {key: value for key, value in (details.invocation_metadata or ()) if isinstance(value, str)}


class Pipeline:
    """The ordered middleware stack and the bookkeeping the adapters share."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = tuple(middleware)

    def open(self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler, context: Any) -> Call:
        service, name = split_method(details.method)
        return Call(details.method, service, name, _kind(handler), context, _metadata(details))

    def begin(self, call: Call) -> None:
        for index, middleware in enumerate(self.middleware):
            call.begun = index + 1  # a middleware whose begin raises is still ended
            middleware.begin(call)

    def failed(self, call: Call, exc: BaseException) -> Abort | None:
        """Records `exc`; returns how to answer (None: re-raise, the handler already chose a status)."""
        context_code = call.context.code() if call.context is not None else None
        call.exception = exc
        call.unexpected = not isinstance(exc, GrpcException) and not _aborted(exc, context_code)
        for middleware in self.middleware:
            abort = middleware.fail(call, exc)
            if abort is not None:
                call.code = abort.code
                return abort
        call.code = context_code or (exc.status_code if isinstance(exc, GrpcException) else grpc.StatusCode.UNKNOWN)
        return None

    def succeeded(self, call: Call) -> None:
        code = call.context.code()
        call.code = code if code is not None else grpc.StatusCode.OK

    def close(self, call: Call) -> None:
        call.duration = time.perf_counter() - call.started
        for middleware in reversed(self.middleware[: call.begun]):
            middleware.end(call)

    def unregistered(self, details: grpc.HandlerCallDetails) -> None:
        """Counts a call to a method no service offers (gRPC answers UNIMPLEMENTED itself)."""
        call = Call(UNKNOWN, UNKNOWN, UNKNOWN, "unary", None, _metadata(details), code=grpc.StatusCode.UNIMPLEMENTED)
        self.begin(call)
        self.close(call)


def _aborted(exc: BaseException, context_code: grpc.StatusCode | None) -> bool:
    # aio raises AbortError from context.abort(); sync raises a plain Exception after setting the code.
    return isinstance(exc, grpc.aio.AbortError) or (context_code is not None and context_code != grpc.StatusCode.OK)


def _handler(handler: grpc.RpcMethodHandler, behaviour: Callable) -> grpc.RpcMethodHandler:
    factories = {
        "unary": grpc.unary_unary_rpc_method_handler,
        "client_stream": grpc.stream_unary_rpc_method_handler,
        "server_stream": grpc.unary_stream_rpc_method_handler,
        "bidi_stream": grpc.stream_stream_rpc_method_handler,
    }
    return factories[_kind(handler)](
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _method(handler: grpc.RpcMethodHandler) -> Callable:
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


class SyncServerInterceptor(grpc.ServerInterceptor):
    """Runs a Pipeline around every call of a sync `grpc.server`."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.pipeline = Pipeline(middleware)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            self.pipeline.unregistered(details)
            return None
        method, pipeline = _method(handler), self.pipeline

        def abort_or_raise(call: Call, context: grpc.ServicerContext, exc: BaseException) -> Any:
            abort = pipeline.failed(call, exc)
            pipeline.close(call)
            if abort is None:
                raise exc
            if abort.trailers:
                context.set_trailing_metadata(abort.trailers)
            context.abort(abort.code, abort.details)

        def stream(call: Call, context: grpc.ServicerContext, responses: Iterator) -> Iterator:
            try:
                yield from responses
            except Exception as exc:
                abort_or_raise(call, context, exc)
            pipeline.succeeded(call)
            pipeline.close(call)

        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            call = pipeline.open(details, handler, context)
            try:
                pipeline.begin(call)
                response = method(request, context)
            except Exception as exc:
                return abort_or_raise(call, context, exc)
            if handler.response_streaming:
                return stream(call, context, response)
            pipeline.succeeded(call)
            pipeline.close(call)
            return response

        return _handler(handler, behaviour)


class AsyncServerInterceptor(grpc.aio.ServerInterceptor):
    """Runs a Pipeline around every call of a `grpc.aio` server."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.pipeline = Pipeline(middleware)

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            self.pipeline.unregistered(details)
            return None
        method, pipeline = _method(handler), self.pipeline

        async def abort_or_raise(call: Call, context: grpc.aio.ServicerContext, exc: BaseException) -> Any:
            abort = pipeline.failed(call, exc)
            pipeline.close(call)
            if abort is None:
                raise exc
            await context.abort(abort.code, abort.details, abort.trailers)

        if handler.response_streaming:

            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
                call = pipeline.open(details, handler, context)
                try:
                    pipeline.begin(call)
                    responses = method(request, context)
                    if hasattr(responses, "__aiter__"):
                        async for response in responses:
                            yield response
                    else:  # a coroutine writing with context.write(): the read/write API
                        await responses
                except Exception as exc:
                    await abort_or_raise(call, context, exc)
                pipeline.succeeded(call)
                pipeline.close(call)

        else:

            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = pipeline.open(details, handler, context)
                try:
                    pipeline.begin(call)
                    response = method(request, context)
                    if hasattr(response, "__await__"):
                        response = await response
                except Exception as exc:
                    return await abort_or_raise(call, context, exc)
                pipeline.succeeded(call)
                pipeline.close(call)
                return response

        return _handler(handler, behaviour)
