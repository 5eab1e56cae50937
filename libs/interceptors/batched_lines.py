"""Access lines batched off the hot path: a call or request only queues its fields (`add`), and a
background thread turns the queue into JSON lines every `interval` seconds and hands each batch to the
`access` logger as one record, which libs/runtime/logs.py prints one line per call.

The price is that lines appear up to `interval` late and the last batch is lost if the process is
killed with SIGKILL; `flush()` (on graceful shutdown) and `flush_all()` (at exit) write what is queued.
Why: a logging record per call cost more than the rest of the gRPC middleware together, and a large
share of the JSON gateway's CPU per call with uvicorn's access line, while a batch assembled column by
column with C functions (map() over json's string encoder, one join) costs far less (figures:
bench/RESULTS.md, callgrind for the gRPC log and "Issue 26's targets" for the gateway).

Subclasses say how a batch of their rows becomes lines (`_lines`), with `timestamps`, `json_string` and
`joined_lines`.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from json.encoder import encode_basestring_ascii as json_string
from operator import mul, sub
from typing import Generic, TypeVar

__all__ = ["ACCESS_LOGGER", "FLUSH_INTERVAL", "BatchedLines", "flush_all", "joined_lines", "json_string", "timestamps"]

ACCESS_LOGGER = "access"
FLUSH_INTERVAL = 0.05
Row = TypeVar("Row", bound=tuple)  # type: ignore[type-arg]  # each subclass's own fields

_instances: weakref.WeakSet[BatchedLines] = weakref.WeakSet()  # type: ignore[type-arg]
_MILLISECONDS = tuple(f'.{n:03d}+00:00"' for n in range(1000))  # the end of a timestamp, by millisecond


def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def timestamps(ended: Sequence[float]) -> Iterator[str]:
    """`{"timestamp":"<UTC ISO 8601, milliseconds>"` for each time.time() of `ended`: the start of a line."""
    seconds = list(map(int, ended))
    stamps = {second: f'{{"timestamp":"{_iso_second(second)}' for second in set(seconds)}
    milliseconds = map(int, map(mul, map(sub, ended, seconds), [1000] * len(seconds)))
    return map(str.__add__, map(stamps.__getitem__, seconds), map(_MILLISECONDS.__getitem__, milliseconds))


def joined_lines(rows: Iterable[Iterable[str]]) -> str:
    """Lines from rows of JSON pieces (each row ending in "}\n"), without the last newline; a value written
    as "" (unknown) becomes null."""
    text = "".join(chain.from_iterable(rows))
    return text[:-1].replace(':""', ":null")  # no other value can be empty: every other one is quoted or a number


class BatchedLines(Generic[Row]):
    """Rows queued by `add` (cheap, from any thread), written as lines by a thread of its own."""

    def __init__(self, logger: logging.Logger | None = None, interval: float = FLUSH_INTERVAL) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._pending: collections.deque[Row] = collections.deque()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._interval = interval
        _instances.add(self)

    def add(self, row: Row) -> None:
        """Queues one line's fields: strings and numbers only, so the garbage collector does not track it."""
        self._pending.append(row)
        if self._writer is None:  # started by the first row: after a fork, in the process that serves
            self._start_writer()

    def _start_writer(self) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_forever, name="access-log", daemon=True)
                self._writer.start()

    def _write_forever(self) -> None:
        while True:
            time.sleep(self._interval)
            self.flush()

    def flush(self) -> None:
        """Writes every queued line now."""
        with self._lock:
            pending = self._pending
            rows = [pending.popleft() for _ in range(len(pending))]  # add() may append meanwhile
            if rows and self._logger.isEnabledFor(logging.INFO):
                record = self._logger.makeRecord(self._logger.name, logging.INFO, "", 0, self._lines(rows), (), None)
                self._logger.handle(record)

    def _lines(self, rows: list[Row]) -> str:
        """The batch's lines joined by newlines, without a last one."""
        raise NotImplementedError


def flush_all() -> None:
    """Flushes every batched log of this process (graceful shutdown, exit, tests)."""
    for batched in list(_instances):
        batched.flush()


atexit.register(flush_all)
