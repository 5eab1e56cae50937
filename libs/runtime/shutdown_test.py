"""Graceful shutdown of a live server process: SIGTERM during an in-flight call."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.processes.processes import ChildProcess, free_port, runfile

ECHO = "/test.v1.Echo/Echo"


def test_sigterm_drains_then_finishes_in_flight_calls_and_exits_zero() -> None:
    port = free_port()
    server = ChildProcess(
        "echo",
        [
            runfile("libs/runtime/echo_server"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--drain-seconds",
            "0.6",
            "--shutdown-grace",
            "5",
        ],
    ).start()
    try:
        server.wait_for_port(port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary(ECHO)
            health = health_pb2_grpc.HealthStub(channel)
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.SERVING
            )

            in_flight: dict[str, object] = {}
            thread = threading.Thread(target=lambda: in_flight.update(result=echo(b"sleep:1.5", timeout=10)))
            thread.start()
            time.sleep(0.3)
            server.signal(signal.SIGTERM)
            time.sleep(0.1)

            # Draining: health says NOT_SERVING, yet new calls are still served.
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert echo(b"during drain", timeout=5) == b"echo:during drain"

            time.sleep(0.8)  # past the drain: the server is stopping and refuses new calls, fast
            begun = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                echo(b"too late", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - begun < 1.0

            thread.join(timeout=10)
            assert in_flight.get("result") == b"echo:sleep:1.5", "the in-flight call did not complete"
        assert server.wait(timeout=10) == 0
    finally:
        server.stop()
    assert any("health NOT_SERVING; draining 0.6s" in line for line in server.lines)
