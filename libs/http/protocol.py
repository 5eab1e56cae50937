"""uvicorn's httptools protocol with the request limits uvicorn does not have for it.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) and, with `limit_concurrency`,
connections plus requests in progress (503 beyond), but with httptools it reads request headers of any
size and count for as long as the client takes (uvicorn issue #157: its `h11_max_incomplete_event_size`
bounds only the slower h11 parser, and no setting bounds the time headers take). Measured before this
class: one 100 MB header answered 200 OK, ten parallel 50 MB headers took the process from 61 to 565 MB,
and 200 slowloris connections stayed open for as long as they liked.

`LimitedHttpToolsProtocol` adds, per request:
- `max_header_bytes`: request line and headers together; more → 431 and the connection is closed,
  before the parser has buffered more than that (plus one read);
- `max_headers`: header fields; more → 431;
- `header_timeout`: seconds from the connection's start, or from a request's first byte, until its
  headers are complete; later → 408. This also closes connections that never send anything.

Every refusal, and every 503 of `limit_concurrency`, is counted in `http_requests_refused_total{reason}`
and logged once as a WARNING with the client's address. Give it to uvicorn as `http=`:

    uvicorn.Config(app, http=limited_protocol(HttpLimits(max_header_bytes=16384)), limit_concurrency=500)
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger("http.limits")
REFUSED = Counter(
    "http_requests_refused",
    "HTTP requests refused before reaching the app, by reason.",
    ["reason"],
)
REASONS = ("header_too_large", "too_many_headers", "header_timeout", "concurrency_limit")
for _reason in REASONS:
    REFUSED.labels(_reason)  # every series exists from the start, at 0


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses oversized and slow request headers (see the module docstring)."""

    limits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._header_count = 0
        self._reading_headers = True  # until the current request's headers are complete
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_headers:
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(431, "header_too_large", f"request headers over {self.limits.max_header_bytes} bytes")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        if self._refused:
            return
        self._reading_headers, self._header_count = True, 0
        if self._header_timer is None:  # a request after keep-alive: the clock starts at its first byte
            self._start_header_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(431, "too_many_headers", f"more than {self.limits.max_headers} header fields")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._cancel_header_timer()
        # Bytes after the headers (body, pipelined requests) count towards the next request's headers.
        self._reading_headers, self._header_bytes = False, 0
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):  # the condition on which uvicorn answers 503 itself (httptools_impl.on_headers_complete)
            REFUSED.labels("concurrency_limit").inc()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # after a refusal of ours the connection is answered and closing
            super().send_400_response(msg)

    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._reading_headers and not self._refused and not self.transport.is_closing():
            self._refuse(408, "header_timeout", f"request headers not complete within {self.limits.header_timeout} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answers `status` with `message`, closes the connection, counts and logs it; the parser's
        remaining callbacks for this connection do nothing."""
        self._refused = True
        self._cancel_header_timer()
        REFUSED.labels(reason).inc()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
        logger.warning("refused a request from %s: %d %s", client, status, message)
        body = message.encode()
        self.transport.write(
            STATUS_LINE[status]
            + b"content-type: text/plain; charset=utf-8\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()


@functools.cache
def limited_protocol(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` with `limits` (uvicorn builds one instance per connection
    from the class, so the limits travel on it)."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
