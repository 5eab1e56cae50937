"""Benchmark: Recommend as JSON through the gateway beside the same call over gRPC, in one run.

    ./bazelw run //bench/gateway -- [--requests 20000] [--rounds 3]

Recommendations and the gateway (both plaintext: h2load cannot do mTLS) run on core 1, h2load on core 0.
Each round sends `--requests` calls two ways, with the same tool and concurrency: gRPC straight to
Recommendations (h2load, 8 connections × 16 streams), and `GET /v1/recommendations?...` to the gateway
(h2load --h1, 16 connections: uvicorn speaks HTTP/1.1), which transcodes each into one Recommend call.
Per way: calls per second, and the CPU time per call of every process on the path (from /proc), so the
transcoder's cost is CPU per call against the direct call's (target: at most 2x). Recommendations' own
metrics must count exactly one Recommend per JSON call (one extra hop, no retries), every call OK.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    PIN_LOAD,
    PIN_SERVER,
    REQUEST,
    check_statuses,
    grpc_frame,
    h2load_command,
    handled,
    match,
    parse_h2load,
    start_quiet,
    tree_cpu_seconds,
)
from libs.processes.processes import ChildProcess, free_ports, runfile

RECOMMENDATIONS = "services/recommendations/recommendations"
GATEWAY = "services/gateway/gateway"
PATH = "/v1/recommendations?user_id=1&category=MYSTERY&max_results=3"  # REQUEST, as JSON over HTTP
CLIENTS, STREAMS = 8, 16
HTTP_CONNECTIONS = 16  # one request in flight on each (HTTP/1.1): as many as gRPC's 8 × 16 would be too many
WARM_UP = 2000
Row = tuple[str, str, str, str]


@dataclass
class Way:
    """One way of calling Recommend: its measured rounds."""

    label: str
    rates: list[float]
    latencies_ms: list[float]
    cpu_us: dict[str, list[float]]  # per call, by process on the path

    def cpu_per_call(self) -> float:
        return sum(statistics.median(values) for values in self.cpu_us.values())


def http_command(port: int, requests: int) -> list:
    return [
        *PIN_LOAD, "h2load", "--h1", "-n", str(requests), "-c", str(HTTP_CONNECTIONS), "-m", "1", "-t", "1",
        f"http://127.0.0.1:{port}{PATH}",
    ]  # fmt: skip


def measure(command: list, requests: int, path: dict[str, ChildProcess], way: Way) -> None:
    """One run of `command`; the CPU each process of `path` spent per call over it."""
    before = {name: tree_cpu_seconds(process.pid) for name, process in path.items()}
    output = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    result = parse_h2load(output)
    ok = int(match(r"status codes: (\d+) 2xx", output).group(1))
    if result.succeeded != requests or ok != requests:
        raise RuntimeError(f"{way.label}: {requests} sent, {result.succeeded} done, {ok} answered 2xx:\n{output}")
    for name, process in path.items():
        way.cpu_us.setdefault(name, []).append((tree_cpu_seconds(process.pid) - before[name]) * 1e6 / requests)
    way.rates.append(result.requests_per_second)
    way.latencies_ms.append(result.mean_latency_ms)


def check_json(port: int) -> None:
    """A real JSON call gets three books: what h2load cannot tell."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{PATH}", timeout=5) as response:
        assert len(json.load(response)["recommendations"]) == 3


def gateway_rows(requests: int, rounds: int) -> list[Row]:
    """The two rows: direct gRPC, and JSON through the gateway (with the ratios and the hop count)."""
    rec_port, metrics_port, gateway_port = free_ports(3)
    recommendations = [
        *PIN_SERVER, runfile(RECOMMENDATIONS), "--insecure", "--host", "127.0.0.1", "--port", rec_port,
        "--metrics-port", metrics_port, "--drain-seconds", "0",
    ]  # fmt: skip
    gateway = [
        *PIN_SERVER, runfile(GATEWAY), "--insecure", "--host", "127.0.0.1", "--port", gateway_port,
        "--drain-seconds", "0", "--recommendations-addr", f"127.0.0.1:{rec_port}",
    ]  # fmt: skip
    direct = Way("Recommend over gRPC, direct", [], [], {})
    transcoded = Way("Recommend as JSON through the gateway", [], [], {})
    with tempfile.TemporaryDirectory() as temporary:
        body = Path(temporary) / "request.bin"
        body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
        grpc_command = h2load_command(rec_port, body, CLIENTS, STREAMS, requests=requests)
        backend = start_quiet("recommendations", recommendations, rec_port)
        try:
            front = start_quiet("gateway", gateway, gateway_port)
            try:
                check_statuses(rec_port)
                check_json(gateway_port)
                subprocess.run(
                    h2load_command(rec_port, body, CLIENTS, STREAMS, requests=WARM_UP), check=True, capture_output=True
                )
                subprocess.run(http_command(gateway_port, WARM_UP), check=True, capture_output=True)
                calls_before = handled(metrics_port)
                for _ in range(rounds):  # alternating: drift hits both ways alike
                    measure(grpc_command, requests, {"recommendations": backend}, direct)
                    measure(
                        http_command(gateway_port, requests),
                        requests,
                        {"gateway": front, "recommendations": backend},
                        transcoded,
                    )
                calls = {code: count - calls_before.get(code, 0) for code, count in handled(metrics_port).items()}
            finally:
                front.stop()
        finally:
            backend.stop()
    sent = 2 * rounds * requests  # as many gRPC calls as JSON ones
    not_ok = {code: count for code, count in calls.items() if code != "OK" and count}
    hops = (calls.get("OK", 0) - rounds * requests) / (rounds * requests)
    ratio = transcoded.cpu_per_call() / direct.cpu_per_call()
    gateway_share = statistics.median(transcoded.cpu_us["gateway"]) / direct.cpu_per_call()
    rows = []
    for way, note in (
        (direct, f"{1e6 / direct.cpu_per_call():,.0f} calls/CPU-s"),
        (
            transcoded,
            f"{1e6 / transcoded.cpu_per_call():,.0f} calls/CPU-s of gateway + recommendations; "
            f"{statistics.median(transcoded.rates) / statistics.median(direct.rates):.2f}x direct's calls/s; "
            f"CPU per call {ratio:.2f}x direct's (gateway alone {gateway_share:.2f}x, target ≤ 2); "
            f"{hops:.2f} Recommend calls per JSON call",
        ),
    ):
        cpu = ", ".join(f"{name} {statistics.median(values):.0f} µs" for name, values in way.cpu_us.items())
        rows.append(
            (
                f"{way.label} [1 core]",
                f"{statistics.median(way.rates):,.0f} req/s",
                f"{statistics.median(way.latencies_ms):.2f} ms",
                f"{note}; CPU per call: {cpu}",
            )
        )
    problems = ", ".join(f"{count:.0f} {code}" for code, count in not_ok.items())
    if problems or calls.get("OK", 0) != sent:
        rows.append(("Recommend through the gateway: NOT OK", f"{calls.get('OK', 0):.0f} OK of {sent}", "", problems))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000, help="calls per way and round (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, median reported (default 3)")
    args = parser.parse_args(argv)
    if not shutil.which("h2load"):
        print("h2load is missing: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    rows = gateway_rows(args.requests, args.rounds)
    load = f"gRPC: -c{CLIENTS} -m{STREAMS}; JSON: --h1 -c{HTTP_CONNECTIONS}"
    print(f"h2load -n{args.requests} ({load}), median of {args.rounds} rounds")
    width = max(len(row[0]) for row in rows)
    for label, value, latency, note in rows:
        print(f"{label:<{width}}  {value:>12}  {latency:>8}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
