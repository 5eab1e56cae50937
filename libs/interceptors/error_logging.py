"""Logs unexpected exceptions of gRPC handlers once, with the method name and the traceback.

Expected failures (grpc-interceptor's GrpcException, e.g. NotFound, and calls the handler aborted on
purpose) are part of the API and are not logged here. The exception is always re-raised, so an outer
ExceptionToStatusInterceptor still turns it into a status: this interceptor never swallows errors.
Place it inside (after) ExceptionToStatusInterceptor so it sees the original exception.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_interceptor import AsyncServerInterceptor
from grpc_interceptor.exceptions import GrpcException

_EXPECTED = (GrpcException, grpc.aio.AbortError)


class ErrorLoggingInterceptor(AsyncServerInterceptor):
    """grpc.aio server interceptor that logs unexpected handler exceptions and re-raises them."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(__name__)

    async def intercept(
        self,
        method: Callable,
        request_or_iterator: Any,
        context: grpc.aio.ServicerContext,
        method_name: str,
    ) -> Any:
        try:
            response_or_iterator = method(request_or_iterator, context)
            if hasattr(response_or_iterator, "__aiter__"):
                return self._stream(response_or_iterator, method_name)
            return await response_or_iterator
        except Exception as ex:
            self._log(ex, method_name)
            raise

    async def _stream(self, responses: AsyncIterator[Any], method_name: str) -> AsyncIterator[Any]:
        try:
            async for response in responses:
                yield response
        except Exception as ex:
            self._log(ex, method_name)
            raise

    def _log(self, ex: Exception, method_name: str) -> None:
        if not isinstance(ex, _EXPECTED):
            self._logger.error("unexpected exception in %s", method_name, exc_info=ex)
