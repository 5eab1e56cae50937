"""uvicorn's httptools protocol with the request limits uvicorn does not have for it.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) and, with `limit_concurrency`,
connections plus requests in progress (503 beyond), but with httptools it reads request headers of any
size and count for as long as the client takes (uvicorn issue #157: its `h11_max_incomplete_event_size`
bounds only the slower h11 parser, and no setting bounds the time headers take): huge headers were
answered and slowloris connections stayed open as long as they liked (bench/RESULTS.md, "Figures behind
the code").

Nor does it bound request bodies or answers a client never reads: a `GET` announcing 100 MB of body,
then sending a byte every 3 s from a client that reads nothing, kept its connection (and its place under
`limit_concurrency`) for as long as it liked; ten of them locked every other client out of a server with
`--limit-concurrency 10`.

`LimitedHttpToolsProtocol` adds, per request:
- `max_header_bytes`: request line and headers together; more → 431 and the connection is closed,
  before the parser has buffered more than that; bytes of pipelined requests after them count towards
  their own requests, not this one;
- `max_headers`: header fields; more → 431;
- `header_timeout`: seconds from the connection's start, or from a request's first byte, until its
  headers are complete; later → 408. This also closes connections that never send anything;
- a body on a method that takes none (GET, HEAD, TRACE) → 400 at once;
- `max_body_bytes`: a larger body (declared, or as it arrives chunked) → 413;
- `body_timeout`: seconds from the end of the headers until the whole body has arrived, and
  `min_body_rate`: bytes per second it must average meanwhile (checked every second, except while the app
  is not reading); slower or later → 408, or only the connection closed if the answer has begun;
- `write_timeout`: seconds an answer may wait for a client that does not read it; then the connection is
  aborted;
- and what the parser refuses is answered 400 and counted like the rest (uvicorn's answer counts nowhere).

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

from libs.runtime.settings import between, setting

logger = logging.getLogger("http.limits")
REFUSED = Counter(
    "http_requests_refused",
    "HTTP requests refused before reaching the app, by reason.",
    ["reason"],
)
REASONS = (
    "header_too_large",
    "too_many_headers",
    "header_timeout",
    "concurrency_limit",
    "unexpected_body",
    "body_too_large",
    "body_timeout",
    "body_too_slow",
    "write_timeout",
    "malformed_request",
)
BODYLESS = {b"GET", b"HEAD", b"TRACE"}  # methods whose requests have no content here (RFC 9110 9.3.1, 9.3.2, 9.3.8)
for _reason in REASONS:
    REFUSED.labels(_reason)  # every series exists from the start, at 0
TIMEOUT = between(0.1, 300, "seconds")


@dataclass(frozen=True)
class HttpLimits:
    """The limits above, each a setting of its own (a flag and variable of every web service)."""

    max_header_bytes: int = setting(16 * 1024, "request line + headers; more: 431", check=between(1024, 1024 * 1024))
    max_headers: int = setting(100, "header fields per request; more: 431", check=between(8, 1000))
    header_timeout: float = setting(
        10.0, "seconds a request may take to send its headers (slowloris); later: 408", check=TIMEOUT
    )
    max_body_bytes: int = setting(1024 * 1024, "request body; more: 413", check=between(0, 1024**3))
    body_timeout: float = setting(30.0, "seconds a request body may take after its headers; later: 408", check=TIMEOUT)
    min_body_rate: int = setting(
        1024, "bytes per second a request body must average; slower: 408", check=between(1, 1024**3)
    )
    write_timeout: float = setting(
        30.0,
        "seconds an answer may wait for a client that does not read it; then the connection is dropped",
        check=TIMEOUT,
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses oversized and slow request headers (see the module docstring)."""

    limits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._header_count = 0
        self._reading_headers = True  # until the current request's headers are complete
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0
        self._body_started = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._body_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and not self._refused:
            if self._reading_headers:  # feed the parser no more than the headers may still take
                room = self.limits.max_header_bytes - self._header_bytes
                if room <= 0:
                    self._refuse(431, "header_too_large", f"request headers over {self.limits.max_header_bytes} bytes")
                    return
                piece, data = data[:room], data[room:]
                self._header_bytes += len(piece)
            else:
                piece, data = data, b""
            super().data_received(piece)

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
        # The bytes of whatever follows (body, pipelined requests) are not this request's headers.
        self._reading_headers, self._header_bytes = False, 0
        length, chunked = self._declared_body()
        method = self.parser.get_method()
        if (length or chunked) and method in BODYLESS:
            self._refuse(400, "unexpected_body", f"a {method.decode()} request takes no body")
            return
        if length > self.limits.max_body_bytes:
            self._refuse(413, "body_too_large", f"request body over {self.limits.max_body_bytes} bytes")
            return
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):  # the condition on which uvicorn answers 503 itself (httptools_impl.on_headers_complete)
            REFUSED.labels("concurrency_limit").inc()
        super().on_headers_complete()
        if length or chunked:
            self._body_bytes, self._body_started = 0, self.loop.time()
            self._body_timer = self.loop.call_later(1.0, self._check_body)

    def _declared_body(self) -> tuple[int, bool]:
        """The request's Content-Length (0 without one) and whether it is chunked."""
        length, chunked = 0, False
        for name, value in self.headers:
            if name == b"content-length" and value.strip().isdigit():
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        return length, chunked

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body_bytes:
            self._refuse(413, "body_too_large", f"request body over {self.limits.max_body_bytes} bytes")
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def _check_body(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing():
            return
        elapsed = self.loop.time() - self._body_started
        if elapsed >= self.limits.body_timeout:
            self._refuse(408, "body_timeout", f"request body not complete within {self.limits.body_timeout} s")
        elif not self.flow.read_paused and self._body_bytes < self.limits.min_body_rate * elapsed:
            self._refuse(408, "body_too_slow", f"request body slower than {self.limits.min_body_rate} bytes/s")
        else:
            self._body_timer = self.loop.call_later(1.0, self._check_body)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().resume_writing()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            self._refuse(None, "write_timeout", f"the client read no answer for {self.limits.write_timeout} s")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses (`FOO1 / HTTP/1.1`), counted and logged with the
        client's address like every refusal (uvicorn's own line names no client)."""
        if not self._refused:  # after a refusal of ours the connection is answered and closing
            self._refuse(400, "malformed_request", msg)

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

    def _refuse(self, status: int | None, reason: str, message: str) -> None:
        """Answers `status` with `message`, unless an answer is being (or, for this request, has been)
        written, then closes the connection; counts and logs it. The parser's remaining callbacks for the
        connection do nothing. `status` None: the client reads nothing, so the connection is aborted."""
        if self.cycle is not None and self.cycle.scope is self.scope:  # past this request's headers
            answer = not self.cycle.response_started and not self.pipeline
        else:  # its headers: the previous request's answer must be complete
            answer = self.cycle is None or self.cycle.response_complete
        self._refused = True
        self._cancel_header_timer()
        REFUSED.labels(reason).inc()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
        logger.warning(
            "refused a request from %s: %s %s", client, status or "aborted:", message, extra={"repeat_key": reason}
        )
        if status is None:
            self.transport.abort()
            return
        if answer:
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
