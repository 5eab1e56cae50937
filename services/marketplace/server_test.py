"""The marketplace process under hostile HTTP clients: headers too large, too many, too slow, connections
that never send, more connections than allowed. Each is answered with a clear status within bounded time
and memory, counted in /metrics and logged; ordinary pages keep working.

The backend address is unreachable on purpose: none of this depends on Recommendations.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.processes.processes import ChildProcess, free_port, runfile

HEADER_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def marketplace() -> Iterator[ChildProcess]:
    port = free_port()
    process = ChildProcess(
        "marketplace",
        [
            runfile("services/marketplace/marketplace"),
            "--insecure",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--recommendations-addr=127.0.0.1:{free_port()}",
            "--max-header-bytes=8192",
            "--max-headers=50",
            f"--header-timeout={HEADER_TIMEOUT}",
            "--limit-concurrency=20",
            "--log-format=text",
        ],
        on_line=lambda line: None,
    ).start()
    process.wait_for_port(port)
    process.port = port  # type: ignore[attr-defined]
    yield process
    process.stop()


def raw_request(port: int, data: bytes, timeout: float = 5) -> bytes:
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


def refused(marketplace: ChildProcess, reason: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{marketplace.port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf'^http_requests_refused_total{{reason="{reason}"}} (\S+)$', text, re.M)
    assert match, f"no http_requests_refused_total for {reason}"
    return float(match.group(1))


def resident_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))


def test_a_header_larger_than_allowed_is_431_and_closes(marketplace: ChildProcess) -> None:
    before = refused(marketplace, "header_too_large")
    answer = raw_request(marketplace.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in answer
    assert refused(marketplace, "header_too_large") == before + 1


def test_too_many_header_fields_are_431(marketplace: ChildProcess) -> None:
    before = refused(marketplace, "too_many_headers")
    headers = b"".join(b"X-%d: 1\r\n" % n for n in range(60))
    answer = raw_request(marketplace.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert refused(marketplace, "too_many_headers") == before + 1


def test_headers_sent_too_slowly_get_408_and_the_connection_is_closed(marketplace: ChildProcess) -> None:
    before = refused(marketplace, "header_timeout")
    with socket.create_connection(("127.0.0.1", marketplace.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        begun = time.monotonic()
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert HEADER_TIMEOUT <= time.monotonic() - begun < 3
    assert refused(marketplace, "header_timeout") == before + 1


def test_a_connection_that_never_sends_is_closed(marketplace: ChildProcess) -> None:
    with socket.create_connection(("127.0.0.1", marketplace.port), timeout=5) as sock:
        begun = time.monotonic()
        read_until_closed(sock)
    assert time.monotonic() - begun < 3


def test_ten_parallel_50_mb_headers_leave_memory_flat(marketplace: ChildProcess) -> None:
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
        sender.join(timeout=30)
    assert len(answers) == 10
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers)
    assert resident_kib(marketplace.pid) - before < 20 * 1024


def test_past_the_concurrency_limit_requests_get_503_and_are_counted(marketplace: ChildProcess) -> None:
    before = refused(marketplace, "concurrency_limit")
    idle = [socket.create_connection(("127.0.0.1", marketplace.port), timeout=5) for _ in range(20)]
    try:
        answer = raw_request(marketplace.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        for sock in idle:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert refused(marketplace, "concurrency_limit") == before + 1
    time.sleep(0.1)  # let the server see the idle connections close
    with urllib.request.urlopen(f"http://127.0.0.1:{marketplace.port}/healthz", timeout=5) as response:
        assert response.status == 200


def test_every_refusal_is_logged(marketplace: ChildProcess) -> None:
    logged = "\n".join(marketplace.lines)
    for status in ("431", "408"):
        assert re.search(rf"WARNING http.limits: refused a request from 127\.0\.0\.1:\d+: {status} ", logged)
    assert "Exceeded concurrency limit." in logged
