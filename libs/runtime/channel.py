"""The one way our processes open gRPC channels (grpc.aio).

`create_channel` gives every channel: mTLS with our certificate (or plaintext with --insecure), the
client interceptors of libs/interceptors (request ids, trace context, metrics, failure logs, a
default deadline per call and propagation of the caller's deadline),
retries on UNAVAILABLE only with bounded exponential backoff (gRPC service config), round_robin
load balancing over every address of a `dns:///` name or a comma-separated list of replicas, and
keepalive pings that detect dead connections.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import grpc

from libs.interceptors import client_interceptors
from libs.runtime.tls import TlsFiles, channel_credentials


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 0.5
    backoff_multiplier: float = 2.0


def service_config(retry: RetryPolicy) -> str:
    """JSON service config: round_robin, and retries of UNAVAILABLE only (never of what the server decided)."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{}],  # every method of every service
                    "retryPolicy": {
                        "maxAttempts": retry.max_attempts,
                        "initialBackoff": f"{retry.initial_backoff}s",
                        "maxBackoff": f"{retry.max_backoff}s",
                        "backoffMultiplier": retry.backoff_multiplier,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def normalize_target(target: str) -> str:
    """`dns:///name:port` and other URIs as given; `host:port` → `dns:///host:port`;
    `ip:port,ip:port` → gRPC's `ipv4:`/`ipv6:` list (one subchannel per replica)."""
    target = target.strip()
    if not target:
        raise ValueError("empty gRPC target")
    if ":///" in target or target.startswith(("ipv4:", "ipv6:", "unix:")):
        return target
    parts = [part.strip() for part in target.split(",") if part.strip()]
    if len(parts) == 1:
        return f"dns:///{parts[0]}"
    families = set()
    for part in parts:
        host, _, port = part.rpartition(":")
        host = host.strip("[]")
        if not port.isdigit():
            raise ValueError(f"replica {part!r} needs host:port")
        try:
            families.add(ipaddress.ip_address("127.0.0.1" if host == "localhost" else host).version)
        except ValueError:
            raise ValueError(f"replica list entries must be IP addresses; use dns:///{part} for names") from None
    if len(families) != 1:
        raise ValueError("replica list mixes IPv4 and IPv6")
    scheme = "ipv4" if families == {4} else "ipv6"
    return f"{scheme}:" + ",".join(part.replace("localhost", "127.0.0.1") for part in parts)


def create_channel(
    target: str,
    *,
    tls: TlsFiles | None,
    tls_server_name: str | None = None,
    default_timeout: float | None = 5.0,
    retry: RetryPolicy = RetryPolicy(),
    keepalive_time: float = 30.0,
    keepalive_timeout: float = 10.0,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> grpc.aio.Channel:
    """A channel to `target`. With `tls`, the server must present a certificate from `tls.ca` naming
    `tls_server_name` (defaults to the host in the target)."""
    options = [
        ("grpc.service_config", service_config(retry)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Come back quickly after a backend restart instead of gRPC's default 1 s..120 s backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    interceptors = client_interceptors(default_timeout=default_timeout)
    uri = normalize_target(target)
    if tls is None:
        return grpc.aio.insecure_channel(uri, options=options, interceptors=interceptors)
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    return grpc.aio.secure_channel(uri, channel_credentials(tls), options=options, interceptors=interceptors)
