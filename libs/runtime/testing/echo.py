"""How tests start the echo server (libs/runtime/testing/echo_server.py) as a process of its own.

Its binary must be in the test's `data` (//libs/runtime:echo_server)."""

from __future__ import annotations

import contextlib
import re
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence

import grpc

from libs.processes.processes import ChildProcess, free_ports, runfile

ECHO = "/test.v1.Echo/Echo"


def echo_command(port: int, *flags: str | int) -> list[str]:
    """The echo server's command line: plaintext on 127.0.0.1:`port`, then `flags` (every flag of
    libs/runtime/config.py)."""
    return [
        str(runfile("libs/runtime/echo_server")),
        "--insecure",
        "--host=127.0.0.1",
        f"--port={port}",
        *map(str, flags),
    ]


def sample_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` in a /metrics `text` that have `labels` (in any order), 0 without any."""
    total = 0.0
    for sample_labels, number in re.findall(rf"^{name}(?:{{(.*)}})? (\S+)$", text, re.M):
        if all(f'{key}="{wanted}"' in sample_labels for key, wanted in labels.items()):
            total += float(number)
    return total


class EchoProcess:
    """A running echo server: its process, the log lines kept, its service, health and metrics ports."""

    def __init__(self, process: ChildProcess, lines: list[str], port: int, health_port: int, metrics_port: int):
        self.process, self.lines = process, lines
        self.port, self.health_port, self.metrics_port = port, health_port, metrics_port

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        return sample_sum(self.scrape(), name, **labels)

    def pid_of_one_connection(self) -> int:
        """The process serving a new connection (SO_REUSEPORT: the kernel picks one per connection)."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            # wait_for_ready: a connection made while a child is being replaced may be reset; this asks who
            # serves, the calls under load are what must never fail.
            answer: bytes = ch.unary_unary(ECHO, request_serializer=None, response_deserializer=None)(
                b"pid", timeout=10, wait_for_ready=True
            )
        return int(answer.removeprefix(b"pid:"))

    def serving_pids(self, expected: int, timeout: float = 30.0) -> set[int]:
        """The pids answering, from new connections, until `expected` distinct ones have (or `timeout`)."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < expected:
            assert time.monotonic() < deadline, f"only {sorted(seen)} answered within {timeout:.0f}s"
            seen.add(self.pid_of_one_connection())
        return seen


@contextlib.contextmanager
def running_echo(
    *flags: str,
    launcher: Sequence[str] = (),
    keep: Callable[[str], bool] = lambda line: True,
    stop_timeout: float = 10.0,
) -> Iterator[EchoProcess]:
    """The echo server with a health and a metrics port and `flags`, started through `launcher` (a command
    prefix) if given, until all three ports listen; stopped after. It keeps the log lines `keep` accepts
    (the process itself keeps only its last 1,000)."""
    port, health_port, metrics_port = free_ports(3)
    lines: list[str] = []
    command = echo_command(port, f"--health-port={health_port}", f"--metrics-port={metrics_port}", *flags)
    process = ChildProcess(
        "echo", [*launcher, *command], on_line=lambda line: lines.append(line) if keep(line) else None
    ).start()
    try:
        for each in (port, health_port, metrics_port):
            process.wait_for_port(each)
        yield EchoProcess(process, lines, port, health_port, metrics_port)
    finally:
        process.stop(timeout=stop_timeout)
