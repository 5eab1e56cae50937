"""Structured access log: one JSON line per RPC.

Fields: timestamp (UTC, ISO 8601, when the call ended), service (ours, e.g. "recommendations"),
method, code, duration_ms, peer (the caller's certificate name under mTLS, set by Authorization;
else null), peer_address, request_id, trace_id (null when the call carries no trace).

The hot path only queues the fields; a background thread turns them into lines every 50 ms and
hands each batch to the `access` logger as one record, which libs/runtime/logs.py prints one line
per call. Measured (bench/interceptors): a logging record per call cost more CPU than the rest of
the middleware together. The price is that lines appear up to 50 ms late and the last 50 ms are
lost if the process is killed with SIGKILL; `flush()` (called on graceful shutdown and at exit)
writes what is queued.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from json.encoder import encode_basestring_ascii

from libs.interceptors.core import Call, Middleware

ACCESS_LOGGER = "access"
FLUSH_INTERVAL = 0.05
_instances: weakref.WeakSet[AccessLog] = weakref.WeakSet()


def _string(value: str | None) -> str:
    """A JSON string, or null for None and ""."""
    return encode_basestring_ascii(value) if value else "null"


class AccessLog(Middleware):
    def __init__(self, service_name: str, logger: logging.Logger | None = None) -> None:
        self._service_json = _string(service_name)
        self._second, self._second_text = -1, ""
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._pending: collections.deque[tuple] = collections.deque()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        _instances.add(self)

    def end(self, call: Call) -> None:
        context = call.context
        self._pending.append(
            (
                time.time(),
                call.method,
                call.code.name,
                call.duration,
                call.peer,
                context.peer() if context is not None else None,
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
            time.sleep(FLUSH_INTERVAL)
            self.flush()

    def flush(self) -> None:
        """Writes every queued line now."""
        with self._lock:
            if not self._pending or not self._logger.isEnabledFor(logging.INFO):
                self._pending.clear()
                return
            lines = []
            while self._pending:
                lines.append(self._line(*self._pending.popleft()))
            record = self._logger.makeRecord(self._logger.name, logging.INFO, "", 0, "\n".join(lines), (), None)
            self._logger.handle(record)

    def _line(self, ended, method, code, duration, peer, address, request_id, trace_id) -> str:
        # Hand-assembled JSON (strings escaped by json's C encoder): a third of json.dumps' cost.
        second = int(ended)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        millis = int((ended - second) * 1000)
        return (
            f'{{"timestamp":"{self._second_text}.{millis:03d}+00:00","service":{self._service_json},'
            f'"method":{_string(method)},"code":"{code}","duration_ms":{round(duration * 1000, 3)!r},'
            f'"peer":{_string(peer)},"peer_address":{_string(address)},"request_id":{_string(request_id)},'
            f'"trace_id":{_string(trace_id)}}}'
        )


def flush_all() -> None:
    """Flushes every access log of this process (graceful shutdown, exit, tests)."""
    for access_log in list(_instances):
        access_log.flush()


atexit.register(flush_all)
