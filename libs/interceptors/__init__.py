"""Server and client middleware shared by every gRPC service of the bookstore.

`server_interceptors()` returns the server stack in the order it must run; pass it to
`grpc.aio.server` (libs/runtime does). Client-side pieces live in `deadlines`.
"""

from __future__ import annotations

import logging

from grpc_interceptor import AsyncServerInterceptor

from libs.interceptors.authz import AccessPolicy, AuthorizationInterceptor
from libs.interceptors.deadlines import DeadlineServerInterceptor
from libs.interceptors.error_logging import ErrorLoggingInterceptor
from libs.interceptors.exception_to_status import ExceptionToStatusInterceptor

__all__ = [
    "AccessPolicy",
    "AuthorizationInterceptor",
    "DeadlineServerInterceptor",
    "ErrorLoggingInterceptor",
    "ExceptionToStatusInterceptor",
    "server_interceptors",
]


def server_interceptors(
    logger: logging.Logger | None = None, policy: AccessPolicy | None = None
) -> list[AsyncServerInterceptor]:
    """The standard server stack, outermost first.

    1. ExceptionToStatus: turns whatever the inner layers raise into a status.
    2. ErrorLogging: must see the handler's original exception, so it sits inside (1).
    3. Authorization (when a policy is given, i.e. with mTLS): rejects before any work is done.
    4. Deadline: records the caller's deadline for the handler's outgoing calls.
    """
    stack: list[AsyncServerInterceptor] = [ExceptionToStatusInterceptor(), ErrorLoggingInterceptor(logger)]
    if policy is not None:
        stack.append(AuthorizationInterceptor(policy))
    stack.append(DeadlineServerInterceptor())
    return stack
