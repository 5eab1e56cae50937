"""Structured access log: one JSON line per RPC.

Fields: timestamp (UTC, ISO 8601), service (ours, e.g. "recommendations"), method, code,
duration_ms, peer (the caller's certificate name under mTLS, else null), peer_address, request_id,
trace_id (null when the call carries no trace). Written at INFO to the `access` logger, whose
records libs/runtime/logs.py prints as they are (one JSON object per line).
"""

from __future__ import annotations

import datetime
import json
import logging

from libs.interceptors.authz import peer_name
from libs.interceptors.core import Call, Middleware

ACCESS_LOGGER = "access"


class AccessLog(Middleware):
    def __init__(self, service_name: str, logger: logging.Logger | None = None) -> None:
        self._service = service_name
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)

    def end(self, call: Call) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        context = call.context
        record = {
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "service": self._service,
            "method": call.method,
            "code": call.code.name,
            "duration_ms": round(call.duration * 1000, 3),
            "peer": (peer_name(context) or None) if context is not None else None,
            "peer_address": context.peer() if context is not None else None,
            "request_id": call.request_id or None,
            "trace_id": call.trace_id or None,
        }
        self._logger.info(json.dumps(record, separators=(",", ":")))
