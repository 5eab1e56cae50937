"""Process logging: JSON lines for machines (the default) or plain text for people.

Every record carries the current request id and trace id (from libs/interceptors), so a log line
can be joined with the access log and with traces. Access-log records (logger `access`) are
already JSON objects and are printed as they are.
"""

from __future__ import annotations

import datetime
import json
import logging
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


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    """Replaces the root logger's handlers with one writing `log_format` lines to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
