"""Benchmark: the Recommend RPC with our full middleware stack versus no interceptors, same run.

    ./bazelw run //bench/interceptors -- [--requests 20000] [--clients 8] [--streams 16] [--rounds 3]

Each variant runs as its own server process on loopback (plaintext: h2load cannot present a client
certificate, so the mTLS authorisation step is not part of either), one at a time, alternating, for
`--rounds` rounds after a warm-up; the table shows the median round. Load comes from h2load (Debian
nghttp2-client) sending real gRPC frames. h2load counts gRPC errors as successes, so the benchmark
also checks the statuses: the full server's own metrics must count every request as OK, and both
servers must answer a sample of calls from a real gRPC client with OK.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.processes.processes import ChildProcess, free_port, runfile

METHOD = "/books.recommendations.v1.RecommendationService/Recommend"
# One core for the server, the other for h2load: without pinning, the two fight over both cores and
# rounds of the same variant differ by 30 %.
PIN_SERVER, PIN_LOAD = (["taskset", "-c", "1"], ["taskset", "-c", "0"]) if shutil.which("taskset") else ([], [])
REQUEST = recommendations_pb2.RecommendRequest(user_id=1, category=catalog_pb2.MYSTERY, max_results=3)


@dataclass
class Result:
    requests_per_second: float
    mean_latency_ms: float
    succeeded: int
    cpu_us_per_request: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: no compression flag, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def run_h2load(port: int, body: Path, requests: int, clients: int, streams: int) -> Result:
    command = [
        *PIN_LOAD,
        "h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams), "-t", "1",
        "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
        f"http://127.0.0.1:{port}{METHOD}",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    rate = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)]
    succeeded = int(re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", output).group(1))
    return Result(rate, float(mean.group(1)) * scale, succeeded)


def check_statuses(port: int, calls: int = 50) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = recommendations_pb2_grpc.RecommendationServiceStub(channel)
        for _ in range(calls):
            assert len(stub.Recommend(REQUEST, timeout=5).recommendations) == 3


def handled_ok(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    pattern = r'grpc_server_handled_total\{grpc_code="OK",grpc_method="Recommend"[^}]*\} ([\d.e+]+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def start(variant: str) -> tuple[ChildProcess, int, int]:
    port, metrics_port = free_port(), free_port()
    args = [
        *PIN_SERVER,
        runfile("bench/interceptors/server"),
        "--variant",
        variant,
        "--insecure",
        "--host",
        "127.0.0.1",
    ]
    args += ["--port", str(port), "--drain-seconds", "0", "--blocking-workers", "4"]
    if variant == "full":
        args += ["--metrics-port", str(metrics_port)]
    server = ChildProcess(variant, args, discard_output=True).start()
    server.wait_for_port(port)
    return server, port, metrics_port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000, help="requests per round (default 20000)")
    parser.add_argument("--clients", type=int, default=8, help="h2load connections (default 8)")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per connection (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per variant (default 3)")
    args = parser.parse_args(argv)
    if not shutil.which("h2load"):
        print("h2load is missing: apt-get install nghttp2-client", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as temporary:
        body = Path(temporary) / "request.bin"
        body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
        results: dict[str, list[Result]] = {"bare": [], "noop": [], "full": []}
        servers = {variant: start(variant) for variant in results}
        try:
            for _, port, _ in servers.values():
                check_statuses(port)
                run_h2load(port, body, min(args.requests, 5000), args.clients, args.streams)  # warm-up
            for _ in range(args.rounds):
                for variant, (server, port, _) in servers.items():
                    before = cpu_seconds(server.pid)
                    result = run_h2load(port, body, args.requests, args.clients, args.streams)
                    result.cpu_us_per_request = (cpu_seconds(server.pid) - before) / args.requests * 1e6
                    results[variant].append(result)
            full_metrics = servers["full"][2]
            expected = 50 + min(args.requests, 5000) + args.rounds * args.requests
            assert handled_ok(full_metrics) == expected, "some requests did not end with grpc-status OK"
            for _, port, _ in servers.values():
                check_statuses(port)
        finally:
            for server, _, _ in servers.values():
                server.stop()

    median = {v: sorted(r, key=lambda x: x.requests_per_second)[len(r) // 2] for v, r in results.items()}
    bare, full = median["bare"], median["full"]
    load = f"h2load -n{args.requests} -c{args.clients} -m{args.streams} -t1"
    print(f"Recommend over loopback, {load}, server and h2load on one core each, median of {args.rounds} rounds")
    print(f"{'variant':<44} {'req/s':>8} {'mean latency':>13} {'server CPU/req':>15} {'vs bare':>8}")
    names = {
        "bare": "bare: no interceptors",
        "noop": "noop: the pipeline with no middleware",
        "full": "full: the whole stack (libs/interceptors)",
    }
    for variant, result in median.items():
        cpu = statistics.median(r.cpu_us_per_request for r in results[variant])
        ratio = result.requests_per_second / bare.requests_per_second
        print(
            f"{names[variant]:<44} {result.requests_per_second:>8,.0f} {result.mean_latency_ms:>10.2f} ms"
            f" {cpu:>12.0f} us {ratio:>8.2f}"
        )
    spread = {v: [round(r.requests_per_second) for r in rs] for v, rs in results.items()}
    print(f"all rounds (req/s): {spread}")
    print("every request answered grpc-status OK (checked with the full server's metrics and a gRPC client)")
    cost = 1 - full.requests_per_second / bare.requests_per_second
    print(f"throughput cost of the full stack: {cost:.1%} (target: at most 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
