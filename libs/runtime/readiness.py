"""Waiting for a gRPC server to say SERVING, for programs that start one and then use it (benchmarks,
container tests)."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_until_serving(target: str, timeout: float = 30.0, service: str = "") -> float:
    """Seconds until grpc.health.v1 at `target` (plaintext, e.g. a probe port) answers SERVING for
    `service` ("" = the server as a whole, as a Kubernetes gRPC probe asks); TimeoutError after `timeout`."""
    started = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - started < timeout:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    raise TimeoutError(f"{target} did not say SERVING within {timeout} s")
