"""Deadline propagation: a call made while handling a request never outlives the caller's deadline.

The server interceptor records the incoming call's deadline in a context variable (each RPC runs in
its own task, so the value stays with that request). Web handlers open `deadline_scope(seconds)`
for their own budget. The client interceptors give every outgoing call the smaller of its own
timeout (or the channel's default) and the time left, and fail at once with DEADLINE_EXCEEDED when
nothing is left, without sending anything.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc_interceptor import AsyncServerInterceptor

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def time_remaining() -> float | None:
    """Seconds left before the current request's deadline, or None if it has none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@contextlib.contextmanager
def deadline_scope(seconds: float) -> Iterator[None]:
    """Bounds every call made inside to `seconds` from now (or less if an outer deadline is sooner)."""
    deadline = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


class DeadlineServerInterceptor(AsyncServerInterceptor):
    """Records the caller's deadline for the handler's own outgoing calls."""

    async def intercept(
        self, method: Callable, request_or_iterator: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        remaining = context.time_remaining()
        if remaining is not None:
            _deadline.set(time.monotonic() + remaining)
        response_or_iterator = method(request_or_iterator, context)
        if hasattr(response_or_iterator, "__aiter__"):
            return response_or_iterator
        return await response_or_iterator


class _Clamp:
    def __init__(self, default_timeout: float | None) -> None:
        self._default = default_timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = details.timeout if details.timeout is not None else self._default
        remaining = time_remaining()
        if remaining is not None:
            if remaining <= 0:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details=f"the caller's deadline expired before calling {details.method.decode()}",
                )
            timeout = remaining if timeout is None else min(timeout, remaining)
        return details._replace(timeout=timeout)


class DeadlineUnaryUnaryInterceptor(_Clamp, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class DeadlineUnaryStreamInterceptor(_Clamp, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


def deadline_client_interceptors(default_timeout: float | None) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors applying `default_timeout` and the propagated deadline to every call."""
    return [DeadlineUnaryUnaryInterceptor(default_timeout), DeadlineUnaryStreamInterceptor(default_timeout)]
