"""Logs unexpected exceptions of gRPC handlers once, with the method name and the traceback, and each
request that did not decode once, as a WARNING without a traceback (a broken or hostile client, not a bug).

Expected failures (grpc-interceptor's GrpcException, e.g. NotFound, and calls the handler aborted on
purpose) are part of the API and are not logged here (the access log has them). Logging never
swallows the error: the call still fails as ExceptionToStatus (or gRPC itself) decides.
"""

from __future__ import annotations

import logging

from libs.interceptors.core import Call, Middleware, UndecodableRequest


class ErrorLogging(Middleware):
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(__name__)

    def fail(self, call: Call, exc: BaseException) -> None:
        # A fail hook, not an end hook: a call that succeeds never pays for it.
        # Repeats are limited per method (libs/runtime/logs.py's RepeatLimit reads repeat_key).
        per_method = {"repeat_key": call.rpc.method}
        if call.unexpected:
            self._logger.error("unexpected exception in %s", call.rpc.method, exc_info=exc, extra=per_method)
        elif isinstance(exc, UndecodableRequest):
            peer = call.peer or "an unverified peer"
            self._logger.warning("%s from %s: %s", call.rpc.method, peer, exc.details, extra=per_method)
