"""The event loop a server runs on: uvloop by default, asyncio's own on request.

grpc.aio makes several system calls per call on the event loop's thread (a wake-up byte per
completion-queue event, and in Python 3.11 a getpid() in every `asyncio.get_running_loop()`), and where a
system call is dear, as on this project's machines, they are most of a call's cost. uvloop (libuv, from
PyPI) makes fewer and cheaper ones; bench/RESULTS.md ("Where a call's time goes") has the profiles and
the calls per core on each loop. grpc.aio supports it (grpc's own benchmarks run on it), and so does
uvicorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

EVENT_LOOPS = ("uvloop", "asyncio")
DEFAULT = "uvloop"
T = TypeVar("T")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {kind!r}: one of {', '.join(EVENT_LOOPS)}")
    return uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: str = DEFAULT) -> T:
    """`asyncio.run(main)` on the event loop `kind`."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
