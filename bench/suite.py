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
with every core; the gateway ≤ 2× the direct call's CPU per call; and issue 26's, listed at the end as
met or missed: ≥ 1.0× the tutorial's calls per CPU-second on one core, ≥ 1.0× the multiprocessing
example's req/s and calls per CPU-second on the whole machine, p99 ≤ 2× p50 at 50 % of the pinned peak,
the marketplace's home page ≥ 4× the Flask app's. For each missed one, py-spy samples the server under
that row's load for `--profile-seconds` and the largest share names the next lever (bench/levers.py).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import PIN_SERVER, REQUEST, grpc_frame, h2load_command, run_wrk, start_quiet, wrk_command
from bench.gateway.gateway_bench import gateway_rows
from bench.images import image_rows
from bench.levers import profile_under_load
from bench.overload.overload_bench import CLIENTS as OVERLOAD_CLIENTS
from bench.overload.overload_bench import STREAMS as OVERLOAD_STREAMS
from bench.overload.overload_bench import Outcome, overload
from bench.recommend import (
    CLIENTS,
    LATENCY_SECONDS,
    RECOMMENDATIONS,
    STREAMS,
    WHOLE_MACHINE_CLIENTS,
    WHOLE_MACHINE_STREAMS,
    Measured,
    ours,
    recommend_rows,
)
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
    parser.add_argument(
        "--profile-seconds",
        type=int,
        default=10,
        help="seconds of py-spy per missed target (default 10; 0: no profiles)",
    )
    args = parser.parse_args(argv)
    missing = [tool for tool in ("h2load", "wrk") if not shutil.which(tool)]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install nghttp2-client wrk", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as temporary:
        body = Path(temporary) / "request.bin"
        body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
        recommend = recommend_rows(args.requests, args.rounds, body)
        scratch = Path(temporary) / "overload"
        scratch.mkdir()
        overloaded = overload("defaults", [], 2 * recommend.ours_peak, args.duration, body, scratch)
        rows = (
            recommend.rows + [overload_row(overloaded, recommend.ours_peak)] + gateway_rows(args.requests, args.rounds)
        )
        pages_ratio, table = suite_table(args, rows, recommend)
        print(table)
        ratios = {
            **recommend.ratios,
            "pages": pages_ratio,
            "overload-ok": overloaded.ok_per_second / recommend.ours_peak,
            "overload-p99": overloaded.probe_ok_p(0.99) / overloaded.unloaded_p(0.99),
            "overload-refusals": overloaded.refused_as_resource_exhausted,
        }
        print_targets(ratios, recommend.ours_peak, body, args.profile_seconds)
    return 0


def overload_row(outcome: Outcome, peak: float) -> tuple[str, str, str, str]:
    """Ours at twice its pinned peak, open loop (bench/overload: its defaults variant)."""
    refused = collections.Counter(code for code, _ in outcome.probe if code != "OK")
    return (
        "Recommend at 2x its peak [1 core]: ours, open loop (bench/overload)",
        f"{outcome.ok_per_second:,.0f} OK/s",
        f"p99 {outcome.probe_ok_p(0.99):.0f} ms",
        f"{outcome.ok_per_second / peak:.2f}x peak answered OK; a real client's OK calls p99 "
        f"{outcome.probe_ok_p(0.99):.1f} ms against {outcome.unloaded_p(0.99):.1f} ms before; its refused calls: "
        + (", ".join(f"{n} {code}" for code, n in refused.most_common()) or "none")
        + f"; {outcome.unaccounted} unaccounted",
    )


def marketplace_commands() -> tuple[list, list, list, tuple[int, int, int]]:
    """Recommendations (the marketplace's backend), the tutorial's Flask app and ours (as shipped, its
    access log on, 2 processes), and their ports."""
    rec_port, base_port, web_port = ports = tuple(free_ports(3))
    backend_addr = f"127.0.0.1:{rec_port}"
    recommendations = [runfile(RECOMMENDATIONS), "--insecure", "--host", "127.0.0.1", "--port", rec_port]
    baseline = [runfile("bench/marketplace/baseline"), "--port", base_port, "--recommendations-addr", backend_addr]
    marketplace = [
        runfile("services/marketplace/marketplace"), "--insecure", "--host", "127.0.0.1", "--port", web_port,
        "--processes", 2, "--recommendations-addr", backend_addr,
    ]  # fmt: skip
    return recommendations, baseline, marketplace, ports  # type: ignore[return-value]


def suite_table(args: argparse.Namespace, rows: list, recommend: Measured) -> tuple[float, str]:
    """The marketplace's rows and the rest of the table; the home page's ratio to Flask's."""
    recommendations, baseline, marketplace, (rec_port, base_port, web_port) = marketplace_commands()

    def pages(port: int, path: str) -> tuple[float, float, int]:
        results = [run_wrk(f"http://127.0.0.1:{port}{path}", args.duration, 16) for _ in range(args.rounds)]
        rate = statistics.median(r.pages_per_second for r in results)
        return rate, statistics.median(r.mean_latency_ms for r in results), sum(r.non_2xx for r in results)

    measured: dict[str, tuple[float, float, int]] = {}
    backend = start_quiet("backend", recommendations, rec_port)
    try:
        for name, command, port, paths in (
            ("tutorial Flask app", baseline, base_port, {"/": "tutorial Flask app /"}),
            ("ours", marketplace, web_port, {"/category/mystery": "ours /category/mystery", "/": "ours / (6 shelves)"}),
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
    rows += recommend.latency_rows

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = (
        f"h2load -n{args.requests} -c8 -m16 -t1 (latency: --rps, {LATENCY_SECONDS} s), wrk -t2 -c16 -d{args.duration}s"
    )
    lines = [f"//bench, {when}: {load}, median of {args.rounds} rounds"]
    width = max(len(row[0]) for row in rows)
    lines += [f"{label:<{width}}  {value:>16}  {latency_text:>10}  {note}" for label, value, latency_text, note in rows]

    images = image_rows()
    width = max(len(row[0]) for row in images)
    lines.append(f"\n{'Images (built by Bazel)':<{width}}  {'compressed':>10}  {'unpacked':>10}  digest")
    lines += [f"{label:<{width}}  {c:>10}  {u:>10}  {note}" for label, c, u, note in images]
    return measured["ours / (6 shelves)"][0] / baseline_rate, "\n".join(lines)


def print_targets(ratios: dict[str, float], ours_peak: float, body: Path, seconds: int) -> None:
    """Issue 26's targets, met or missed; for each missed one, where the server's time goes under that
    row's load and the lever it points at (bench/levers.py)."""
    print("\nIssue 26's targets (ratios of this run)")
    profiled: dict[str, list[str]] = {}
    for name, (what, goal, more_is_better) in TARGETS.items():
        met = ratios[name] >= goal if more_is_better else ratios[name] <= goal
        bound = "≥" if more_is_better else "≤"
        print(f"  {'met   ' if met else 'missed'}  {what}: {ratios[name]:.2f}x (goal {bound} {goal})")
        if met or not seconds:
            continue
        profile = PROFILES[name]
        if profile not in profiled:
            profiled[profile] = run_profile(profile, ours_peak, body, seconds)
            print(f"    where the server's Python time goes under this row's load (py-spy --gil, {seconds} s):")
            print("\n".join(profiled[profile]))
        else:
            print("    profile: as above")


TARGETS = {  # issue 26's, by name: (what, goal, whether more is better)
    "pinned": ("ours' calls/CPU-s on 1 core, against the tutorial's sync server", 1.0, True),
    "all-rate": ("ours --processes auto, req/s against grpc's multiprocessing example", 1.0, True),
    "all-cpu": ("ours --processes auto, calls/CPU-s against grpc's multiprocessing example", 1.0, True),
    "tails": ("ours on 1 core at 50 % of its peak, p99 / p50", 2.0, False),
    "pages": ("marketplace home page (6 shelves), pages/s against the tutorial's Flask app", 4.0, True),
    "overload-ok": ("at 2x the pinned peak offered, OK calls/s against the peak", 0.9, True),
    "overload-p99": ("at 2x the pinned peak offered, OK calls' p99 against the unloaded p99", 5.0, False),
    "overload-refusals": ("at 2x the pinned peak offered, refused calls that are RESOURCE_EXHAUSTED", 1.0, True),
}
PROFILES = {
    "pinned": "pinned",
    "all-rate": "all",
    "all-cpu": "all",
    "tails": "tails",
    "pages": "pages",
    "overload-ok": "overload",
    "overload-p99": "overload",
    "overload-refusals": "overload",
}
"""Which load each target's profile runs under (the two whole-machine targets share one)."""


def run_profile(profile: str, ours_peak: float, body: Path, seconds: int) -> list[str]:
    port, metrics_port = free_ports(2)
    server = ours()(port, metrics_port)
    if profile == "pinned":
        load = h2load_command(port, body, CLIENTS, STREAMS, seconds=seconds + 4)
        return profile_under_load([*PIN_SERVER, *server], port, load, seconds)
    if profile == "tails":
        rate = 0.5 * ours_peak / CLIENTS
        load = h2load_command(port, body, CLIENTS, STREAMS, seconds=seconds + 4, rate_per_client=rate)
        return profile_under_load([*PIN_SERVER, *server], port, load, seconds)
    if profile == "overload":
        rate = 2 * ours_peak / OVERLOAD_CLIENTS
        load = h2load_command(port, body, OVERLOAD_CLIENTS, OVERLOAD_STREAMS, seconds=seconds + 4, rate_per_client=rate)
        return profile_under_load([*PIN_SERVER, *server], port, load, seconds)
    if profile == "all":
        server = [*server, "--processes", "auto"]
        load = h2load_command(
            port, body, WHOLE_MACHINE_CLIENTS, WHOLE_MACHINE_STREAMS, seconds=seconds + 4, pinned=False
        )
        return profile_under_load(server, port, load, seconds, supervised=True)
    recommendations, _, marketplace, (rec_port, _, web_port) = marketplace_commands()
    backend = start_quiet("backend", recommendations, rec_port)
    try:
        load = wrk_command(f"http://127.0.0.1:{web_port}/", seconds + 4, 16)
        return profile_under_load(marketplace, web_port, load, seconds, supervised=True)
    finally:
        backend.stop()


if __name__ == "__main__":
    sys.exit(main())
