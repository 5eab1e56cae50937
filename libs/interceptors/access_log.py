"""Structured access log: one JSON line per RPC.

Fields: timestamp (UTC, ISO 8601, when the call ended), service (ours, e.g. "recommendations"),
method, code, duration_ms, peer (the caller's certificate name under mTLS, set by Authorization;
else null), peer_address, request_id, trace_id (null when the call carries no trace).

Batched (libs/interceptors/batched_lines.py): the call only queues its fields; lines are written every
50 ms (server flag --access-log-interval).
"""

from __future__ import annotations

import logging
import time
from itertools import repeat
from operator import mul

from libs.interceptors.batched_lines import FLUSH_INTERVAL, BatchedLines, joined_lines, json_string, timestamps
from libs.interceptors.core import Call, Middleware

# A queued line: ended (time.time()), method, code, duration (s), peer, peer address, request id, trace id.
_Row = tuple[float, str, str, float, str, str, str, str]


class AccessLog(BatchedLines[_Row], Middleware):
    def __init__(
        self, service_name: str, logger: logging.Logger | None = None, interval: float = FLUSH_INTERVAL
    ) -> None:
        super().__init__(logger, interval)
        self._service_json = json_string(service_name)
        self._middle: dict[str, str] = {}  # by method: the constant middle of its lines

    def end(self, call: Call, state: None) -> None:
        context = call.context
        self.add(
            (
                time.time(),
                call.rpc.method,
                call.code_name,
                call.duration,
                call.peer,
                context.peer() if context is not None else call.address,
                call.request_id,
                call.trace_id,
            )
        )

    def _lines(self, rows: list[_Row]) -> str:
        """The batch's lines, assembled column by column: every per-row step is a C function."""
        ended, methods, codes, durations, peers, addresses, request_ids, trace_ids = zip(*rows, strict=True)
        addresses_json = {address: json_string(address) for address in set(addresses)}  # few: connections are reused
        for method in set(methods).difference(self._middle):
            self._middle[method] = f',"service":{self._service_json},"method":{json_string(method)},"code":"'
        parts = zip(
            timestamps(ended),
            map(self._middle.__getitem__, methods),
            codes,
            repeat('","duration_ms":'),
            map("%.3f".__mod__, map(mul, durations, repeat(1000))),
            repeat(',"peer":'),
            map(json_string, peers),
            repeat(',"peer_address":'),
            map(addresses_json.__getitem__, addresses),
            repeat(',"request_id":'),
            map(json_string, request_ids),  # checked by RequestId, and escaped all the same: no line is trusted
            repeat(',"trace_id":'),
            map(json_string, trace_ids),
            repeat("}\n"),
        )
        return joined_lines(parts)
