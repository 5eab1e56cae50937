"""The benchmark suite: one command, one table, every figure measured in the same run.

    ./bazelw run //bench -- [--requests 20000] [--duration 10] [--rounds 3]

Recommend over loopback with h2load (bench/recommend.py): on one core, the bare grpc.aio ceilings
(prebuilt response; parsed request and serialised response), the tutorial's server and ours with its
full middleware stack (plaintext: h2load cannot do mTLS); on the whole machine, the tutorial's server
in 1 process and in as many as ours (grpc's multiprocessing example), and ours with 1 and `--processes
auto` processes; calls per CPU-second for each, and latency percentiles at 50 % and 90 % of our peaks.
Then Recommend as JSON through the gateway beside the direct gRPC call, on one core, with CPU per call
(bench/gateway). Then marketplace page views per second with wrk against the tutorial's Flask app,
Recommendations' start→SERVING time, and the images: size per layer, and podman run → SERVING
(bench/images.py). Needs `apt-get install nghttp2-client wrk` (and podman for the container start-up).
Targets: ours ≥ 0.9× the serialising ceiling on one core, ≥ 1.8× the tutorial and ≥ 1.5× one process
with every core, p99 ≤ 2× p50 at 50 % of peak; the gateway ≤ 2× the direct call's CPU per call;
marketplace ≥ 3×; and issue 26's: ≥ 1.0× the tutorial's calls per CPU-second on one core, ≥ 1.0× the
multiprocessing example's req/s and calls per CPU-second on the whole machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REQUEST, grpc_frame, run_wrk, start_quiet
from bench.gateway.gateway_bench import gateway_rows
from bench.images import image_rows
from bench.recommend import LATENCY_SECONDS, RECOMMENDATIONS, recommend_rows
from libs.processes.processes import ChildProcess, free_port, free_ports, runfile
from libs.runtime.readiness import wait_until_serving


def start_to_serving(samples: int) -> float:
    """Median seconds from spawning Recommendations to its health check answering SERVING."""
    times = []
    for _ in range(samples):
        port = free_port()
        begun = time.monotonic()
        command: list[str | Path | int] = [runfile(RECOMMENDATIONS), "--insecure", "--port", port]
        process = ChildProcess("startup", command, discard_output=True).start()
        try:
            wait_until_serving(f"127.0.0.1:{port}")
            times.append(time.monotonic() - begun)
        finally:
            process.stop()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000, help="h2load requests per round (default 20000)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target, median reported (default 3)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("h2load", "wrk") if not shutil.which(tool)]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install nghttp2-client wrk", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as temporary:
        body = Path(temporary) / "request.bin"
        body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
        rows, latency_rows = recommend_rows(args.requests, args.rounds, body)
    rows += gateway_rows(args.requests, args.rounds)

    rec_port, base_port, web_port = free_ports(3)
    backend_addr = f"127.0.0.1:{rec_port}"
    recommendations = [runfile(RECOMMENDATIONS), "--insecure", "--host", "127.0.0.1", "--port", rec_port]
    baseline = [runfile("bench/marketplace/baseline"), "--port", base_port, "--recommendations-addr", backend_addr]
    ours = [
        runfile("services/marketplace/marketplace"), "--insecure", "--host", "127.0.0.1", "--port", web_port,
        "--processes", 2, "--no-access-log", "--recommendations-addr", backend_addr,
    ]  # fmt: skip

    def pages(port: int, path: str) -> tuple[float, float, int]:
        results = [run_wrk(f"http://127.0.0.1:{port}{path}", args.duration, 16) for _ in range(args.rounds)]
        rate = statistics.median(r.pages_per_second for r in results)
        return rate, statistics.median(r.mean_latency_ms for r in results), sum(r.non_2xx for r in results)

    measured: dict[str, tuple[float, float, int]] = {}
    backend = start_quiet("backend", recommendations, rec_port)
    try:
        for name, command, port, paths in (
            ("tutorial Flask app", baseline, base_port, {"/": "tutorial Flask app /"}),
            ("ours", ours, web_port, {"/category/mystery": "ours /category/mystery", "/": "ours / (6 shelves)"}),
        ):
            server = start_quiet(name, command, port)
            try:
                for path, label in paths.items():
                    measured[label] = pages(port, path)
            finally:
                server.stop()
    finally:
        backend.stop()
    baseline_rate = measured["tutorial Flask app /"][0]
    for label, (rate, latency, failed) in measured.items():
        note = f"{rate / baseline_rate:.2f}x baseline, {failed} non-2xx"
        rows.append((f"Marketplace: {label}", f"{rate:,.0f} pages/s", f"{latency:.2f} ms", note))

    rows.append(("Recommendations: start → SERVING", f"{start_to_serving(5):.2f} s", "", "median of 5"))
    rows += latency_rows

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = (
        f"h2load -n{args.requests} -c8 -m16 -t1 (latency: --rps, {LATENCY_SECONDS} s), wrk -t2 -c16 -d{args.duration}s"
    )
    print(f"//bench, {when}: {load}, median of {args.rounds} rounds")
    width = max(len(row[0]) for row in rows)
    for label, value, latency_text, note in rows:
        print(f"{label:<{width}}  {value:>16}  {latency_text:>10}  {note}")

    images = image_rows()
    width = max(len(row[0]) for row in images)
    print(f"\n{'Images (built by Bazel)':<{width}}  {'compressed':>10}  {'unpacked':>10}  digest")
    for label, compressed, unpacked, note in images:
        print(f"{label:<{width}}  {compressed:>10}  {unpacked:>10}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
