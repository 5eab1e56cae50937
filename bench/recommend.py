"""Recommend under h2load, every variant in one run: throughput, calls per CPU-second, latency percentiles.

On one core (server pinned to core 1, h2load to core 0): the bare grpc.aio ceilings (a prebuilt response;
a parsed request and a serialised response message), the tutorial's server, and ours with its full
middleware stack. On the whole machine (nothing pinned, h2load sharing the cores, 32 connections): the
tutorial's server in one process and in as many as ours (grpc's multiprocessing example), ours with one
process and ours with `--processes auto`. Then latency at 50 % and 90 % of each of ours'
peaks, open loop (h2load --rps), from h2load's log of every call. h2load counts gRPC errors as
successes: statuses are checked with a real client, and our servers' own metrics must count every call OK.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    PIN_SERVER,
    RpcResult,
    check_statuses,
    h2load_command,
    handled,
    parse_h2load,
    start_quiet,
    tree_cpu_seconds,
)
from libs.processes.processes import ChildProcess, free_ports, runfile
from libs.runtime.supervisor import available_cpus
from services.registry import REGISTRY

RECOMMENDATIONS = "services/recommendations/recommendations"
SERVING = REGISTRY["recommendations"].serving  # services/services.bzl
CLIENTS, STREAMS = 8, 16
# On the whole machine, as many calls in flight over more connections: SO_REUSEPORT hashes connections to
# processes, and 8 split unevenly between 2 (single rounds ranged 0.72x-1.26x).
WHOLE_MACHINE_CLIENTS, WHOLE_MACHINE_STREAMS = 32, 4
WARM_UP = 5000
LATENCY_SECONDS = 6
Row = tuple[str, str, str, str]


@dataclass
class Variant:
    label: str
    argv: Callable[[int, int], list]  # (port, metrics port) → command without pinning
    pinned: bool
    ours: bool = False  # our service: its /metrics says how many calls were not OK
    results: list[RpcResult] = field(default_factory=list)
    failed: int = 0  # calls h2load saw fail

    def median(self) -> RpcResult:
        return sorted(self.results, key=lambda r: r.requests_per_second)[len(self.results) // 2]


def ours(*flags: object) -> Callable[[int, int], list]:
    def argv(port: int, metrics_port: int) -> list:
        return [
            runfile(RECOMMENDATIONS), "--insecure", "--host", "127.0.0.1", "--port", port,
            "--metrics-port", metrics_port, "--drain-seconds", "0", *flags,
        ]  # fmt: skip

    return argv


def baseline(name: str, *flags: object) -> Callable[[int, int], list]:
    return lambda port, metrics_port: [runfile(f"bench/baselines/{name}"), "--port", port, *flags]


def variants() -> dict[str, Variant]:
    auto = available_cpus()
    return {
        "prebuilt": Variant("bare grpc.aio, prebuilt response", baseline("bare_aio"), True),
        "ceiling": Variant("bare grpc.aio, parses and serialises", baseline("bare_aio", "--serialise"), True),
        "ceiling-uvloop": Variant(
            "bare grpc.aio on uvloop, parses and serialises", baseline("bare_aio", "--serialise", "--uvloop"), True
        ),
        "tutorial": Variant("tutorial server (sync, 10 threads)", baseline("tutorial_server"), True),
        "ours": Variant(f"ours, full middleware stack, served by {SERVING}", ours(), True, ours=True),
        "tutorial-all": Variant("tutorial server, whole machine", baseline("tutorial_server"), False),
        "tutorial-all-n": Variant(
            f"tutorial server in {auto} processes (grpc's multiprocessing example), whole machine",
            baseline("tutorial_server", "--processes", auto),
            False,
        ),
        "ours-all-1": Variant("ours, 1 process, whole machine", ours(), False, ours=True),
        "ours-all-n": Variant(
            f"ours, --processes auto ({auto}), whole machine", ours("--processes", "auto"), False, ours=True
        ),
    }  # fmt: skip


def measure(process: ChildProcess, port: int, body: Path, requests: int, pinned: bool) -> RpcResult:
    """One h2load run, with the server's CPU time (all its processes) over it."""
    clients, streams = (CLIENTS, STREAMS) if pinned else (WHOLE_MACHINE_CLIENTS, WHOLE_MACHINE_STREAMS)
    command = h2load_command(port, body, clients, streams, requests=requests, pinned=pinned)
    cpu_before = tree_cpu_seconds(process.pid)
    output = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    result = parse_h2load(output)
    cpu = tree_cpu_seconds(process.pid) - cpu_before
    result.cpu_us_per_request = cpu * 1e6 / requests
    return result


@dataclass
class Latency:
    achieved: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    failed: int


def latency(port: int, body: Path, rate: float, pinned: bool, log: Path) -> Latency:
    """Open-loop load at `rate` calls/s for LATENCY_SECONDS; percentiles of every call's duration."""
    command = h2load_command(
        port,
        body,
        CLIENTS,
        STREAMS,
        seconds=LATENCY_SECONDS,
        pinned=pinned,
        rate_per_client=rate / CLIENTS,
        log_file=log,
    )
    output = subprocess.run(command, capture_output=True, text=True, timeout=LATENCY_SECONDS + 120, check=True).stdout
    calls = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    durations = sorted(int(duration) / 1000 for _, _, duration in calls)
    failed = sum(status != "200" for _, status, _ in calls) + len(calls) - parse_h2load(output).succeeded

    def percentile(share: float) -> float:
        return durations[min(len(durations) - 1, int(share * len(durations)))]

    return Latency(len(calls) / LATENCY_SECONDS, percentile(0.5), percentile(0.99), percentile(0.999), failed)


@dataclass
class Measured:
    rows: list[Row]  # throughput
    latency_rows: list[Row]
    ratios: dict[str, float]  # issue 26's (suite.py's TARGETS), as measured
    ours_peak: float  # req/s, pinned


def recommend_rows(requests: int, rounds: int, body: Path) -> Measured:
    measured = variants()
    latencies: dict[str, list[Latency]] = {}
    refused: dict[str, dict[str, float]] = {}  # ours: calls its own metrics counted with a code other than OK
    for group in ([n for n, v in measured.items() if v.pinned], [n for n, v in measured.items() if not v.pinned]):
        chosen = free_ports(2 * len(group))
        ports = dict(zip(group, chosen[: len(group)], strict=True))
        metrics_ports = dict(zip(group, chosen[len(group) :], strict=True))
        servers: dict[str, ChildProcess] = {}
        try:
            for name in group:
                variant = measured[name]
                argv = [*(PIN_SERVER if variant.pinned else []), *variant.argv(ports[name], metrics_ports[name])]
                servers[name] = start_quiet(name, argv, ports[name])
                check_statuses(ports[name])
                measure(servers[name], ports[name], body, WARM_UP, variant.pinned)
            for _ in range(rounds):  # rounds alternate between the variants: drift hits all alike
                for name in group:
                    variant = measured[name]
                    result = measure(servers[name], ports[name], body, requests, variant.pinned)
                    variant.results.append(result)
                    variant.failed += requests - result.succeeded
            with tempfile.TemporaryDirectory() as temporary:
                for name in (n for n in group if measured[n].ours):
                    peak = measured[name].median().requests_per_second
                    latencies[name] = [
                        latency(
                            ports[name], body, share * peak, measured[name].pinned, Path(temporary) / f"{name}-{share}"
                        )
                        for share in (0.5, 0.9)
                    ]
            for name in group:
                check_statuses(ports[name])
                if measured[name].ours:
                    codes = handled(metrics_ports[name])
                    refused[name] = {code: count for code, count in codes.items() if code != "OK" and count}
        finally:
            for server in servers.values():
                server.stop()
    ours_pinned = latencies["ours"][0]
    ratios = {**target_ratios(measured), "tails": ours_pinned.p99_ms / ours_pinned.p50_ms}
    return Measured(
        throughput_rows(measured, refused),
        latency_rows(measured, latencies),
        ratios,
        measured["ours"].median().requests_per_second,
    )


def target_ratios(measured: dict[str, Variant]) -> dict[str, float]:
    median = {name: variant.median() for name, variant in measured.items()}
    per_cpu = {name: 1 / result.cpu_us_per_request for name, result in median.items() if result.cpu_us_per_request}
    return {
        "pinned": per_cpu["ours"] / per_cpu["tutorial"],
        "all-rate": median["ours-all-n"].requests_per_second / median["tutorial-all-n"].requests_per_second,
        "all-cpu": per_cpu["ours-all-n"] / per_cpu["tutorial-all-n"],
    }


def throughput_rows(measured: dict[str, Variant], refused: dict[str, dict[str, float]]) -> list[Row]:
    median = {name: variant.median() for name, variant in measured.items()}
    rate = {name: result.requests_per_second for name, result in median.items()}
    per_cpu = {name: 1e6 / result.cpu_us_per_request for name, result in median.items() if result.cpu_us_per_request}
    compared = {
        "prebuilt": "",
        "ceiling": f"{rate['ceiling'] / rate['prebuilt']:.2f}x prebuilt",
        "ceiling-uvloop": f"{rate['ceiling-uvloop'] / rate['ceiling']:.2f}x ceiling",
        "tutorial": f"{rate['tutorial'] / rate['ceiling']:.2f}x ceiling",
        "ours": f"{rate['ours'] / rate['ceiling']:.2f}x ceiling (target 0.9), "
        f"{rate['ours'] / rate['ceiling-uvloop']:.2f}x ceiling on uvloop, "
        f"{rate['ours'] / rate['tutorial']:.2f}x tutorial, "
        f"{per_cpu['ours'] / per_cpu['tutorial']:.2f}x tutorial's calls/CPU-s (target 1.0)",
        "tutorial-all": "",
        "tutorial-all-n": f"{rate['tutorial-all-n'] / rate['tutorial-all']:.2f}x 1 process",
        "ours-all-1": f"{rate['ours-all-1'] / rate['tutorial-all']:.2f}x tutorial",
        "ours-all-n": f"{rate['ours-all-n'] / rate['tutorial-all']:.2f}x tutorial (target 1.8), "
        f"{rate['ours-all-n'] / rate['ours-all-1']:.2f}x 1 process (target 1.5), "
        f"{rate['ours-all-n'] / rate['tutorial-all-n']:.2f}x tutorial in as many processes (target 1.0), "
        f"{per_cpu['ours-all-n'] / per_cpu['tutorial-all-n']:.2f}x its calls/CPU-s (target 1.0)",
    }
    rows = []
    for name, result in median.items():
        where = "1 core" if measured[name].pinned else "2 CPUs"
        problems = {
            **refused.get(name, {}),
            **({"failed in h2load": measured[name].failed} if measured[name].failed else {}),
        }
        errors = ", ".join(f"{count:.0f} {code}" for code, count in problems.items()) or "0 failed"
        rows.append(
            (
                f"Recommend [{where}]: {measured[name].label}",
                f"{result.requests_per_second:,.0f} req/s",
                f"{result.mean_latency_ms:.2f} ms",
                "; ".join(
                    part for part in (f"{per_cpu.get(name, 0):,.0f} calls/CPU-s", compared[name], errors) if part
                ),
            )
        )
    return rows


def latency_rows(measured: dict[str, Variant], latencies: dict[str, list[Latency]]) -> list[Row]:
    rows = []
    for name, runs in latencies.items():
        for share, run in zip((50, 90), runs, strict=True):
            rows.append(
                (
                    f"Recommend latency: {measured[name].label}, {share} % of peak",
                    f"{run.achieved:,.0f} req/s",
                    f"p50 {run.p50_ms:.2f} ms",
                    f"p99 {run.p99_ms:.2f} ms ({run.p99_ms / run.p50_ms:.1f}x p50), p99.9 {run.p999_ms:.2f} ms, "
                    f"{run.failed} failed",
                )
            )
    return rows
