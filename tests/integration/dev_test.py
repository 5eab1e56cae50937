"""`bazel run //:dev`, the README's first command: every service up and wired, the page served, Ctrl-C
stops all of them in reverse order."""

from __future__ import annotations

import signal
import urllib.request

from libs.processes.processes import ChildProcess, free_port, runfile
from services.registry import REGISTRY


def test_dev_starts_every_service_serves_the_page_and_stops_cleanly_on_ctrl_c() -> None:
    ports = {name: free_port() for name in REGISTRY}
    web_port = ports["marketplace"]
    dev = ChildProcess(
        "dev", [runfile("tools/dev/dev"), *(f"--port={name}={port}" for name, port in ports.items())]
    ).start()
    try:
        dev.wait_for_port(web_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as response:
            body = response.read().decode()
        assert response.status == 200
        assert body.count("<li><cite>") == 3 * 6  # three books in each of the six categories
        dev.signal(signal.SIGINT)
        assert dev.stop(timeout=20) == 0
    finally:
        dev.stop()
    output = "\n".join(dev.lines)
    assert f"open http://127.0.0.1:{web_port}/" in output
    for name, port in ports.items():
        assert f"{name:>15} | " in output, f"no log line from {name}"
        assert f"| {name} on " in output
        assert f"://127.0.0.1:{port}" in output
    stopped = ", ".join(f"{service.name}=0" for service in reversed(REGISTRY.start_order()))
    assert f"stopped (exit codes: {stopped})" in output


def test_dev_refuses_an_unknown_service_or_a_shared_port() -> None:
    for flags, message in (
        (["--port=nosuch=1234"], "expected NAME=PORT with NAME one of"),
        ([f"--port={name}=4321" for name in REGISTRY], "two services on port 4321"),
    ):
        dev = ChildProcess("dev", [runfile("tools/dev/dev"), *flags]).start()
        assert dev.wait(timeout=20) == 2
        dev.stop()
        assert message in "\n".join(dev.lines)
