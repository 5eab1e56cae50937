"""How tests start the echo server (libs/runtime/testing/echo_server.py) as a process of its own."""

from __future__ import annotations

from libs.processes.processes import runfile


def echo_command(port: int, *flags: str | int) -> list[str]:
    """The echo server's command line: plaintext on 127.0.0.1:`port`, then `flags` (every flag of
    libs/runtime/config.py). Its binary must be in the test's `data` (//libs/runtime:echo_server)."""
    return [
        str(runfile("libs/runtime/echo_server")),
        "--insecure",
        "--host=127.0.0.1",
        f"--port={port}",
        *map(str, flags),
    ]
