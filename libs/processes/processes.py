"""Starts the project's built binaries as child processes: for `bazel run //:dev` and for tests.

Children run in their own session (a terminal's Ctrl-C reaches only the parent, which stops them in
order) and get SIGTERM if the parent dies, so nothing outlives the launcher or a failed test. One that
does not stop in time is asked for its stacks before it is killed, so its log says where it hung.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def runfile(path: str) -> Path:
    """The runfiles location of a workspace-relative path, e.g. 'services/order_history/order_history'.

    This module is itself a runfile (<runfiles>/online_books/libs/processes/processes.py, a path
    Python does not resolve through symlinks), so its location gives the runfiles root.
    """
    found = Path(__file__).parents[2] / path
    if not found.exists():
        raise FileNotFoundError(f"{path} is not in the runfiles of this binary: add it to `data`")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (the caller binds it right away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]  # an AF_INET address: (host, port)
        return port


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that were free a moment ago (all held at once while they are chosen: one
    at a time, the kernel may hand out a port just released again)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a child stopped with SIGABRT writes no core file


def print_prefixed(name: str) -> Callable[[str], None]:
    """A line sink that prints `name | line` to stdout, so interleaved logs stay readable."""

    def sink(line: str) -> None:
        sys.stdout.write(f"{name:>15} | {line}\n")
        sys.stdout.flush()

    return sink


Argument = str | Path | int | float
"""A command-line argument of a child process: passed through str() (paths and numbers need no conversion)."""


class ChildProcess:
    """A child process whose output lines are kept (last 1000) and passed to `on_line`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[Argument],
        env: dict[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
        discard_output: bool = False,
    ) -> None:
        """`discard_output` sends the child's output to /dev/null (benchmarks: reading it costs CPU)."""
        self.name = name
        self.argv = [str(arg) for arg in argv]
        # PYTHONFAULTHANDLER: a Python child prints every thread's stack on SIGABRT (see stop()).
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
        self.lines: collections.deque[str] = collections.deque(maxlen=1000)
        self._on_line = on_line or print_prefixed(name)
        self._discard = discard_output
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> ChildProcess:
        self._process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if self._discard else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if not self._discard:
            self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process
        assert self._process.stdout
        for line in self._process.stdout:
            self._keep(line.rstrip("\n"))

    def _keep(self, line: str) -> None:
        self.lines.append(line)
        self._on_line(line)

    @property
    def pid(self) -> int:
        assert self._process
        return self._process.pid

    def poll(self) -> int | None:
        """The exit code, or None while running."""
        assert self._process
        return self._process.poll()

    def wait_for_port(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        """Waits until `host:port` accepts TCP connections; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.poll()} before listening on {host}:{port}")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not listen on {host}:{port} within {timeout:.0f}s")

    def signal(self, signum: int) -> None:
        assert self._process
        if self.poll() is None:
            self._process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Waits for the process to exit by itself; raises subprocess.TimeoutExpired after `timeout`."""
        assert self._process
        return self._process.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; after `timeout` seconds SIGABRT, on which a Python child prints every thread's stack
        and a Go one every goroutine's, then SIGKILL. Returns the exit code."""
        if self._process is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._keep(f"still running {timeout:g}s after SIGTERM: SIGABRT (for its stacks), then SIGKILL")
            self._process.send_signal(signal.SIGABRT)
            try:
                code = self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                code = self._process.wait()
        if self._reader:
            self._reader.join(timeout=5)
        return code

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
