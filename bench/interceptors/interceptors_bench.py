"""Benchmark: the Recommend RPC with our full middleware stack versus no interceptors, same run.

    ./bazelw run //bench/interceptors -- [--seconds 10] [--rounds 5] [--clients 8] [--streams 16]

Three servers — bare (no interceptors), noop (the pipeline with one empty middleware) and full (the
whole stack) — run on loopback, plaintext (h2load cannot present a client certificate, so the mTLS
authorisation step is not part of any), all pinned to the same core; three h2load processes (Debian
nghttp2-client, real gRPC frames) on the other core load them at the same time for `--seconds` per
round. This machine's speed drifts by tens of percent within seconds (rounds of one server run alone
ranged 1,900–4,800 req/s), and servers measured one after the other see different machines; loaded
together, they share every slow and fast moment. Each round gives every server's requests per
CPU-second (its own user + system time over the same window); the figure is the median over the
rounds of full / bare. The req/s column is each server's share of the one core.

h2load counts gRPC errors as successes, so the statuses are checked too: the full server's own
metrics must count only OK calls, at least as many as h2load saw succeed, and every server must
answer a sample of calls from a real gRPC client with OK.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    PIN_SERVER,
    REQUEST,
    RpcResult,
    check_statuses,
    cpu_seconds,
    grpc_frame,
    h2load_command,
    handled,
    parse_h2load,
    run_h2load,
    start_quiet,
)
from libs.processes.processes import ChildProcess, free_ports, runfile

NAMES = {
    "bare": "bare: no interceptors",
    "noop": "noop: the pipeline with no middleware",
    "full": "full: the whole stack (libs/interceptors)",
}


def start(variant: str) -> tuple[ChildProcess, int, int]:
    port, metrics_port = free_ports(2)
    args = [*PIN_SERVER, runfile("bench/interceptors/server"), "--variant", variant, "--insecure"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "0", "--blocking-workers", "4"]
    if variant == "full":
        args += ["--metrics-port", str(metrics_port)]
    return start_quiet(variant, args, port), port, metrics_port


def load_together(servers: dict, body: Path, args: argparse.Namespace) -> dict[str, RpcResult]:
    """Loads every server at once for `args.seconds`; each result carries the server's CPU per call."""
    before = {variant: cpu_seconds(server.pid) for variant, (server, _, _) in servers.items()}
    loads = {
        variant: subprocess.Popen(
            h2load_command(port, body, args.clients, args.streams, seconds=args.seconds),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for variant, (_, port, _) in servers.items()
    }
    outputs = {variant: load.communicate(timeout=args.seconds + 60)[0] for variant, load in loads.items()}
    results = {}
    for variant, (server, _, _) in servers.items():
        result = parse_h2load(outputs[variant])
        (user, system), (user_before, system_before) = cpu_seconds(server.pid), before[variant]
        result.cpu_us_per_request = (user + system - user_before - system_before) / result.succeeded * 1e6
        result.user_us_per_request = (user - user_before) / result.succeeded * 1e6
        results[variant] = result
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of a round (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--clients", type=int, default=8, help="h2load connections per server (default 8)")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per connection (default 16)")
    args = parser.parse_args(argv)
    if not shutil.which("h2load"):
        print("h2load is missing: apt-get install nghttp2-client", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as temporary:
        body = Path(temporary) / "request.bin"
        body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
        servers = {variant: start(variant) for variant in NAMES}
        try:
            for _, port, _ in servers.values():
                check_statuses(port)
                run_h2load(port, body, 5000, args.clients, args.streams)  # warm-up
            rounds = [load_together(servers, body, args) for _ in range(args.rounds)]
            counted = handled(servers["full"][2])
            assert set(counted) == {"OK"}, f"the full server answered with other statuses: {counted}"
            seen = 50 + 5000 + sum(r["full"].succeeded for r in rounds)
            assert counted["OK"] >= seen, f"the full server counted {counted['OK']} OK calls, h2load saw {seen}"
            for _, port, _ in servers.values():
                check_statuses(port)
        finally:
            for server, _, _ in servers.values():
                server.stop()
    report(rounds, args)
    return 0


def report(rounds: list[dict[str, RpcResult]], args: argparse.Namespace) -> None:
    load = f"h2load -D{args.seconds} -c{args.clients} -m{args.streams} -t1"
    print(f"Recommend over loopback, the three servers on one core loaded together ({load} each), {args.rounds} rounds")
    print(
        f"{'variant':<44} {'req/s':>7} {'mean latency':>13} {'CPU/call':>9} {'of it user':>10}"
        f" {'calls per CPU-second vs bare':>29}"
    )
    cost = 0.0
    for variant, name in NAMES.items():
        ratios = [r["bare"].cpu_us_per_request / r[variant].cpu_us_per_request for r in rounds]
        ratio = statistics.median(ratios)
        if variant == "full":
            cost = 1 - ratio
        print(
            f"{name:<44} {statistics.median(r[variant].requests_per_second for r in rounds):>7,.0f}"
            f" {statistics.median(r[variant].mean_latency_ms for r in rounds):>10.2f} ms"
            f" {statistics.median(r[variant].cpu_us_per_request for r in rounds):>6.0f} us"
            f" {statistics.median(r[variant].user_us_per_request for r in rounds):>7.0f} us"
            f" {ratio:>14.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})"
        )
    print("(medians over the rounds; CPU/call is the server's own user + system time per completed call)")
    print(f"req/s per round: { {v: [round(r[v].requests_per_second) for r in rounds] for v in NAMES} }")
    print("every call the full server counted ended OK; all three answered a gRPC client with OK")
    print(f"throughput cost of the full stack: {cost:.1%} (target: at most 10%)")


if __name__ == "__main__":
    sys.exit(main())
