"""A web service's access log: one JSON line per HTTP request, batched like the gRPC one
(libs/interceptors/batched_lines.py) instead of uvicorn's record per request.

Fields: timestamp (UTC, ISO 8601, when the answer ended), service, method, path (without the query,
which may carry a shopper's data), status (500 when the app failed before answering), duration_ms,
client (address:port, the proxy's unless uvicorn believes its X-Forwarded-For) and request_id (the
response's X-Request-ID, which the gRPC calls it made carry too: the join to their access lines).
"""

from __future__ import annotations

import logging
import time
from itertools import repeat
from operator import mul

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.interceptors.batched_lines import FLUSH_INTERVAL, BatchedLines, joined_lines, json_string, timestamps
from libs.interceptors.request_id import HTTP_HEADER

_REQUEST_ID = HTTP_HEADER.lower().encode()
# A queued line: ended (time.time()), method, path, status, duration (s), client, request id.
_Row = tuple[float, str, str, int, float, str, str]


class AccessLog(BatchedLines[_Row]):
    """ASGI middleware: wrap the whole app with it, so that it sees the status of every answer, the
    app's failures (500) included."""

    def __init__(
        self, app: ASGIApp, service_name: str, logger: logging.Logger | None = None, interval: float = FLUSH_INTERVAL
    ) -> None:
        super().__init__(logger, interval)
        self.app = app
        self._service = f',"service":{json_string(service_name)},"method":'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, request_id = 500, ""  # if the app raises before answering, uvicorn answers 500

        async def send_and_see(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                request_id = next((v.decode("latin-1") for k, v in message.get("headers", ()) if k == _REQUEST_ID), "")
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            client = scope.get("client")
            self.add(
                (
                    time.time(),
                    scope["method"],
                    scope["path"],
                    status,
                    time.perf_counter() - started,
                    f"{client[0]}:{client[1]}" if client else "",
                    request_id,
                )
            )

    def _lines(self, rows: list[_Row]) -> str:
        """The batch's lines, assembled column by column (every per-row step a C function)."""
        ended, methods, paths, statuses, durations, clients, request_ids = zip(*rows, strict=True)
        parts = zip(
            timestamps(ended),
            repeat(self._service),
            map(json_string, methods),  # what the client sent: escaped like every other value
            repeat(',"path":'),
            map(json_string, paths),
            repeat(',"status":'),
            map(str, statuses),
            repeat(',"duration_ms":'),
            map("%.3f".__mod__, map(mul, durations, repeat(1000))),
            repeat(',"client":'),
            map(json_string, clients),
            repeat(',"request_id":'),
            map(json_string, request_ids),
            repeat("}\n"),
        )
        return joined_lines(parts)
