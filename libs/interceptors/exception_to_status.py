"""Turns exceptions into gRPC statuses, in one place for every service (sync and aio).

Handlers raise the named exceptions of grpc-interceptor (`grpc_interceptor.exceptions.NotFound`,
`InvalidArgument`, ... one per status code) and the call is answered with that code and message; an
exception with a `status_proto()` (such as errors.BadRequest) also sends that google.rpc.Status in
the standard `grpc-status-details-bin` trailer, and one with `trailers` (load_shedding.Overloaded)
sends those. Any other exception becomes INTERNAL with a generic
message: its text may hold internal details (paths, SQL, hostnames), so it goes to the server log
(see error_logging), never to the caller. A handler that aborted the call itself keeps its status.
"""

from __future__ import annotations

import grpc
from grpc_interceptor.exceptions import GrpcException
from grpc_status import rpc_status

from libs.interceptors.core import Abort, Call, Middleware

INTERNAL_ERROR_DETAILS = "internal error"


class ExceptionToStatus(Middleware):
    def fail(self, call: Call, exc: BaseException) -> Abort | None:
        if isinstance(exc, GrpcException):
            rich = getattr(exc, "status_proto", None)
            trailers = tuple(rpc_status.to_status(rich()).trailing_metadata) if rich else ()
            return Abort(exc.status_code, exc.details, trailers + getattr(exc, "trailers", ()))
        if call.unexpected:
            return Abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_DETAILS)
        return None  # the handler aborted with a status of its own
