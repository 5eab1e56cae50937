"""Process logging: JSON lines for machines (the default) or plain text for people.

Every record carries the current request id and trace id (from libs/interceptors), so a log line
can be joined with the access log and with traces. Access-log records (logger `access`) are
already JSON objects and are printed as they are.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import select
import sys

from libs.interceptors.access_log import ACCESS_LOGGER
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


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    """Replaces the root logger's handlers with one writing `log_format` lines to stderr."""
    handler = WholeLinesHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
