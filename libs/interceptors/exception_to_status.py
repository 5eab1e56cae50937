"""Turns exceptions raised by handlers into gRPC statuses, in one place for every service.

Handlers raise the named exceptions of grpc-interceptor (`grpc_interceptor.exceptions.NotFound`,
`InvalidArgument`, ... one per status code) and this interceptor aborts the call with that code and
message; an exception with a `status_proto()` (such as errors.BadRequest) also sends that
google.rpc.Status in the standard `grpc-status-details-bin` trailer. Any other exception becomes
INTERNAL with a generic message: its text may hold internal details (paths, SQL, hostnames), so it
goes to the server log (see ErrorLoggingInterceptor), never to the caller. A handler that already
aborted the call keeps the status it chose.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from grpc_interceptor.exception_to_status import AsyncExceptionToStatusInterceptor
from grpc_interceptor.exceptions import GrpcException

from libs.interceptors.errors import STATUS_DETAILS_KEY

INTERNAL_ERROR_DETAILS = "internal error"


class ExceptionToStatusInterceptor(AsyncExceptionToStatusInterceptor):
    """grpc.aio server interceptor mapping GrpcException to its status and anything else to INTERNAL."""

    async def handle_exception(
        self,
        ex: Exception,
        request_or_iterator: Any,
        context: grpc.aio.ServicerContext,
        method_name: str,
    ) -> NoReturn:
        if isinstance(ex, GrpcException):
            rich = getattr(ex, "status_proto", None)
            trailers = ((STATUS_DETAILS_KEY, rich().SerializeToString()),) if rich else ()
            await context.abort(ex.status_code, ex.details, trailers)
        if not context.code():  # the handler did not set a status of its own
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_DETAILS)
        raise ex
