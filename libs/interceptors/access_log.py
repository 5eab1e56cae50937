"""Structured access log: one JSON line per RPC.

Fields: timestamp (UTC, ISO 8601, when the call ended), service (ours, e.g. "recommendations"),
method, code, duration_ms, peer (the caller's certificate name under mTLS, set by Authorization;
else null), peer_address, request_id, trace_id (null when the call carries no trace).

The hot path only queues the fields; a background thread turns them into lines every 50 ms (server
flag --access-log-interval) and hands each batch to the `access` logger as one record, which
libs/runtime/logs.py prints one line per call. The price is that lines appear up to 50 ms late and
the last 50 ms are lost if the process is killed with SIGKILL; `flush()` (called on graceful
shutdown and at exit) writes what is queued. Why: a logging record per call cost more than the rest
of the middleware together, and a batch assembled column by column with C functions (map() over
json's string encoder, one join) costs less than lines formatted one by one (callgrind figures:
bench/RESULTS.md).
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from itertools import chain, repeat
from json.encoder import encode_basestring_ascii as _json
from operator import mul, sub

from libs.interceptors.core import Call, Middleware

ACCESS_LOGGER = "access"
FLUSH_INTERVAL = 0.05
_instances: weakref.WeakSet[AccessLog] = weakref.WeakSet()
# A queued line: ended (time.time()), method, code, duration (s), peer, peer address, request id, trace id.
_Row = tuple[float, str, str, float, str, str, str, str]


_MILLISECONDS = tuple(f'.{n:03d}+00:00"' for n in range(1000))  # the end of a timestamp, by millisecond


def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class AccessLog(Middleware):
    def __init__(
        self, service_name: str, logger: logging.Logger | None = None, interval: float = FLUSH_INTERVAL
    ) -> None:
        self._service_json = _json(service_name)
        self._middle: dict[str, str] = {}  # by method: the constant middle of its lines
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._pending: collections.deque[_Row] = collections.deque()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._interval = interval
        _instances.add(self)

    def end(self, call: Call, state: None) -> None:
        context = call.context
        self._pending.append(
            (
                time.time(),
                call.rpc.method,  # strings and floats only: the garbage collector stops tracking the row
                call.code_name,
                call.duration,
                call.peer,
                context.peer() if context is not None else call.address,
                call.request_id,
                call.trace_id,
            )
        )
        if self._writer is None:
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
            rows = [pending.popleft() for _ in range(len(pending))]  # end() may append meanwhile
            if rows and self._logger.isEnabledFor(logging.INFO):
                record = self._logger.makeRecord(self._logger.name, logging.INFO, "", 0, self._lines(rows), (), None)
                self._logger.handle(record)

    def _lines(self, rows: list[_Row]) -> str:
        """The batch's lines, assembled column by column: every per-row step is a C function."""
        ended, methods, codes, durations, peers, addresses, request_ids, trace_ids = zip(*rows, strict=True)
        seconds = list(map(int, ended))
        stamps = {second: f'{{"timestamp":"{_iso_second(second)}' for second in set(seconds)}
        addresses_json = {address: _json(address) for address in set(addresses)}  # few: connections are reused
        for method in set(methods).difference(self._middle):
            self._middle[method] = f',"service":{self._service_json},"method":{_json(method)},"code":"'
        parts = zip(
            map(stamps.__getitem__, seconds),
            map(_MILLISECONDS.__getitem__, map(int, map(mul, map(sub, ended, seconds), repeat(1000)))),
            map(self._middle.__getitem__, methods),
            codes,
            repeat('","duration_ms":'),
            map("%.3f".__mod__, map(mul, durations, repeat(1000))),
            repeat(',"peer":'),
            map(_json, peers),
            repeat(',"peer_address":'),
            map(addresses_json.__getitem__, addresses),
            repeat(',"request_id":'),
            map(_json, request_ids),  # checked by RequestId, and escaped all the same: no line is trusted
            repeat(',"trace_id":'),
            map(_json, trace_ids),
            repeat("}\n"),
        )
        text = "".join(chain.from_iterable(parts))
        return text[:-1].replace(':""', ":null")  # "" means unknown; no other value can be empty


def flush_all() -> None:
    """Flushes every access log of this process (graceful shutdown, exit, tests)."""
    for access_log in list(_instances):
        access_log.flush()


atexit.register(flush_all)
