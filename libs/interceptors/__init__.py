"""Middleware shared by every gRPC service and client of the bookstore (grpc.aio and sync).

A server gets the whole stack with one call; services register on what it returns:

    server = instrument(grpc.aio.server(), "orders")                                # aio
    server = instrument(grpc.server(executor), "orders", asynchronous=False)        # sync
    add_OrderServiceServicer_to_server(servicer, server)
    server.finish()  # after the last service: calls to methods none offers are counted too

libs/runtime/server.py does this for our services, and libs/runtime/channel.py adds
`client_interceptors(...)` to every channel.
"""

from __future__ import annotations

import logging
from typing import Any, TypedDict, Unpack

from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry

from libs.interceptors.access_log import AccessLog
from libs.interceptors.authz import AccessPolicy, Authorization
from libs.interceptors.batched_lines import FLUSH_INTERVAL
from libs.interceptors.client import ASYNC_INTERCEPTORS, SyncClientInterceptor
from libs.interceptors.core import InstrumentedServer, Middleware, Pipeline
from libs.interceptors.deadlines import DeadlineRecorder
from libs.interceptors.error_logging import ErrorLogging
from libs.interceptors.exception_to_status import ExceptionToStatus
from libs.interceptors.load_shedding import LoadShedding
from libs.interceptors.metrics import ServerMetrics
from libs.interceptors.request_id import RequestId
from libs.interceptors.tracing import Tracing

__all__ = [
    "AccessPolicy",
    "client_interceptors",
    "instrument",
    "server_middleware",
]


def server_middleware(
    service_name: str,
    *,
    logger: logging.Logger | None = None,
    policy: AccessPolicy | None = None,
    registry: CollectorRegistry = REGISTRY,
    tracer_provider: trace.TracerProvider | None = None,
    access_log_interval: float = FLUSH_INTERVAL,
    max_in_flight: int = 0,
) -> list[Middleware]:
    """The standard server stack, in the order `begin` runs (`end` runs in reverse):

    1. RequestId: first, so everything after can log the request's id.
    2. Tracing: continues the caller's trace; the trace id is known from here on.
    3. ServerMetrics: started / in flight now; handled and latency with the final code.
    4. AccessLog: one JSON line with the final code, after everything inside has ended.
    5. ExceptionToStatus: turns what the inner layers and the handler raise into a status.
    6. ErrorLogging: logs unexpected exceptions once, with the request id still set.
    7. LoadShedding (with `max_in_flight`): RESOURCE_EXHAUSTED past that many calls in progress,
       counted and logged by the layers above.
    8. Authorization (with mTLS, i.e. when a policy is given): rejects before any work is done.
    9. DeadlineRecorder: the caller's deadline, for the handler's outgoing calls.
    """
    stack: list[Middleware] = [
        RequestId(),
        Tracing(tracer_provider),
        ServerMetrics(registry),
        AccessLog(service_name, interval=access_log_interval),
        ExceptionToStatus(),
        ErrorLogging(logger),
    ]
    if max_in_flight:
        stack.append(LoadShedding(max_in_flight))
    if policy is not None:
        stack.append(Authorization(policy))
    stack.append(DeadlineRecorder())
    return stack


class _MiddlewareOptions(TypedDict, total=False):
    """The keyword arguments of `server_middleware`."""

    logger: logging.Logger | None
    policy: AccessPolicy | None
    registry: CollectorRegistry
    tracer_provider: trace.TracerProvider | None
    access_log_interval: float
    max_in_flight: int


def instrument(
    server: Any,
    service_name: str,
    *,
    asynchronous: bool = True,
    middleware: list[Middleware] | None = None,
    **options: Unpack[_MiddlewareOptions],
) -> InstrumentedServer:
    """`server` (a `grpc.aio.server()`, or with asynchronous=False a `grpc.server(...)`) with the whole
    stack around every call of the services registered on what this returns. `middleware` replaces the
    standard stack; `options` are those of `server_middleware`."""
    stack = server_middleware(service_name, **options) if middleware is None else middleware
    return InstrumentedServer(server, Pipeline(stack), asynchronous=asynchronous)


def client_interceptors(
    *,
    default_timeout: float | None = None,
    asynchronous: bool = True,
    registry: CollectorRegistry = REGISTRY,
    tracer_provider: trace.TracerProvider | None = None,
) -> list[Any]:
    """The client middleware for a grpc.aio channel (one interceptor per RPC kind: grpc.aio gives an
    interceptor only the first kind it implements), or, asynchronous=False, one interceptor for
    `grpc.intercept_channel`. Both cover unary, server-streaming, client-streaming and bidi calls."""
    # list[Any]: grpc-stubs types grpc.aio's `interceptors=` as a placeholder no object matches
    # (grpc.aio.ClientInterceptor), so a precise element type would make every caller cast.
    if asynchronous:
        return [kind(default_timeout, registry, tracer_provider) for kind in ASYNC_INTERCEPTORS]
    return [SyncClientInterceptor(default_timeout, registry, tracer_provider)]
