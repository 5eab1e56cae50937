"""ChildProcess: a child that does not stop in time says where it hung before it is killed."""

from __future__ import annotations

import signal
import sys
import time

from libs.processes.processes import ChildProcess

HANGS_IN_WAIT = """
import signal, threading
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
threading.Event().wait()
"""


def started(name: str, program: str) -> ChildProcess:
    child = ChildProcess(name, [sys.executable, "-c", program]).start()
    deadline = time.monotonic() + 10
    while "up" not in child.lines and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "up" in child.lines
    return child


def test_a_child_deaf_to_sigterm_prints_its_stacks_then_is_stopped() -> None:
    child = started("deaf", HANGS_IN_WAIT)
    assert child.stop(timeout=0.5) == -signal.SIGABRT
    output = "\n".join(child.lines)
    assert "still running 0.5s after SIGTERM: SIGABRT (for its stacks), then SIGKILL" in output
    assert "Current thread" in output
    assert 'File "<string>", line 5 in <module>' in output  # the line it hung on


def test_a_child_deaf_to_sigabrt_too_is_killed() -> None:
    child = started("deafer", HANGS_IN_WAIT.replace("print(", "signal.signal(signal.SIGABRT, signal.SIG_IGN)\nprint("))
    assert child.stop(timeout=0.5) == -signal.SIGKILL


def test_a_child_that_stops_on_sigterm_returns_its_code() -> None:
    child = started("polite", 'import time\nprint("up", flush=True)\ntime.sleep(60)')
    assert child.stop(timeout=5) == -signal.SIGTERM
