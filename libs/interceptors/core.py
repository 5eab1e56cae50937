"""One server pipeline for every concern, run by two thin adapters: grpc.aio and the sync grpc.server.

Each concern (request ids, tracing, metrics, access log, exception → status, error log,
authorisation, deadlines, load shedding) is a `Middleware` with three hooks that know nothing of sync
or async:

- `begin(call)` before the handler, in stack order (may raise, e.g. PermissionDenied); what it returns
  is that middleware's own state for the call (a span, a metrics series), handed back to its `end`;
- `fail(call, exc)` when the handler (or a `begin`) raised, in stack order: may return the `Abort`
  to answer with (the first one returned wins; every fail hook runs);
- `end(call, state)` after the call, in reverse order, always, with the final status code in
  `call.code` and what its own `begin` returned (None if that begin raised).

The `Call` holds facts about the call that every hook may read: the method, the status, the request
id, the trace id, the verified caller, how many calls were in progress when it began. A concern that
needs something between its begin and its end keeps it in its state, not on the call.

A `Pipeline` wraps a method's handler once; the wrapper runs the hooks around each call, in the
call's own form (sync or aio). One way attaches it to a server, grpc.aio's or the sync one:
`InstrumentedServer(server, pipeline)` wraps the handlers as services register them
(`instrument()` in __init__.py). Not grpc's server interceptors: grpc.aio's interceptor path alone
costs more than all our hooks together once tuned (an extra coroutine and handler lookup per call, and
no use of the registered-method fast path; bench/RESULTS.md, "Interceptors"). Nor one
grpc-interceptor `AsyncServerInterceptor` per concern, as that library suggests: every layer adds that
interceptor cost again. We keep grpc-interceptor's named exceptions (one per status code), which the
ExceptionToStatus hook understands.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from grpc_interceptor.exceptions import GrpcException, InvalidArgument

if TYPE_CHECKING:  # grpc-stubs makes this class generic; grpc's own takes no type arguments at run time
    _GenericRpcHandler = grpc.GenericRpcHandler[Any, Any]
else:
    _GenericRpcHandler = grpc.GenericRpcHandler

UNKNOWN = "unknown"
_HANDLER_CACHE_LIMIT = 4096  # wrapped handlers kept per adapter; a bound against per-call handlers


@dataclass(frozen=True)
class Abort:
    """The status to answer a failed call with."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str | bytes], ...] = ()


class Rpc:
    """What is fixed per method: worked out once, when the handler is wrapped."""

    __slots__ = ("method", "service", "name", "kind")

    def __init__(self, method: str, kind: str) -> None:
        self.method = method  # "/pkg.Service/Method", or "unknown" for an unregistered method
        self.service, self.name = split_method(method)
        self.kind = kind  # unary, client_stream, server_stream, bidi_stream


class Call:
    """The facts of one RPC that every hook may read; the concern that establishes one sets it, once.

    The class attributes are the defaults: a call stores only what is set, which keeps the per-call
    price of the pipeline low (bench/RESULTS.md).
    """

    code = grpc.StatusCode.OK
    code_name = "OK"  # code.name, copied once: Enum.name is a Python-level property (bench/RESULTS.md)
    exception: BaseException | None = None
    unexpected = False  # neither a GrpcException nor a deliberate abort
    duration = 0.0
    in_flight = 0  # calls in progress in this pipeline when this one began, itself included
    request_id = ""  # set by RequestId
    trace_id = ""  # set by Tracing
    peer = ""  # the verified caller's name under mTLS, as Authorization established it
    address = ""  # where a call to an unregistered method came from (it has no context to ask)
    # The pipeline's own: the state each begin returned, in stack order; and if a begin raised, the
    # index of its middleware in the stack (the middleware after it did not begin and are not ended).
    states: list[Any]
    raised_in = 1 << 30

    def __init__(self, rpc: Rpc, context: Any, metadata: Any) -> None:
        self.rpc = rpc
        self.context = context  # grpc.ServicerContext or grpc.aio.ServicerContext; None if unregistered
        # The invocation metadata by key; values of "-bin" keys are bytes.
        self.metadata = {key: value for key, value in metadata} if metadata else {}
        self.started = time.perf_counter()


class Middleware:
    """Base class: override the hooks you need."""

    def begin(self, call: Call) -> Any:
        """Runs before the handler; returns this middleware's state for the call (given to `end`)."""
        return None

    def fail(self, call: Call, exc: BaseException) -> Abort | None:
        return None

    def end(self, call: Call, state: Any) -> None:
        """Runs after the call, with what `begin` returned (None if it raised)."""
        return None


def _overrides(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


def split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service or UNKNOWN, name or UNKNOWN


UNREGISTERED = Rpc(UNKNOWN, "unary")  # every call to a method no service registered


def kind_of(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _aborted(exc: BaseException, context_code: grpc.StatusCode | None) -> bool:
    # aio raises AbortError from context.abort(); sync raises a plain Exception after setting the code.
    return isinstance(exc, grpc.aio.AbortError) or (context_code is not None and context_code != grpc.StatusCode.OK)


_FACTORIES = {
    "unary": grpc.unary_unary_rpc_method_handler,
    "client_stream": grpc.stream_unary_rpc_method_handler,
    "server_stream": grpc.unary_stream_rpc_method_handler,
    "bidi_stream": grpc.stream_stream_rpc_method_handler,
}


def _deadline_passed(context: Any) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class UndecodableRequest(InvalidArgument):
    """A request message that does not parse: INVALID_ARGUMENT, answered after authorisation."""


def _message_name(deserialize: Callable[[bytes], Any]) -> str:
    message_class = getattr(deserialize, "__self__", None)  # Message.FromString is a bound classmethod
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "message")


def _decode(deserialize: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        return deserialize(raw)
    except Exception:
        raise UndecodableRequest(f"the request is not a valid {_message_name(deserialize)}") from None


async def _decode_each_async(deserialize: Callable[[bytes], Any], requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    async for raw in requests:
        yield _decode(deserialize, raw)


def _decode_each(deserialize: Callable[[bytes], Any], requests: Iterator[bytes]) -> Iterator[Any]:
    for raw in requests:
        yield _decode(deserialize, raw)


class Pipeline:
    """The ordered middleware stack, and the wrappers that run it around a method's handler.

    The wrappers decode the request themselves, after the `begin` hooks: gRPC's own decoding runs
    before any of them, so a malformed message from any caller became UNKNOWN with a traceback,
    unauthorised, uncounted and unlogged. Here it is UndecodableRequest (INVALID_ARGUMENT), for callers
    that passed authorisation, and it goes through every hook like any failed call."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = tuple(middleware)
        # Only the hooks a middleware overrides are called: half of them are the base class's no-ops.
        began = [i for i, m in enumerate(self.middleware) if _overrides(m, "begin")]
        self._begins = [self.middleware[i].begin for i in began]
        self._began = began  # the stack index of each begin hook's middleware
        self._fails = [m.fail for m in self.middleware if _overrides(m, "fail")]
        # Each end, in reverse stack order, with its middleware's stack index and where its begin's state
        # is in `call.states` (a position past the end for one without a begin hook: its state is None).
        self._ends = [
            (i, began.index(i) if i in began else len(began), m.end)
            for i, m in reversed(list(enumerate(self.middleware)))
            if _overrides(m, "end")
        ]
        self._in_flight = 0
        self._lock = threading.Lock()  # sync servers run calls on many threads; uncontended on aio

    @property
    def in_flight(self) -> int:
        """Calls begun and not yet closed: the one count of calls in progress."""
        return self._in_flight

    def begin(self, call: Call) -> None:
        self._lock.acquire()  # acquire()/release() rather than `with`: half the price, on every call
        self._in_flight += 1
        call.in_flight = self._in_flight
        self._lock.release()
        call.states = states = []
        try:
            for hook in self._begins:
                states.append(hook(call))
        except BaseException:
            call.raised_in = self._began[len(states)]  # it is ended too, with None: its state never came
            raise

    def failed(self, call: Call, exc: BaseException) -> Abort | None:
        """Records `exc`; returns how to answer (None: re-raise, the handler already chose a status)."""
        context_code = call.context.code() if call.context is not None else None
        call.exception = exc
        call.unexpected = not isinstance(exc, GrpcException) and not _aborted(exc, context_code)
        abort = None
        for fail in self._fails:
            answer = fail(call, exc)
            abort = abort or answer
        if abort is not None:
            call.code = abort.code
            return abort
        call.code = context_code or (exc.status_code if isinstance(exc, GrpcException) else grpc.StatusCode.UNKNOWN)
        return None

    def succeeded(self, call: Call) -> None:
        """The handler returned: the code is what it set (if anything), then the call ends."""
        code = call.context.code()
        if code is None:  # a handler that finished after the deadline answered nobody
            code = grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed(call.context) else grpc.StatusCode.OK
        call.code = code
        self.close(call)

    def cancelled(self, call: Call) -> None:
        """The call ended under the handler (aio cancels it; a sync handler runs on): record why."""
        call.code = grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed(call.context) else grpc.StatusCode.CANCELLED
        self.close(call)

    def close(self, call: Call) -> None:
        call.duration = time.perf_counter() - call.started
        call.code_name = call.code._name_  # a documented member attribute of every Enum
        states, raised_in, began = call.states, call.raised_in, len(call.states)
        for index, position, end in self._ends:
            if index <= raised_in:
                end(call, states[position] if position < began else None)
        self._lock.acquire()
        self._in_flight -= 1
        self._lock.release()

    def unregistered(self, metadata: Any, address: str) -> None:
        """Counts a call to a method no service offers, from `address` (UnimplementedMethod answers it)."""
        call = Call(UNREGISTERED, None, metadata)
        call.address = address
        call.code = grpc.StatusCode.UNIMPLEMENTED
        self.begin(call)
        self.close(call)

    def wrap_async(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` of `method` for a grpc.aio server, with the pipeline around each call."""
        rpc, inner = Rpc(method, kind_of(handler)), _inner(handler)
        deserialize, streamed = handler.request_deserializer, handler.request_streaming

        def decoded(request: Any) -> Any:
            if deserialize is None:
                return request
            return _decode_each_async(deserialize, request) if streamed else _decode(deserialize, request)

        async def abort_or_raise(
            call: Call, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException
        ) -> NoReturn:
            abort = self.failed(call, exc)
            self.close(call)
            if abort is None:
                raise exc
            await context.abort(abort.code, abort.details, abort.trailers)

        if handler.response_streaming:

            async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                call = Call(rpc, context, context.invocation_metadata())
                try:
                    self.begin(call)
                    responses = inner(decoded(request), context)
                    if hasattr(responses, "__aiter__"):
                        async for response in responses:
                            yield response
                    else:  # a coroutine writing with context.write(): the read/write API
                        await responses
                except asyncio.CancelledError:
                    self.cancelled(call)
                    raise
                except Exception as exc:
                    await abort_or_raise(call, context, exc)
                self.succeeded(call)

            return _rebuild(handler, rpc.kind, streaming)

        else:

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                call = Call(rpc, context, context.invocation_metadata())
                try:
                    self.begin(call)
                    response = inner(decoded(request), context)
                    if hasattr(response, "__await__"):
                        response = await response
                except asyncio.CancelledError:
                    self.cancelled(call)
                    raise
                except Exception as exc:
                    return await abort_or_raise(call, context, exc)
                self.succeeded(call)
                return response

            return _rebuild(handler, rpc.kind, unary)

    def wrap_sync(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` of `method` for a sync grpc.server, with the pipeline around each call."""
        rpc, inner = Rpc(method, kind_of(handler)), _inner(handler)
        deserialize, streamed = handler.request_deserializer, handler.request_streaming
        if inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner):
            raise TypeError(f"{method} is a coroutine function: a service served by threads needs plain functions")

        def decoded(request: Any) -> Any:
            if deserialize is None:
                return request
            return _decode_each(deserialize, request) if streamed else _decode(deserialize, request)

        def abort_or_raise(call: Call, context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
            abort = self.failed(call, exc)
            self.close(call)
            if abort is None:
                raise exc
            if abort.trailers:
                context.set_trailing_metadata(abort.trailers)
            context.abort(abort.code, abort.details)

        def stream(call: Call, context: grpc.ServicerContext, responses: Iterator[Any]) -> Iterator[Any]:
            try:
                yield from responses
            except GeneratorExit:  # gRPC stopped asking: the caller left or its deadline passed
                self.cancelled(call)
                raise
            except Exception as exc:
                abort_or_raise(call, context, exc)
            finish(call, context)

        def finish(call: Call, context: grpc.ServicerContext) -> None:
            if context.is_active():
                self.succeeded(call)
            else:  # the handler ran on after the caller's deadline or cancellation
                self.cancelled(call)

        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            call = Call(rpc, context, context.invocation_metadata())
            try:
                self.begin(call)
                response = inner(decoded(request), context)
            except Exception as exc:
                return abort_or_raise(call, context, exc)
            if handler.response_streaming:
                return stream(call, context, response)
            finish(call, context)
            return response

        # A handler gRPC runs on a thread pool of its own (grpc_health's Watch in libs/runtime) keeps it.
        behaviour.experimental_thread_pool = getattr(inner, "experimental_thread_pool", None)  # type: ignore[attr-defined]
        return _rebuild(handler, rpc.kind, behaviour)


def _inner(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Any]:
    # Exactly one of the four is set (the one of the handler's kind). Called with either form's context,
    # and a grpc.aio handler returns a coroutine or an async iterator: what the stubs say does not apply.
    behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    return cast("Callable[..., Any]", behaviour)


def _rebuild(
    handler: grpc.RpcMethodHandler[Any, Any], kind: str, behaviour: Callable[..., Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    # No request_deserializer: the behaviour gets the raw bytes and decodes them after the begin hooks.
    return _FACTORIES[kind](behaviour, request_deserializer=None, response_serializer=handler.response_serializer)


class _HandlerCache:
    def __init__(self, wrap: Callable[[str, grpc.RpcMethodHandler[Any, Any]], grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._wrap = wrap
        self._wrapped: dict[tuple[str, grpc.RpcMethodHandler[Any, Any]], grpc.RpcMethodHandler[Any, Any]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        key = (method, handler)
        found = self._wrapped.get(key)
        if found is None:
            found = self._wrap(method, handler)
            if len(self._wrapped) < _HANDLER_CACHE_LIMIT:
                self._wrapped[key] = found
        return found


class _WrappedGenericHandler(_GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], cache: _HandlerCache) -> None:
        self._inner, self._cache = inner, cache

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(details)
        return None if handler is None else self._cache.get(details.method, handler)


class UnimplementedMethod(_GenericRpcHandler):
    """Last in line: answers every call no service took with UNIMPLEMENTED, as gRPC itself would, but
    as a handler, so the call is counted and logged with the caller's address (gRPC's own answer has no
    context to ask it of). Bytes in, nothing out: it works for every kind of call."""

    def __init__(self, pipeline: Pipeline, asynchronous: bool) -> None:
        self._pipeline = pipeline
        behaviour = self._answer_async if asynchronous else self._answer_sync
        self.handler: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(behaviour)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return self.handler

    async def _answer_async(self, requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._pipeline.unregistered(context.invocation_metadata(), context.peer())
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    def _answer_sync(self, requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._pipeline.unregistered(context.invocation_metadata(), context.peer())
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        yield from ()  # a generator, as a stream-stream behaviour is: abort raised before it yields


class InstrumentedServer:
    """A server whose services get the pipeline as they register (`add_XServicer_to_server(s, this)`).

    Call `finish()` after the last service registered: it adds the handler that counts calls to
    unregistered methods.
    """

    def __init__(self, server: Any, pipeline: Pipeline, asynchronous: bool = True) -> None:
        self._server = server
        self._pipeline = pipeline
        self._asynchronous = asynchronous
        self._cache = _HandlerCache(pipeline.wrap_async if asynchronous else pipeline.wrap_sync)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGenericHandler(h, self._cache) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        wrapped = {name: self._cache.get(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)

    def finish(self) -> None:
        self._server.add_generic_rpc_handlers((UnimplementedMethod(self._pipeline, self._asynchronous),))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
