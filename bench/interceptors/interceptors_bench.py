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
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import PIN_SERVER, REQUEST, RpcResult, check_statuses, cpu_seconds, grpc_frame, handled_ok, run_h2load
from libs.processes.processes import ChildProcess, free_port, runfile


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
        results: dict[str, list[RpcResult]] = {"bare": [], "noop": [], "full": []}
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
