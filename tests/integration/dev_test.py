"""`bazel run //:dev`, the README's first command: both services up, the page served, Ctrl-C stops all."""

from __future__ import annotations

import signal
import urllib.request

from libs.processes.processes import ChildProcess, free_port, runfile


def test_dev_serves_the_page_and_stops_cleanly_on_ctrl_c() -> None:
    web_port, rec_port = free_port(), free_port()
    dev = ChildProcess(
        "dev", [runfile("tools/dev/dev"), "--port", web_port, "--recommendations-port", rec_port]
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
    assert "recommendations | " in output
    assert "    marketplace | " in output
    assert "stopped (exit codes: marketplace=0, recommendations=0)" in output
