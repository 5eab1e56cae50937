"""The gateway process as //:dev and the images run it: it serves its page and probes on its port, answers
--help, refuses bad settings before binding anything, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import urllib.request

from libs.processes.processes import ChildProcess, free_port, runfile
from services.gateway.main import SERVICE


def binary() -> str:
    """The service's program, in the runfiles (looked up when a test runs, so the module imports anywhere)."""
    return str(runfile(SERVICE.binary))


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def test_it_serves_its_page_and_probes_then_stops_cleanly() -> None:
    port = free_port()
    argv = [binary(), "--insecure", "--host=127.0.0.1", f"--port={port}", "--drain-seconds=0", "--processes=2"]
    with ChildProcess("gateway", argv) as process:
        process.wait_for_port(port, timeout=60)
        for path in ("/", "/healthz", "/readyz", "/metrics"):
            status, _ = get(f"http://127.0.0.1:{port}{path}")
            assert status == 200, path
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_bad_settings_are_refused_before_binding_anything() -> None:
    result = subprocess.run(
        [binary(), "--insecure", "--port=70000", "--processes=none"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--port must be between 0 and 65535, got 70000" in result.stderr
    assert "--processes must be 'auto' or a number, got 'none'" in result.stderr
