"""Server middleware shared by every gRPC service of the bookstore.

`server_interceptors()` returns the stack in the order it must run; pass it to `grpc.aio.server`.
"""

from __future__ import annotations

import logging

from grpc_interceptor import AsyncServerInterceptor

from libs.interceptors.error_logging import ErrorLoggingInterceptor
from libs.interceptors.exception_to_status import ExceptionToStatusInterceptor

__all__ = ["ErrorLoggingInterceptor", "ExceptionToStatusInterceptor", "server_interceptors"]


def server_interceptors(logger: logging.Logger | None = None) -> list[AsyncServerInterceptor]:
    """The standard server stack, outermost first.

    ExceptionToStatus must wrap ErrorLogging: the logger has to see the handler's original exception,
    before it is turned into an aborted call.
    """
    return [ExceptionToStatusInterceptor(), ErrorLoggingInterceptor(logger)]
