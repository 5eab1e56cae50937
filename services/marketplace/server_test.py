"""The marketplace process under hostile HTTP clients: headers too large, too many, too slow, connections
that never send, bodies too large, too slow or where none belongs, answers never read, more connections
than allowed. Each is answered with a clear status (or dropped, when the client reads nothing) within
bounded time and memory, counted in /metrics and logged; ordinary pages, pipelined too, keep working.

The backend address is unreachable on purpose: none of this depends on Recommendations.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.processes.processes import ChildProcess, free_port, runfile

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 2.0
MIN_BODY_RATE = 1024
WRITE_TIMEOUT = 1.0
MAX_BODY_BYTES = 65536
CONCURRENCY_LIMIT = 20
# Bounds on what must happen "soon" (a process listening, a server answering or closing): far above the
# milliseconds these take, so that they only fail when something hangs, even on a loaded machine.
STARTUP_TIMEOUT = 120.0
SOCKET_TIMEOUT = 60.0
CLOSE_WITHIN = 30.0


class Marketplace(ChildProcess):
    """The marketplace process on `port`, keeping its log lines for `wait_for_log`."""

    def __init__(self, port: int, flags: list[str]) -> None:
        argv = [
            str(runfile("services/marketplace/marketplace")),
            "--insecure",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--recommendations-addr=127.0.0.1:{free_port()}",
            "--log-format=text",
            "--drain-seconds=0",
            *flags,
        ]
        self.port = port
        self._logged: list[str] = []
        self._new_line = threading.Condition()
        super().__init__("marketplace", argv, on_line=self._keep)

    def _keep(self, line: str) -> None:
        with self._new_line:
            self._logged.append(line)
            self._new_line.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = SOCKET_TIMEOUT) -> None:
        """Waits until a line matching `pattern` is logged (the lines reach us from a reader thread)."""
        with self._new_line:
            logged = self._new_line.wait_for(lambda: any(re.search(pattern, line) for line in self._logged), timeout)
        assert logged, f"nothing like {pattern!r} in the log within {timeout:.0f}s"


def start_marketplace(*flags: str) -> Iterator[Marketplace]:
    process = Marketplace(free_port(), list(flags))
    process.start()
    try:
        process.wait_for_port(process.port, timeout=STARTUP_TIMEOUT)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def marketplace() -> Iterator[Marketplace]:
    yield from start_marketplace(
        "--max-header-bytes=8192",
        "--max-headers=50",
        f"--header-timeout={HEADER_TIMEOUT}",
        f"--body-timeout={BODY_TIMEOUT}",
        f"--min-body-rate={MIN_BODY_RATE}",
        f"--write-timeout={WRITE_TIMEOUT}",
        f"--max-body-bytes={MAX_BODY_BYTES}",
        f"--limit-concurrency={CONCURRENCY_LIMIT}",
    )


@pytest.fixture(scope="module")
def crowded() -> Iterator[Marketplace]:
    """A marketplace with the longest header timeout allowed: connections that never send stay open (and
    counted) for as long as a test takes, so whether a request is past the concurrency limit does not depend
    on how fast the test opens them (with `marketplace`'s, the server closes them after 0.5 s)."""
    yield from start_marketplace(f"--limit-concurrency={CONCURRENCY_LIMIT}", "--header-timeout=300")


def raw_request(port: int, data: bytes, timeout: float = SOCKET_TIMEOUT) -> bytes:
    """Sends `data` on a new connection; everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the server may refuse and close while we are still sending
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def close_and_wait(sock: socket.socket) -> None:
    """Closes our end and waits until the server has dropped the connection (it closes its end after
    forgetting the connection), so that the server no longer counts it."""
    with contextlib.suppress(OSError):  # the server may have closed it already
        sock.shutdown(socket.SHUT_WR)
        read_until_closed(sock)
    sock.close()


def refused(marketplace: Marketplace, reason: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{marketplace.port}/metrics", timeout=SOCKET_TIMEOUT) as response:
        text = response.read().decode()
    match = re.search(rf'^http_requests_refused_total{{reason="{reason}"}} (\S+)$', text, re.M)
    assert match, f"no http_requests_refused_total for {reason}"
    return float(match.group(1))


def resident_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, f"no VmRSS in /proc/{pid}/status"
    return int(match.group(1))


def test_a_header_larger_than_allowed_is_431_and_closes(marketplace: Marketplace) -> None:
    before = refused(marketplace, "header_too_large")
    answer = raw_request(marketplace.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in answer
    assert refused(marketplace, "header_too_large") == before + 1


def test_too_many_header_fields_are_431(marketplace: Marketplace) -> None:
    before = refused(marketplace, "too_many_headers")
    headers = b"".join(b"X-%d: 1\r\n" % n for n in range(60))
    answer = raw_request(marketplace.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert refused(marketplace, "too_many_headers") == before + 1


def test_headers_sent_too_slowly_get_408_and_the_connection_is_closed(marketplace: Marketplace) -> None:
    before = refused(marketplace, "header_timeout")
    begun = time.monotonic()  # before connecting: the server's clock starts once it has the connection
    with socket.create_connection(("127.0.0.1", marketplace.port), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert HEADER_TIMEOUT <= time.monotonic() - begun < HEADER_TIMEOUT + CLOSE_WITHIN
    assert refused(marketplace, "header_timeout") == before + 1


def test_a_connection_that_never_sends_is_closed(marketplace: Marketplace) -> None:
    begun = time.monotonic()
    with socket.create_connection(("127.0.0.1", marketplace.port), timeout=SOCKET_TIMEOUT) as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")  # by the header timeout, not a later one (keep-alive)
    assert HEADER_TIMEOUT <= time.monotonic() - begun < HEADER_TIMEOUT + CLOSE_WITHIN


def test_ten_parallel_50_mb_headers_leave_memory_flat(marketplace: Marketplace) -> None:
    """Was: the process grew from 61 to 565 MB. Each sender is cut off after the first 8 KiB."""
    before = resident_kib(marketplace.pid)
    attack = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (50 * 1024 * 1024)
    answers: list[bytes] = []
    senders = [
        threading.Thread(target=lambda: answers.append(raw_request(marketplace.port, attack))) for _ in range(10)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=2 * SOCKET_TIMEOUT)
    assert len(answers) == 10
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers)
    assert resident_kib(marketplace.pid) - before < 20 * 1024


def test_past_the_concurrency_limit_requests_get_503_and_are_counted(crowded: Marketplace) -> None:
    before = refused(crowded, "concurrency_limit")
    idle = [
        socket.create_connection(("127.0.0.1", crowded.port), timeout=SOCKET_TIMEOUT) for _ in range(CONCURRENCY_LIMIT)
    ]
    try:
        answer = raw_request(crowded.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        for sock in idle:
            close_and_wait(sock)  # then the server no longer counts them
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert refused(crowded, "concurrency_limit") == before + 1
    with urllib.request.urlopen(f"http://127.0.0.1:{crowded.port}/healthz", timeout=SOCKET_TIMEOUT) as response:
        assert response.status == 200


def test_every_refusal_is_logged(marketplace: Marketplace, crowded: Marketplace) -> None:
    for status in ("431", "408"):
        marketplace.wait_for_log(rf"WARNING http.limits: refused a request from 127\.0\.0\.1:\d+: {status} ")
    crowded.wait_for_log(re.escape("Exceeded concurrency limit."))


def wait_until_refused(marketplace: Marketplace, reason: str, count: float, timeout: float = CLOSE_WITHIN) -> None:
    deadline = time.monotonic() + timeout
    while refused(marketplace, reason) < count:
        assert time.monotonic() < deadline, f"{reason}: {refused(marketplace, reason)} refused, not {count}"
        time.sleep(0.1)


class Trickle(threading.Thread):
    """Sends `headers`, then `chunk` every `interval` seconds until the server closes the connection or
    `stop` is set, reading nothing; `closed_after`: seconds from the end of the headers to the close."""

    def __init__(self, port: int, headers: bytes, chunk: bytes, interval: float, receive_buffer: int = 4096) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # a client that reads little
        self.sock.settimeout(SOCKET_TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.headers, self.chunk, self.interval = headers, chunk, interval
        self.stop = threading.Event()
        self.closed_after: float | None = None

    def run(self) -> None:
        self.sock.sendall(self.headers)
        begun = time.monotonic()
        try:
            while not self.stop.wait(self.interval):
                self.sock.sendall(self.chunk)
        except OSError:  # reset or broken pipe: the server closed it
            self.closed_after = time.monotonic() - begun
        finally:
            self.sock.close()


def test_a_get_announcing_a_body_is_400_at_once(marketplace: Marketplace) -> None:
    """Was: `GET /` with Content-Length: 100000000, then a byte every 3 s, kept its connection past 60 s."""
    before = refused(marketplace, "unexpected_body")
    begun = time.monotonic()
    answer = raw_request(marketplace.port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\na")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"a GET request takes no body" in answer
    assert time.monotonic() - begun < CLOSE_WITHIN
    assert refused(marketplace, "unexpected_body") == before + 1
    marketplace.wait_for_log(r"refused a request from 127\.0\.0\.1:\d+: 400 a GET request takes no body")


@pytest.mark.parametrize(
    ("reason", "chunk", "interval", "within"),
    [
        ("body_too_slow", b"a", 0.5, 1.0 + 1.0),  # 2 B/s: caught at the first check, a second in
        ("body_timeout", b"a" * 4096, 0.25, BODY_TIMEOUT + 1.0),  # 16 KiB/s, but 60000 bytes take 3.7 s
    ],
)
def test_a_body_too_slow_or_too_long_is_cut_off(
    marketplace: Marketplace, reason: str, chunk: bytes, interval: float, within: float
) -> None:
    before = refused(marketplace, reason)
    headers = b"POST /api/recommendations HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n"
    trickle = Trickle(marketplace.port, headers, chunk, interval)
    trickle.start()
    trickle.join(timeout=within + CLOSE_WITHIN)
    trickle.stop.set()
    assert trickle.closed_after is not None, "the server kept the connection"
    assert trickle.closed_after < within + CLOSE_WITHIN
    assert refused(marketplace, reason) == before + 1
    marketplace.wait_for_log(r"WARNING http.limits: refused a request from 127\.0\.0\.1:\d+: 408 request body")


def test_a_body_larger_than_allowed_is_413(marketplace: Marketplace) -> None:
    before = refused(marketplace, "body_too_large")
    declared = raw_request(
        marketplace.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
    )
    chunked = raw_request(
        marketplace.port,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (MAX_BODY_BYTES + 1, b"a" * (MAX_BODY_BYTES + 1)),
    )
    assert declared.startswith(b"HTTP/1.1 413 ")
    assert chunked.startswith(b"HTTP/1.1 413 ")
    assert refused(marketplace, "body_too_large") == before + 2
    marketplace.wait_for_log(r"refused a request from 127\.0\.0\.1:\d+: 413 request body over 65536 bytes")


def test_slow_bodies_do_not_lock_other_clients_out(crowded: Marketplace) -> None:
    """Was: as many slow bodies as --limit-concurrency gave 503 to every other client for as long as they
    lasted. Now each is cut off once it falls below the minimum rate (those past the limit get their 503
    and are closed), and the others are served."""
    before = refused(crowded, "body_too_slow") + refused(crowded, "concurrency_limit")
    headers = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"  # under the default 1 MiB
    trickles = [Trickle(crowded.port, headers, b"a", 3.0) for _ in range(CONCURRENCY_LIMIT)]
    for trickle in trickles:
        trickle.start()
    for trickle in trickles:
        trickle.join(timeout=3.0 + CLOSE_WITHIN)
        trickle.stop.set()
    assert all(trickle.closed_after is not None for trickle in trickles), "the server kept slow bodies"
    assert refused(crowded, "body_too_slow") + refused(crowded, "concurrency_limit") == before + CONCURRENCY_LIMIT
    with urllib.request.urlopen(f"http://127.0.0.1:{crowded.port}/healthz", timeout=SOCKET_TIMEOUT) as response:
        assert response.status == 200


def test_an_answer_the_client_never_reads_is_dropped(marketplace: Marketplace) -> None:
    """3,000 pipelined requests (~5 MB of answers) from a client with a 4 KiB receive buffer that reads
    nothing: the server's buffers fill, and after --write-timeout the connection is aborted."""
    before = refused(marketplace, "write_timeout")
    requests = b"GET /static/style.css HTTP/1.1\r\nHost: x\r\n\r\n" * 3000
    trickle = Trickle(marketplace.port, requests, b"", SOCKET_TIMEOUT)
    trickle.start()
    try:
        wait_until_refused(marketplace, "write_timeout", before + 1, timeout=WRITE_TIMEOUT + CLOSE_WITHIN)
    finally:
        trickle.stop.set()
    marketplace.wait_for_log(r"refused a request from 127\.0\.0\.1:\d+: aborted: the client read no answer")


@pytest.mark.parametrize("request_line", [b"FOO1 / HTTP/1.1", b"GET / HTTP/9.9", b"GET /\x00 HTTP/1.1"])
def test_a_request_the_parser_refuses_is_400_counted_and_logged(marketplace: Marketplace, request_line: bytes) -> None:
    """Was: 400, but in neither http_requests_total nor http_requests_refused_total, logged without a client."""
    before = refused(marketplace, "malformed_request")
    answer = raw_request(marketplace.port, request_line + b"\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert refused(marketplace, "malformed_request") == before + 1
    marketplace.wait_for_log(r"refused a request from 127\.0\.0\.1:\d+: 400 Invalid HTTP request")


def test_pipelined_requests_are_answered_not_431(marketplace: Marketplace) -> None:
    """Was: 500 small requests in one write got 431: the bytes of the next requests counted as this one's."""
    requests = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 499
    answer = raw_request(marketplace.port, requests + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 500
    assert b" 431 " not in answer


def served_pages(text: str, route: str) -> float:
    return sum(
        float(found)
        for found in re.findall(rf'^http_requests_total{{[^}}]*route="{re.escape(route)}"[^}}]*}} (\S+)$', text, re.M)
    )


def test_workers_answer_metrics_with_the_sum_over_every_worker() -> None:
    with contextlib.ExitStack() as stack:
        marketplace = stack.enter_context(contextlib.contextmanager(start_marketplace)("--processes=2"))
        pages = 40
        for _ in range(pages):  # a new connection each: the kernel hands them to either worker
            with urllib.request.urlopen(f"http://127.0.0.1:{marketplace.port}/healthz", timeout=SOCKET_TIMEOUT):
                pass
        # Asked several times, /metrics is answered by either worker, and every time with the sum.
        for _ in range(6):
            with urllib.request.urlopen(f"http://127.0.0.1:{marketplace.port}/metrics", timeout=SOCKET_TIMEOUT) as r:
                text = r.read().decode()
            assert served_pages(text, "/healthz") == pages
            assert re.search(r"^supervised_processes 2\.0$", text, re.M)


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=SOCKET_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_on_sigterm_it_drains_unready_then_stops_cleanly() -> None:
    """libs/runtime/web.py: /readyz says 503 for --drain-seconds while requests are still served, so a load
    balancer moves away before the port closes; then it stops with exit code 0."""
    drain = 3.0
    with contextlib.ExitStack() as stack:
        marketplace = stack.enter_context(contextlib.contextmanager(start_marketplace)(f"--drain-seconds={drain}"))
        url = f"http://127.0.0.1:{marketplace.port}"
        assert get_status(f"{url}/readyz") == 200
        marketplace.signal(signal.SIGTERM)
        marketplace.wait_for_log("draining 3.0s")
        assert get_status(f"{url}/readyz") == 503
        assert get_status(f"{url}/healthz") == 200
        assert marketplace.poll() is None, "stopped before its drain was over"
        assert marketplace.wait(timeout=drain + CLOSE_WITHIN) == 0
