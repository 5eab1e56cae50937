"""What the benchmarks share: load generators (h2load, wrk) and their parsing, CPU pinning, checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.processes.processes import ChildProcess

METHOD = "/books.recommendations.v1.RecommendationService/Recommend"
# One core for the server, the other for the load generator: without pinning, the two fight over both
# cores and rounds of the same variant differ by 30 %. BENCH_PIN=0 turns it off (servers may then use
# both cores, as the tutorial's figures in shared/DESIGN.md were measured).
_PIN = os.environ.get("BENCH_PIN", "1") != "0" and shutil.which("taskset")
PIN_SERVER, PIN_LOAD = (["taskset", "-c", "1"], ["taskset", "-c", "0"]) if _PIN else ([], [])
REQUEST = recommendations_pb2.RecommendRequest(user_id=1, category=catalog_pb2.MYSTERY, max_results=3)


@dataclass
class RpcResult:
    requests_per_second: float
    mean_latency_ms: float
    succeeded: int
    cpu_us_per_request: float = 0.0  # the server's, user + system
    user_us_per_request: float = 0.0


@dataclass
class PageResult:
    pages_per_second: float
    mean_latency_ms: float
    requests: int
    non_2xx: int


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process and its descendants (a supervisor's children)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        parents.setdefault(parent, []).append(int(stat.parent.name))
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += sum(cpu_seconds(current))
        except OSError:
            continue
        pending.extend(parents.get(current, []))
    return total


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: no compression flag, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _milliseconds(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def h2load_command(
    port: int,
    body: Path,
    clients: int,
    streams: int,
    *,
    requests: int = 0,
    seconds: int = 0,
    pinned: bool = True,
    rate_per_client: float = 0,
    log_file: Path | None = None,
) -> list:
    """Unary gRPC load on `METHOD`: `requests` calls, or as many as fit in `seconds`; `pinned`: on the
    load generator's core; `rate_per_client`: calls per second each client sends (open loop);
    `log_file`: every call's start, status and duration (h2load's --log-file)."""
    amount = ["-D", str(seconds)] if seconds else ["-n", str(requests)]
    rate = [f"--rps={rate_per_client:.1f}"] if rate_per_client else []
    log = [f"--log-file={log_file}"] if log_file else []
    return [
        *(PIN_LOAD if pinned else []), "h2load", *amount, *rate, *log, "-c", str(clients), "-m", str(streams),
        "-t", "1", "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
        f"http://127.0.0.1:{port}{METHOD}",
    ]  # fmt: skip


def match(pattern: str, output: str) -> re.Match[str]:
    """The first match of `pattern` in a tool's `output`; an error quoting the output if there is none."""
    found = re.search(pattern, output, re.M)
    if found is None:
        raise RuntimeError(f"no /{pattern}/ in the output:\n{output[-2000:]}")
    return found


def parse_h2load(output: str) -> RpcResult:
    """h2load's figures (it counts gRPC errors as successes: check statuses)."""
    rate = float(match(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1))
    mean = match(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", output)
    succeeded = int(match(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", output).group(1))
    return RpcResult(rate, _milliseconds(*mean.groups()), succeeded)


def run_h2load(port: int, body: Path, requests: int, clients: int, streams: int, pinned: bool = True) -> RpcResult:
    command = h2load_command(port, body, clients, streams, requests=requests, pinned=pinned)
    return parse_h2load(subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout)


def wrk_command(url: str, duration: int, connections: int) -> list:
    return [*PIN_LOAD, "wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url]


def run_wrk(url: str, duration: int, connections: int) -> PageResult:
    command = wrk_command(url, duration, connections)
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    rate = float(match(r"Requests/sec:\s+([\d.]+)", output).group(1))
    latency = match(r"Latency\s+([\d.]+)(us|ms|s)", output)
    requests = int(match(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return PageResult(rate, _milliseconds(*latency.groups()), requests, failed)


def check_statuses(port: int, calls: int = 50) -> None:
    """A real gRPC client gets OK with three books: what h2load cannot tell."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = recommendations_pb2_grpc.RecommendationServiceStub(channel)
        for _ in range(calls):
            assert len(stub.Recommend(REQUEST, timeout=5).recommendations) == 3


def handled(metrics_port: int) -> dict[str, float]:
    """Recommend calls our server's own metrics counted, by status code."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    pattern = r'grpc_server_handled_total\{grpc_code="(\w+)",grpc_method="Recommend"[^}]*\} ([\d.e+]+)'
    return {code: float(count) for code, count in re.findall(pattern, text)}


def py_spy() -> str:
    """The py-spy executable of the lock's wheel (installed as a script beside its site-packages)."""
    for entry in map(Path, sys.path):
        if (candidate := entry / "bin" / "py-spy").exists():
            return str(candidate)
    raise SystemExit("py-spy not found on sys.path (requirements_lock.txt has it)")


def start_quiet(name: str, argv: list, port: int) -> ChildProcess:
    """Starts a server with its output discarded (reading it would cost CPU) and waits for its port."""
    process = ChildProcess(name, argv, discard_output=True).start()
    process.wait_for_port(port)
    return process
