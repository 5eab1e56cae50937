"""Recommend at twice the peak rate: what is answered, what is shed, how fast, in how much memory, and
whether every call is accounted for. `./bazelw run //bench/overload` (needs h2load).

One run measures the server's peak (closed loop, h2load -c8 -m16), then offers 2x that rate open loop
(h2load --rps, up to 2,000 calls outstanding) for `--seconds` to two variants of the same server, side by
side: the defaults (gRPC's backlog bounded at --max-pending-calls 300, past which gRPC itself resets
calls, counted through channelz) and the baseline without bounds (what the server did before: gRPC's
own default backlog of 1,000/3,000 and no cap on calls in progress). For each: the share of calls
answered OK and shed, client-side latency over all calls (h2load's per-request log) and, from a real
gRPC client probing at 50 calls/s among h2load's, over the answered ones; the server's own p99 for the OK
ones (its access log), resident memory at its peak, and the calls h2load sent that the
server's counts do not explain (must be 0).

h2load cannot read gRPC statuses: the shares come from the server's metrics (each answered call is also
a line of its access log, checked) and, for the calls gRPC dropped before any handler, from
grpc_server_transport_started_total minus grpc_server_started_total.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.common import METHOD, PIN_SERVER, REQUEST, grpc_frame, h2load_command, handled, match, run_h2load
from libs.processes.processes import free_ports, runfile

CLIENTS, STREAMS = 10, 200  # up to 2,000 calls outstanding: more than any bound, so shedding can show
# The server as it was: no cap on calls in progress, gRPC's default backlog (1,000 soft, 3,000 hard).
BEFORE = ["--max-concurrent-rpcs", "0", "--max-pending-calls", "1000", "--max-streams-per-connection", "10000"]
VARIANTS = {"defaults": [], "before (no bounds)": BEFORE}


@dataclass
class Outcome:
    variant: str
    offered_per_second: float
    done: int = 0
    codes: dict[str, float] = field(default_factory=dict)
    transport_started: float = 0.0
    access_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    client_ms: list[float] = field(default_factory=list)
    server_ok_ms: list[float] = field(default_factory=list)
    probe: list[tuple[str, float]] = field(default_factory=list)  # (code, ms) of the probe client's calls
    unloaded_ms: list[float] = field(default_factory=list)  # the probe client's calls before the overload
    seconds: float = 0.0  # how long h2load took to send its calls
    peak_rss_mib: float = 0.0

    def client_p(self, share: float) -> float:
        return percentile(self.client_ms, share)

    def unloaded_p(self, share: float) -> float:
        return percentile(self.unloaded_ms, share)

    def probe_ok_p(self, share: float) -> float:
        return percentile([ms for code, ms in self.probe if code == "OK"], share)

    @property
    def ok_per_second(self) -> float:
        return self.codes.get("OK", 0) / self.seconds

    @property
    def refused_as_resource_exhausted(self) -> float:
        """Of the probe client's calls not answered OK, the share refused as RESOURCE_EXHAUSTED (the
        only refusal a caller may retry at once; h2load cannot read statuses)."""
        refused = [code for code, _ in self.probe if code != "OK"]
        return refused.count("RESOURCE_EXHAUSTED") / len(refused) if refused else 1.0

    @property
    def dropped(self) -> float:
        """Calls gRPC started that no handler saw (reset from its backlog: callers see CANCELLED)."""
        return self.transport_started - sum(self.codes.values())

    @property
    def unaccounted(self) -> int:
        """Calls h2load and the probe completed that gRPC's count does not have (or the reverse), plus
        answered calls missing from the access log."""
        logged = abs(sum(self.codes.values()) - sum(self.access_codes.values()))
        return int(abs(self.done + len(self.probe) - self.transport_started) + logged)


class Server:
    """A Recommendations process pinned to its core, its output (JSON logs, access lines) going to a file
    that is read only afterwards: reading it live would cost the load generator's core."""

    def __init__(self, shedding: list[str], output: Path) -> None:
        self.port, self.metrics_port = free_ports(2)
        self.output = output
        argv = [*PIN_SERVER, runfile("services/recommendations/recommendations"), "--insecure"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        argv += [*shedding, "--log-format", "json", "--drain-seconds", "0"]
        with output.open("w") as sink:
            self.process = subprocess.Popen([str(arg) for arg in argv], stdout=sink, stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        self.peak_rss_kib = 0
        self._sampling = threading.Event()

    def access_lines(self) -> list[dict]:
        lines = self.output.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith('{"timestamp"') and METHOD in line]

    def sample_memory(self) -> None:
        """Samples resident memory every 50 ms until `stop_sampling` (taskset execs the server: same pid)."""

        def sample() -> None:
            while not self._sampling.wait(0.05):
                status = Path(f"/proc/{self.process.pid}/status").read_text()
                rss = int(match(r"^VmRSS:\s+(\d+) kB", status).group(1))
                self.peak_rss_kib = max(self.peak_rss_kib, rss)

        threading.Thread(target=sample, daemon=True).start()

    def stop_sampling(self) -> None:
        self._sampling.set()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def wait_for_port(port: int, timeout: float = 30) -> None:
    give_up = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.05)


PROBES_PER_SECOND = 50


def probe(port: int, seconds: int, stop: threading.Event, seen: list[tuple[str, float]]) -> None:
    """A real gRPC client among h2load's calls (which cannot read statuses): one call at a time, at most
    PROBES_PER_SECOND, each with its code and latency, for up to `seconds`: the latency of answered calls
    as a caller sees it."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_retries", 0)]) as channel:
        recommend = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        payload = REQUEST.SerializeToString()
        for _ in range(PROBES_PER_SECOND * seconds):
            if stop.wait(1 / PROBES_PER_SECOND):
                return
            begun = time.perf_counter()
            try:
                recommend(payload, timeout=10)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            seen.append((code, (time.perf_counter() - begun) * 1000))


def transport_started(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return float(match(r"^grpc_server_transport_started_total (\S+)$", text).group(1))


def share_of(calls: list[tuple[str, float]], code: str) -> float:
    return sum(1 for seen, _ in calls if seen == code) / max(len(calls), 1)


def probe_codes(calls: list[tuple[str, float]]) -> str:
    counts = collections.Counter(code for code, _ in calls if code != "OK")
    return ", ".join(f"{code} {n}" for code, n in counts.most_common()) or "-"


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[int(share * 1000) - 1]


def overload(variant: str, shedding: list[str], rate: float, seconds: int, body: Path, scratch: Path) -> Outcome:
    server = Server(shedding, scratch / f"{len(list(scratch.iterdir()))}.log")
    outcome = Outcome(variant, rate)
    try:
        run_h2load(server.port, body, 2000, 8, 16)  # warm up (not counted below)
        unloaded: list[tuple[str, float]] = []
        probe(server.port, 2, threading.Event(), unloaded)
        outcome.unloaded_ms = [ms for _, ms in unloaded]
        warm = dict(handled(server.metrics_port))
        warm_transport = transport_started(server.metrics_port)
        time.sleep(0.5)  # the access log is written in batches
        warm_lines = len(server.access_lines())
        with tempfile.NamedTemporaryFile(suffix=".log") as log:
            # A fixed number of calls at the rate (not a duration, which would cut the last ones off
            # mid-flight and leave them counted by one side only).
            command = h2load_command(server.port, body, CLIENTS, STREAMS, requests=int(rate * seconds))
            command[command.index("h2load") + 1 : command.index("h2load") + 1] = [
                f"--rps={rate / CLIENTS:.1f}",
                f"--log-file={log.name}",
            ]
            server.sample_memory()
            probing = threading.Event()
            prober = threading.Thread(target=probe, args=(server.port, seconds, probing, outcome.probe), daemon=True)
            prober.start()
            result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=True)
            probing.set()
            prober.join(timeout=30)
            server.stop_sampling()
            outcome.client_ms = [int(line.split("\t")[2]) / 1000 for line in Path(log.name).read_text().splitlines()]
        outcome.done = int(match(r"requests: \d+ total, \d+ started, (\d+) done", result.stdout).group(1))
        took = match(r"finished in ([\d.]+)(m?s),", result.stdout)
        outcome.seconds = float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)
        time.sleep(0.5)  # the access log is written in batches
        after = handled(server.metrics_port)
        outcome.codes = {code: count - warm.get(code, 0) for code, count in after.items() if count - warm.get(code, 0)}
        outcome.transport_started = transport_started(server.metrics_port) - warm_transport
        lines = server.access_lines()[warm_lines:]
        outcome.access_codes = collections.Counter(line["code"] for line in lines)
        outcome.server_ok_ms = [line["duration_ms"] for line in lines if line["code"] == "OK"]
        outcome.peak_rss_mib = server.peak_rss_kib / 1024
    finally:
        server.stop()
    return outcome


def report(peak: float, outcomes: list[Outcome]) -> str:
    def share(o: Outcome, count: float) -> str:  # of every call gRPC saw: h2load's and the probe's
        return f"{count / max(o.transport_started, 1):.1%}"

    def others(o: Outcome) -> str:
        found = [f"{code} {n:,.0f}" for code, n in o.codes.items() if code not in ("OK", "RESOURCE_EXHAUSTED")]
        return ", ".join(found) or "-"

    rows = [
        ("calls offered per second", lambda o: f"{o.offered_per_second:,.0f}"),
        ("calls completed (h2load)", lambda o: f"{o.done:,}"),
        ("answered OK", lambda o: share(o, o.codes.get("OK", 0))),
        ("shed by the handlers (RESOURCE_EXHAUSTED)", lambda o: share(o, o.codes.get("RESOURCE_EXHAUSTED", 0))),
        ("dropped from gRPC's backlog (CANCELLED)", lambda o: share(o, o.dropped)),
        ("other codes", others),
        ("client p50 / p99, all calls (ms)", lambda o: f"{o.client_p(0.5):.0f} / {o.client_p(0.99):.0f}"),
        ("probe client (a call at a time): calls, OK", lambda o: f"{len(o.probe)}, {share_of(o.probe, 'OK'):.0%}"),
        ("probe client: codes other than OK", lambda o: probe_codes(o.probe)),
        ("probe client p50 / p99, OK calls (ms)", lambda o: f"{o.probe_ok_p(0.5):.0f} / {o.probe_ok_p(0.99):.0f}"),
        ("the same before the overload (ms)", lambda o: f"{o.unloaded_p(0.5):.1f} / {o.unloaded_p(0.99):.1f}"),
        ("OK calls per second, of the peak", lambda o: f"{o.ok_per_second:,.0f}, {o.ok_per_second / peak:.0%}"),
        ("server p99, OK calls, in handlers (ms)", lambda o: f"{percentile(o.server_ok_ms, 0.99):.2f}"),
        ("peak resident memory (MiB)", lambda o: f"{o.peak_rss_mib:.0f}"),
        ("unaccounted calls", lambda o: str(o.unaccounted)),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    lines = [f"peak (closed loop, h2load -c8 -m16): {peak:,.0f} calls/s; offered 2x for each variant", ""]
    lines.append(f"{'':{width}}  " + "  ".join(f"{o.variant:>24}" for o in outcomes))
    lines += [f"{label:{width}}  " + "  ".join(f"{cell(o):>24}" for o in outcomes) for label, cell in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="seconds of overload per variant (default 10)")
    parser.add_argument(
        "--variant",
        action="append",
        metavar="LABEL=FLAGS",
        help="a server variant instead of the two above: its label and its flags (repeatable), e.g. "
        "'small queue=--max-concurrent-rpcs 50'",
    )
    args = parser.parse_args(argv)
    variants = dict(VARIANTS)
    if args.variant:
        variants = {label: flags.split() for label, _, flags in (v.partition("=") for v in args.variant)}
    with tempfile.NamedTemporaryFile(suffix=".bin") as body_file:
        body = Path(body_file.name)
        body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
        scratch = Path(tempfile.mkdtemp(prefix="overload-"))
        probe = Server([], scratch / "peak.log")
        try:
            run_h2load(probe.port, body, 2000, 8, 16)
            peak = run_h2load(probe.port, body, 20000, 8, 16).requests_per_second
        finally:
            probe.stop()
        outcomes = [overload(label, flags, 2 * peak, args.seconds, body, scratch) for label, flags in variants.items()]
        shutil.rmtree(scratch)
    print(report(peak, outcomes))
    return 1 if any(o.unaccounted for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
