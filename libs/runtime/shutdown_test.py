"""Graceful shutdown of a live server process: SIGTERM during an in-flight call."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.processes.processes import ChildProcess, free_ports
from libs.runtime.server import SERVING
from libs.runtime.testing.echo import echo_command

ECHO = "/test.v1.Echo/Echo"
# The drain must hold the checks made during it on a loaded machine; the in-flight call must outlast it,
# so that the stop's grace is what lets it finish (it ends before the grace does).
DRAIN_SECONDS = 3.0
IN_FLIGHT_SECONDS = DRAIN_SECONDS + 1.5


def echo_calls_started(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'^grpc_server_started_total{[^}]*grpc_method="Echo"[^}]*} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except (ConnectionRefusedError, ConnectionResetError):  # reset: accepted by a listener closing meanwhile
        return False


@pytest.mark.parametrize("serving", SERVING)
def test_sigterm_drains_then_finishes_in_flight_calls_and_exits_zero(serving: str) -> None:
    port, metrics_port = free_ports(2)
    flags = [f"--metrics-port={metrics_port}", f"--drain-seconds={DRAIN_SECONDS}", "--shutdown-grace=30"]
    server = ChildProcess("echo", echo_command(port, *flags, f"--serving={serving}")).start()
    try:
        server.wait_for_port(port)
        server.wait_for_port(metrics_port)  # opens after the service port, just before the server serves
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            # Bytes in, bytes out (grpc-stubs makes the serializers, None by default, required).
            echo = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)
            health = health_pb2_grpc.HealthStub(channel)
            states: list[grpc.ChannelConnectivity] = []
            channel.subscribe(states.append)  # the channel's connectivity, as it changes
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.SERVING
            )

            in_flight: dict[str, object] = {}
            request = f"sleep:{IN_FLIGHT_SECONDS}".encode()
            thread = threading.Thread(target=lambda: in_flight.update(result=echo(request, timeout=60)))
            thread.start()
            give_up = time.monotonic() + 30
            while echo_calls_started(metrics_port) < 1:  # the call is in its handler
                assert time.monotonic() < give_up, "the in-flight call never reached the server"
                time.sleep(0.02)
            server.signal(signal.SIGTERM)

            # Draining: health says NOT_SERVING, yet new calls are still served.
            give_up = time.monotonic() + DRAIN_SECONDS
            while (status := health.Check(health_pb2.HealthCheckRequest(), timeout=5).status) != (
                health_pb2.HealthCheckResponse.NOT_SERVING
            ):
                assert time.monotonic() < give_up, f"health still says {status} after SIGTERM"
                time.sleep(0.02)
            assert echo(b"during drain", timeout=5) == b"echo:during drain"

            # Past the drain the server stops: it closes its port, and sends the client's connection away (a
            # GOAWAY: the channel leaves READY; the in-flight call carries on). From then on, new calls are
            # refused at once (UNAVAILABLE, where a call left waiting would see its deadline pass).
            give_up = time.monotonic() + 30
            while listening(port) or states[-1] == grpc.ChannelConnectivity.READY:
                assert time.monotonic() < give_up, f"still listening long after the drain ({states[-1]})"
                time.sleep(0.02)
            with pytest.raises(grpc.RpcError) as refused:
                echo(b"too late", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            thread.join(timeout=60)
            assert in_flight.get("result") == request.replace(b"sleep:", b"echo:sleep:"), "the in-flight call failed"
        assert server.wait(timeout=30) == 0
    finally:
        server.stop()
    assert any(f"health NOT_SERVING; draining {DRAIN_SECONDS:.1f}s" in line for line in server.lines)
