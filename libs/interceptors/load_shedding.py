"""Load shedding: at most N calls in progress per process; the next ones are refused at once.

A refused call gets RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`, the gRPC retry protocol's way of
saying "not processed: retry after this long" (libs/runtime/channel.py's clients retry it, within gRPC's
retry throttling). Refusing costs microseconds; queueing would let every call wait and then expire.

Why our own and not grpc.aio's `maximum_concurrent_rpcs`: gRPC refuses those calls before any handler or
interceptor runs, so they never reached the metrics or the access log (bench/RESULTS.md, "Figures behind
the code"). Here the refusal is a `begin` hook that raises, after RequestId,
Tracing, ServerMetrics and AccessLog began: the call is counted, traced and logged like any other.
"""

from __future__ import annotations

import random

from grpc_interceptor.exceptions import ResourceExhausted

from libs.interceptors.core import Call, Middleware

PUSHBACK_KEY = "grpc-retry-pushback-ms"


class Overloaded(ResourceExhausted):
    """RESOURCE_EXHAUSTED before any work was done, with the delay after which a retry is welcome."""

    def __init__(self, in_flight: int, pushback_ms: int) -> None:
        super().__init__(f"server busy: {in_flight} calls in progress; retry in {pushback_ms} ms")
        self.trailers = ((PUSHBACK_KEY, str(pushback_ms)),)


class LoadShedding(Middleware):
    """Admits a call while at most `limit` are in progress, itself included (0: no limit).

    It keeps no count of its own: the pipeline counts every call from its begin to its end
    (`call.in_flight`), so a refused call leaves the count as soon as it is answered."""

    def __init__(self, limit: int, pushback_ms: tuple[int, int] = (20, 100)) -> None:
        self._limit = limit
        self._pushback_ms = pushback_ms  # jittered, so refused callers do not come back together

    def begin(self, call: Call) -> None:
        if self._limit and call.in_flight > self._limit:
            raise Overloaded(call.in_flight - 1, random.randint(*self._pushback_ms))
