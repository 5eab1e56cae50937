"""Serving from N processes: one Python process uses one core, a pod given N CPUs should use N.

`Supervisor` forks the children before anything of gRPC exists (gRPC objects must not cross a fork),
and every child serves the same ports with SO_REUSEPORT, the kernel spreading new connections over
them (the pattern of grpc's examples/python/multiprocessing). The supervisor restarts a child that dies,
with backoff, and gives up with a non-zero exit when children keep dying; SIGTERM/SIGINT go to every
child, each of which drains as a single process does (health NOT_SERVING, drain period, grace). Its
`/metrics` is the sum over the children (libs/runtime/metrics_sum.py), never whichever child answered.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from libs.runtime.metrics_sum import REFRESH_INTERVAL, ChildrenMetrics, serve_child_metrics, socket_directory

MAX_PROCESSES = 64
_SIGNALS: set[int] = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1
REAP_INTERVAL = 1.0  # seconds


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, lowered by a cgroup CPU quota (a pod's limit)."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_quota() -> float | None:
    """CPUs the cgroup may use (quota / period), or None without a limit: cgroup v2, then v1."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    return None


def parse_processes(text: str) -> int:
    """A `--processes` value: a count from 1 to 64, or `auto` (the CPUs this process may use)."""
    if text.strip().lower() == "auto":
        return min(available_cpus(), MAX_PROCESSES)
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"must be 'auto' or a number, got {text!r}") from None
    if not 1 <= count <= MAX_PROCESSES:
        raise ValueError(f"must be between 1 and {MAX_PROCESSES}, got {count}")
    return count


def reserve_port(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket holding `port` (0: a free one) for the children to
    share: it fails now, in one place, when the port is taken, and keeps it ours while children restart.
    The kernel gives connections only to listening sockets, so this one never takes a call. `[::]` binds
    both families, as gRPC does. Without `reuse_port`, a socket of this process alone (SO_REUSEADDR)."""
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT if reuse_port else socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class RestartPolicy:
    """When a child dies: restart it after `first_delay`, doubling per recent death up to `max_delay`;
    more than `max_failures` deaths within `window` seconds and the supervisor gives up."""

    first_delay: float = 0.5
    max_delay: float = 10.0
    max_failures: int = 5
    window: float = 60.0

    def delay(self, recent_failures: int) -> float:
        return float(min(self.first_delay * 2 ** max(recent_failures - 1, 0), self.max_delay))


class Supervisor:
    def __init__(
        self,
        processes: int,
        serve_child: Callable[[int], int],
        logger: logging.Logger,
        *,
        name: str,
        stop_timeout: float,
        metrics_port: int = 0,
        metrics_host: str = "0.0.0.0",
        inherited: Sequence[socket.socket] = (),
        policy: RestartPolicy = RestartPolicy(),
    ) -> None:
        """`serve_child(index)` runs in each child and returns its exit code; it must drain on SIGTERM.
        `stop_timeout`: how long after SIGTERM a child may take before it is killed. `inherited`:
        sockets of the supervisor the children close (the reserved ports)."""
        self.processes = processes
        self._serve_child = serve_child
        self._logger = logger
        self._name = name
        self._stop_timeout = stop_timeout
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self._inherited = list(inherited)
        self._policy = policy
        self._children: dict[int, int] = {}  # pid → index
        self._restarts: list[tuple[float, int]] = []  # (when, index)
        self._failures: collections.deque[float] = collections.deque()
        self._stopping = False
        self._kill_at = math.inf
        self._exit_code = 0
        self._metrics: ChildrenMetrics | None = None
        self._mask: set[int] = set()

    def run(self) -> int:
        """Forks the children, keeps them running until SIGTERM/SIGINT, returns the exit code."""
        # Blocked before any thread starts, so that only sigtimedwait below receives them.
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            with socket_directory(f"{self._name}-metrics-") as directory:
                self._metrics = ChildrenMetrics(Path(directory))
                self._metrics.serve_sums()
                if self._metrics_port:  # before the children: a taken port fails here, once
                    self._inherited.append(self._metrics.serve(self._metrics_port, self._metrics_host))
                for index in range(self.processes):
                    self._spawn(index)
                self._metrics.refresh_every(REFRESH_INTERVAL)
                self._logger.info("supervising %d processes (pid %d)", self.processes, os.getpid())
                self._supervise()
        finally:
            if self._metrics is not None:
                self._metrics.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        return self._exit_code

    @property
    def sums(self) -> Path:
        """In a child: the supervisor's Unix socket answering with the summed metrics (metrics_sum.read_sums)."""
        assert self._metrics is not None, "only known once run() has started"
        return self._metrics.sums

    def _spawn(self, index: int) -> None:
        assert self._metrics is not None
        supervisor = os.getpid()
        pid = os.fork()
        if pid:
            self._children[pid] = index
            self._metrics.set_children(len(self._children))
            return
        code = 1
        try:
            code = self._run_child(index, supervisor, self._metrics.socket_of(os.getpid()))
        except BaseException:
            self._logger.exception("process %d failed", index)
        finally:
            logging.shutdown()
            os._exit(code)

    def _run_child(self, index: int, supervisor: int, metrics_socket: Path) -> int:
        for sock in self._inherited:
            sock.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        # A child outlives a supervisor killed with SIGKILL by no more than its own drain.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:
            return 0  # the supervisor died before the line above (never "parent is pid 1": in a container it is)
        serve_child_metrics(metrics_socket)
        return self._serve_child(index)

    def _supervise(self) -> None:
        while self._children or (self._restarts and not self._stopping):
            now = time.monotonic()
            deadlines = [when for when, _ in self._restarts] + [self._kill_at]
            timeout = max(min(deadlines) - now, 0.0)
            # At least every second: a SIGCHLD taken by a thread that does not block it (one started before
            # run() by code not ours) is then noticed late, never missed.
            received = signal.sigtimedwait(_SIGNALS, min(timeout, REAP_INTERVAL))
            if received is not None and received.si_signo != signal.SIGCHLD:
                self._stop(f"{signal.Signals(received.si_signo).name} received")
            self._reap()
            now = time.monotonic()
            for when, index in [each for each in self._restarts if each[0] <= now]:
                self._restarts.remove((when, index))
                self._spawn(index)
            if now >= self._kill_at and self._children:
                for pid in self._children:
                    self._logger.error(
                        "process pid %d still running %.0fs after SIGTERM: SIGKILL", pid, self._stop_timeout
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self._exit_code = 1
                self._kill_at = math.inf

    def _stop(self, reason: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._restarts.clear()
        self._kill_at = time.monotonic() + self._stop_timeout
        self._logger.info("%s: draining %d processes", reason, len(self._children))
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _reap(self) -> None:
        assert self._metrics is not None
        for pid, status in _exited():
            index = self._children.pop(pid, None)
            if index is None:
                continue
            self._metrics.retire(pid)
            self._metrics.set_children(len(self._children))
            code = os.waitstatus_to_exitcode(status)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            if self._stopping:
                if code != 0:
                    self._exit_code = 1
                log = self._logger.info if code == 0 else self._logger.warning
                log("process %d (pid %d) %s", index, pid, how)
                continue
            self._metrics.count_death()
            now = time.monotonic()
            self._failures.append(now)
            while self._failures and self._failures[0] < now - self._policy.window:
                self._failures.popleft()
            if len(self._failures) > self._policy.max_failures:
                self._logger.error(
                    "process %d (pid %d) %s: %d deaths in %.0fs, giving up",
                    index,
                    pid,
                    how,
                    len(self._failures),
                    self._policy.window,
                )
                self._exit_code = 1
                self._stop("giving up")
                continue
            delay = self._policy.delay(len(self._failures))
            self._logger.error("process %d (pid %d) %s; restarting it in %.1fs", index, pid, how, delay)
            self._restarts.append((now + delay, index))


def _exited() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of every child that has ended, without waiting."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status
