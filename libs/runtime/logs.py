"""Process logging: JSON lines for machines (the default) or plain text for people.

Every record carries the current request id and trace id (from libs/interceptors), so a log line
can be joined with the access log and with traces. Access-log records (logger `access`) are
already JSON objects and are printed as they are.

What clients can make a server log is bounded: WARNING and ERROR records from one place in the code
(logger, file, line) pass at most `RepeatLimit.burst` times a minute; the rest are counted in
`log_records_suppressed_total{logger}` and the next one to pass says how many were left out. gRPC's
"Invalid encoding" records (a client's metadata value that is not UTF-8, twice per call) lose
gRPC's traceback, which says nothing of the client. In JSON mode, what native code writes to stderr
(gRPC core's own log lines: a malformed `grpc-timeout` makes one) becomes a JSON record of logger
`grpc.core` too, so every line a process writes parses as JSON, whatever a client sends.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import select
import signal
import sys
import threading
import time
from collections import defaultdict

from prometheus_client import Counter

from libs.interceptors.batched_lines import ACCESS_LOGGER
from libs.interceptors.request_id import current_request_id
from libs.interceptors.tracing import current_trace_id

FORMATS = ("json", "text")


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == ACCESS_LOGGER:
            return True  # its JSON already carries both ids
        record.request_id = current_request_id()
        record.trace_id = current_trace_id()
        return True


SUPPRESSED = Counter(
    "log_records_suppressed", "WARNING and ERROR records left out of the log as repeats, by logger.", ["logger"]
)


class RepeatLimit(logging.Filter):
    """At most `burst` WARNING-or-worse records a `window` from each place in the code; the access log is
    never limited (one line per call is its point)."""

    def __init__(self, burst: int = 10, window: float = 60.0) -> None:
        """`burst` records a `window` (seconds) from each place."""
        super().__init__()
        self.burst, self.window = burst, window
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, int, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.name == ACCESS_LOGGER:
            return True
        if record.name == "grpc._cython.cygrpc" and str(record.msg).startswith("Invalid encoding"):
            # A client's bad bytes, not our error: no traceback (gRPC's own frames), a WARNING.
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 10_000:  # places in the code are few; a bound all the same
                self._seen.clear()
            # The place in the code; a caller that logs several kinds of event from one place names each
            # (extra={"repeat_key": ...}). The state: window start, passed in it, left out since one passed.
            state = self._seen[(record.name, record.pathname, record.lineno, getattr(record, "repeat_key", ""))]
            if now - state[0] >= self.window:
                state[0], state[1] = now, 0
            state[1] += 1
            if state[1] > self.burst:
                state[2] += 1
                SUPPRESSED.labels(record.name).inc()
                return False
            left_out, state[2] = int(state[2]), 0
        if left_out:
            record.msg, record.args = f"{record.getMessage()} ({left_out} more like it left out)", None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOGGER:
            return record.getMessage()  # already JSON lines, one per call
        entry = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "") or None,
            "trace_id": getattr(record, "trace_id", "") or None,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOGGER:  # a batch of lines: give each its own prefix
            prefix = f"{self.formatTime(record)} INFO {ACCESS_LOGGER}: "
            return "\n".join(prefix + line for line in record.getMessage().split("\n"))
        return super().format(record)


class WholeLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record with as few write(2) calls as possible, each of whole lines and at most
    PIPE_BUF bytes: processes sharing one stderr pipe (--processes N, a container's log) then never mix
    their lines, which a pipe guarantees only for writes of up to PIPE_BUF bytes. A batch of access-log
    lines is one record of many lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            self.flush()  # whatever was written to the stream another way goes first
            try:
                fd = self.stream.fileno()
            except (AttributeError, OSError):  # not a file (a test's captured stream): written as it is
                self.stream.write(data.decode())
                return
            for chunk in _chunks_of_lines(data, select.PIPE_BUF):
                while chunk:
                    chunk = chunk[os.write(fd, chunk) :]
        except Exception:
            self.handleError(record)


def _chunks_of_lines(data: bytes, limit: int) -> list[bytes]:
    """`data` cut after newlines into pieces of at most `limit` bytes (a longer line is a piece alone)."""
    chunks, start = [], 0
    while start < len(data):
        end = start + limit
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else data.find(b"\n", end) + 1 or len(data)
        chunks.append(data[start:end])
        start = end
    return chunks


_NATIVE_LEVELS = {"F": logging.CRITICAL, "E": logging.ERROR, "W": logging.WARNING, "I": logging.INFO}
_NATIVE_PLACE = re.compile(r" ([\w.-]+):(\d+)\] ")  # gRPC core's "E1204 20:49:17.776123 1520 file.cc:1048] ..."


_native_relayed = False  # once per process: a second configure_logging keeps the pipe


def _relay_native_lines(pipe: int) -> None:
    """Turns each line written to the pipe into a record of logger `grpc.core` (its level and source place
    from gRPC core's prefix, so repeats of one place are limited like any other)."""
    native = logging.getLogger("grpc.core")
    with os.fdopen(pipe, "rb") as lines:
        for raw in lines:
            line = raw.decode("utf-8", "backslashreplace").rstrip("\n")
            place = _NATIVE_PLACE.search(line)
            native.handle(
                native.makeRecord(
                    native.name,
                    _NATIVE_LEVELS.get(line[:1], logging.WARNING),
                    place.group(1) if place else "native",
                    int(place.group(2)) if place else 0,
                    "%s",
                    (line,),
                    None,
                )
            )


def _capture_native_stderr() -> None:
    """Points file descriptor 2 at a pipe relayed into logging, and Python's own stderr (sys.stderr, the
    log handler's stream, tracebacks at exit) at the real one. Forked children inherit the pipe."""
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    # Started with every signal blocked, as the threads it may share a process with expect: a process-wide
    # signal (SIGCHLD, SIGTERM) goes to any thread that does not block it, and here SIGCHLD would be dropped
    # and SIGTERM end the process, unseen by the supervisor's sigtimedwait or Python's handlers.
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        threading.Thread(target=_relay_native_lines, args=(read,), name="native-stderr", daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    """Replaces the root logger's handlers with one writing `log_format` lines to stderr."""
    global _native_relayed
    if log_format == "json" and not _native_relayed:
        _capture_native_stderr()
        _native_relayed = True
    handler = WholeLinesHandler(sys.stderr)
    handler.addFilter(RepeatLimit())
    handler.addFilter(_ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
