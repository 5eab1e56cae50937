"""Deadline propagation: a call made while handling a request never outlives the caller's deadline.

`DeadlineRecorder` (server middleware) records the incoming call's deadline in a context variable
(each aio RPC runs in its own task, each sync RPC on its own thread, so the value stays with that
request). Web handlers open `deadline_scope(seconds)` for their own budget. The client interceptors
(libs/interceptors/client.py) give every outgoing call `clamp(timeout)`: the smaller of its own
timeout (or the channel default) and the time left, failing at once with DEADLINE_EXCEEDED when
nothing is left, without sending anything.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

from libs.interceptors.core import Call, Middleware

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


class DeadlineExpired(Exception):
    """The caller's deadline passed before an outgoing call could start."""


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
        remaining = call.context.time_remaining() if call.context is not None else None
        _deadline.set(None if remaining is None else time.monotonic() + remaining)
