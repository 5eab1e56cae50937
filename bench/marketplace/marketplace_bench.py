"""Benchmark: marketplace page views per second, ours versus the tutorial-equivalent Flask baseline.

    ./bazelw run //bench/marketplace -- [--duration 10] [--connections 16] [--rounds 3] [--processes 2]

Starts one Recommendations server (plaintext: the baseline cannot do mTLS) and, one at a time, the
baseline (bench/marketplace/baseline.py: Flask development server, one blocking gRPC call per page)
and our marketplace, and loads each with wrk (Debian) on loopback. Two pages of ours are measured:
the one-category page `/category/mystery` (one gRPC call, like the baseline's only page, with 10
books) and the home page `/` (six shelves of three books, one RecommendEach call). Non-2xx responses
and socket errors are counted and reported.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys

from bench.common import PageResult, run_wrk, start_quiet
from libs.processes.processes import free_ports, runfile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per target (default 3)")
    parser.add_argument("--processes", type=int, default=2, help="our marketplace's serving processes (default 2)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install wrk", file=sys.stderr)
        return 2

    rec_port, base_port, ours_port = free_ports(3)
    backend_addr = f"127.0.0.1:{rec_port}"
    recommendations = start_quiet(
        "recommendations",
        [runfile("services/recommendations/recommendations"), "--insecure", "--host", "127.0.0.1", "--port", rec_port],
        rec_port,
    )
    targets = {
        "baseline: Flask dev server, /": (
            [runfile("bench/marketplace/baseline"), "--port", base_port, "--recommendations-addr", backend_addr],
            base_port,
            "/",
        ),
        "ours: /category/mystery (1 call)": (
            [
                runfile("services/marketplace/marketplace"), "--insecure", "--host", "127.0.0.1", "--port", ours_port,
                "--processes", args.processes, "--no-access-log", "--recommendations-addr", backend_addr,
            ],
            ours_port,
            "/category/mystery",
        ),
    }  # fmt: skip
    targets["ours: / (6 shelves, 1 RecommendEach call)"] = (*targets["ours: /category/mystery (1 call)"][:2], "/")
    results: dict[str, list[PageResult]] = {name: [] for name in targets}
    try:
        for _ in range(args.rounds):
            for name, (command, port, path) in targets.items():
                server = start_quiet(name, command, port)
                try:
                    run_wrk(f"http://127.0.0.1:{port}{path}", 2, args.connections)  # warm-up
                    results[name].append(run_wrk(f"http://127.0.0.1:{port}{path}", args.duration, args.connections))
                finally:
                    server.stop()
    finally:
        recommendations.stop()

    baseline = statistics.median(r.pages_per_second for r in results["baseline: Flask dev server, /"])
    load = f"wrk -t2 -c{args.connections} -d{args.duration}s"
    print(f"{load} on loopback, median of {args.rounds} rounds; ours with --processes {args.processes}")
    print(f"{'target':<42} {'pages/s':>9} {'mean latency':>13} {'non-2xx+errors':>15} {'vs baseline':>12}")
    for name, rs in results.items():
        rate = statistics.median(r.pages_per_second for r in rs)
        latency = statistics.median(r.mean_latency_ms for r in rs)
        failed = sum(r.non_2xx for r in rs)
        print(f"{name:<42} {rate:>9,.0f} {latency:>10.2f} ms {failed:>15} {rate / baseline:>11.2f}x")
    print(f"all rounds (pages/s): { {n: [round(r.pages_per_second) for r in rs] for n, rs in results.items()} }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
