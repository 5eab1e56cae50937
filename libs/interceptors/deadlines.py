"""Deadline propagation: a call made while handling a request never outlives the caller's deadline.

`DeadlineRecorder` (server middleware) records the incoming call in a context variable (each aio
RPC runs in its own task, each sync RPC on its own thread, so the value stays with that request);
the time left is asked of the call only when an outgoing call needs it, since most requests make
none. Web handlers open `deadline_scope(seconds)` for their own budget. The client interceptors
(libs/interceptors/client.py) give every outgoing call `clamp(timeout)`: the smaller of its own
timeout (or the channel default) and the time left, failing at once with DEADLINE_EXCEEDED when
nothing is left, without sending anything.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from typing import Any

from libs.interceptors.core import Call, Middleware

# An absolute time.monotonic() deadline, or the servicer context of the request being handled.
_deadline: contextvars.ContextVar[Any] = contextvars.ContextVar("deadline", default=None)
_NO_DEADLINE = 1e9  # seconds; the sync server reports a call without a deadline as 2**63 seconds away


class DeadlineExpired(Exception):
    """The caller's deadline passed before an outgoing call could start."""


def time_remaining() -> float | None:
    """Seconds left before the current request's deadline, or None if it has none."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    if isinstance(deadline, float):
        return deadline - time.monotonic()
    remaining = deadline.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE else remaining


@contextlib.contextmanager
def deadline_scope(seconds: float) -> Iterator[None]:
    """Bounds every call made inside to `seconds` from now (or less if an outer deadline is sooner)."""
    outer = time_remaining()
    token = _deadline.set(time.monotonic() + (seconds if outer is None else min(outer, seconds)))
    try:
        yield
    finally:
        _deadline.reset(token)


def clamp(timeout: float | None) -> float | None:
    """The timeout an outgoing call may have; raises DeadlineExpired if the caller's time is up."""
    remaining = time_remaining()
    if remaining is None:
        return timeout
    if remaining <= 0:
        raise DeadlineExpired("the caller's deadline expired before the call started")
    return remaining if timeout is None else min(timeout, remaining)


class DeadlineRecorder(Middleware):
    """Records the caller's deadline for the handler's own outgoing calls."""

    def begin(self, call: Call) -> None:
        _deadline.set(call.context)  # None for an unregistered method; asked for the time left lazily

    def end(self, call: Call, state: None) -> None:
        # The call's context holds the context variables it ran with, and so this reference back to
        # it: a cycle that only the garbage collector breaks, and until it does, gRPC's sync server keeps
        # the finished call's HTTP/2 stream open (the connection refuses new streams past its limit).
        _deadline.set(None)
