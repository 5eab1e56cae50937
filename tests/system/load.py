"""An HTTP/1.1 load generator for the system tests, standard library only (it runs inside a network
namespace through `ip netns exec`, with no site-packages).

    load.py --url http://10.77.0.3:8080/ --notice TEXT --rate 400 --duration 60 [--connections 16] [--timeout 2]

Open loop at --rate requests per second (0 = closed loop, as fast as the connections go) over
keep-alive connections, for at most --duration seconds and --max-requests requests. Prints one JSON
object: counts by outcome, latency percentiles, and per-second counts of the failures. A request
fails when it gets no answer within --timeout, a status other than 200, or a page with the degraded
notice (--notice).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened after any error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nUser-Agent: obfy-load\r\n\r\n".encode())
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        body = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run(args: argparse.Namespace) -> dict:
    url = urlsplit(args.url)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    notice = args.notice.encode()
    outcomes: dict[str, int] = {}
    failures_by_second: dict[int, int] = {}
    latencies: list[float] = []
    slowest = 0.0
    started = time.monotonic()
    stop_at = started + args.duration
    queue: asyncio.Queue[float | None] = asyncio.Queue()  # send times; None stops a worker

    async def worker() -> None:
        nonlocal slowest
        connection = Connection(url.hostname or "127.0.0.1", url.port or 80)
        while await queue.get() is not None:
            begun = time.monotonic()
            try:
                status, body = await asyncio.wait_for(connection.get(path), args.timeout)
                outcome = (
                    "ok"
                    if status == 200 and notice not in body
                    else ("degraded" if status == 200 else f"http_{status}")
                )
            except TimeoutError:
                outcome = "timeout"
                connection.close()
            except (OSError, ValueError, asyncio.IncompleteReadError) as error:
                outcome = type(error).__name__
                connection.close()
            latency = time.monotonic() - begun
            latencies.append(latency)
            slowest = max(slowest, latency)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome != "ok":
                second = int(begun - started)
                failures_by_second[second] = failures_by_second.get(second, 0) + 1
        connection.close()

    workers = [asyncio.create_task(worker()) for _ in range(args.connections)]
    sent = 0
    while sent < args.max_requests and time.monotonic() < stop_at:
        if args.rate:
            due = started + sent / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(due)
        else:
            while queue.qsize() >= args.connections:  # closed loop: keep every connection busy
                await asyncio.sleep(0.0005)
            queue.put_nowait(time.monotonic())
        sent += 1
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - started
    latencies.sort()

    def percentile(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else 0.0

    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "rate": round(len(latencies) / elapsed, 1),
        "outcomes": outcomes,
        "failed": sum(n for outcome, n in outcomes.items() if outcome != "ok"),
        "p50_ms": percentile(0.5),
        "p99_ms": percentile(0.99),
        "max_ms": round(slowest * 1000, 2),
        "failures_by_second": failures_by_second,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="requests per second; 0 = closed loop")
    parser.add_argument("--duration", type=float, required=True, help="seconds, at most")
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds before a request counts as hung")
    parser.add_argument("--notice", required=True, help="text of the page that says it is degraded")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
