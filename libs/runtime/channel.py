"""The one way our processes open gRPC channels (grpc.aio).

`create_channel` gives every channel: mTLS with our certificate (or plaintext with --insecure), the
client interceptors of libs/interceptors (request ids, trace context, metrics, failure logs, a
default deadline per call and propagation of the caller's deadline),
retries on UNAVAILABLE only with bounded exponential backoff (gRPC service config), round_robin
load balancing over every address of a `dns:///` name or a comma-separated list of replicas, and
keepalive pings that detect dead connections. `ReloadingChannel` adds client-certificate rotation.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from libs.interceptors import client_interceptors
from libs.runtime.tls import TlsFiles, channel_credentials

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 0.5
    backoff_multiplier: float = 2.0


def service_config(retry: RetryPolicy, health_checked: bool = True) -> str:
    """JSON service config: round_robin over the replicas whose grpc.health.v1 says SERVING (client-side
    health checking: a draining replica stops getting new calls at once; a server without the health
    service counts as healthy); retries of UNAVAILABLE and of RESOURCE_EXHAUSTED, which our servers answer
    only to calls they shed before doing any work, after the `grpc-retry-pushback-ms` they send (a negative
    one forbids the retry), never of what a handler decided; and gRPC's retry throttling: once failures
    outnumber successes the channel stops retrying, so an overloaded service gets no retry storm."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            # Each failure costs a token, each success gives back 0.1; below 5 tokens, no retries.
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
            **({"healthCheckConfig": {"serviceName": ""}} if health_checked else {}),
            "methodConfig": [
                {
                    "name": [{}],  # every method of every service
                    "retryPolicy": {
                        "maxAttempts": retry.max_attempts,
                        "initialBackoff": f"{retry.initial_backoff}s",
                        "maxBackoff": f"{retry.max_backoff}s",
                        "backoffMultiplier": retry.backoff_multiplier,
                        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
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
    keepalive_timeout: float = 3.0,
    max_message_bytes: int = 4 * 1024 * 1024,
    own_connections: bool = False,
) -> BalancedChannel:
    """A channel to `target`. With `tls`, the server must present a certificate from `tls.ca` naming
    `tls_server_name` (defaults to the host in the target). `own_connections`: connections of its own
    rather than those gRPC shares between a process's channels to the same addresses (a client opening
    several channels to a --processes N server then reaches several of its processes).

    `keepalive_timeout` is also the connection's TCP_USER_TIMEOUT on Linux (gRPC sets it): data left
    unacknowledged that long drops the connection, so a replica behind a silently cut link stops
    receiving calls once the keepalive timeout has passed (services/marketplace:system_test measures it). Peers that are
    merely busy still acknowledge at the TCP level."""
    options: list[tuple[str, int | str]] = [
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
    if tls is not None and tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    if own_connections:
        options.append(("grpc.use_local_subchannel_pool", 1))
    uri = normalize_target(target)
    credentials = channel_credentials(tls) if tls is not None else None

    def make(health_checked: bool) -> grpc.aio.Channel:
        settings = [*options, ("grpc.service_config", service_config(retry, health_checked))]
        interceptors = client_interceptors(default_timeout=default_timeout)
        if credentials is None:
            return grpc.aio.insecure_channel(uri, options=settings, interceptors=interceptors)
        return grpc.aio.secure_channel(uri, credentials, options=settings, interceptors=interceptors)

    return BalancedChannel(make(health_checked=True), make(health_checked=False))


class _ChannelMethods:
    """The grpc.aio.Channel methods a stub calls, each made by the subclass's `_multicallable(kind, ...)`."""

    def _multicallable(self, kind: str, method: str, args: dict[str, Any]) -> Callable[..., Any]:
        raise NotImplementedError

    def unary_unary(self, method: str, **args: Any) -> Callable[..., grpc.aio.UnaryUnaryCall[Any, Any]]:
        return self._multicallable("unary_unary", method, args)

    def unary_stream(self, method: str, **args: Any) -> Callable[..., grpc.aio.UnaryStreamCall[Any, Any]]:
        return self._multicallable("unary_stream", method, args)

    def stream_unary(self, method: str, **args: Any) -> Callable[..., grpc.aio.StreamUnaryCall[Any, Any]]:
        return self._multicallable("stream_unary", method, args)

    def stream_stream(self, method: str, **args: Any) -> Callable[..., grpc.aio.StreamStreamCall[Any, Any]]:
        return self._multicallable("stream_stream", method, args)


class BalancedChannel(_ChannelMethods):
    """Calls go round robin over the replicas whose health says SERVING; when none does, over all of them.

    A replica that is draining says NOT_SERVING while it still serves for a few seconds (libs/runtime's
    drain), so that balancers move away; if it is the only one (a single replica restarting, or all of
    them rolling at once) there is nowhere to move, and failing every call then would waste the drain
    (bench/RESULTS.md, "Figures behind the code"). So a call goes to the `serving` channel unless its
    state is TRANSIENT_FAILURE (no replica it may use), and then to `fallback`, which does no health
    checking. The fallback channel connects only when first used. (The state is known once the serving
    channel has connected: a call made while it first finds every replica NOT_SERVING still fails.)"""

    def __init__(self, serving: grpc.aio.Channel, fallback: grpc.aio.Channel) -> None:
        self.serving = serving
        self.fallback = fallback

    def _multicallable(self, kind: str, method: str, args: dict[str, Any]) -> Callable[..., Any]:
        serving, fallback = getattr(self.serving, kind)(method, **args), getattr(self.fallback, kind)(method, **args)
        state = self.serving.get_state

        def call(request: Any = None, **kwargs: Any) -> Any:
            if state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                return fallback(request, **kwargs)
            return serving(request, **kwargs)

        return call

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.serving.get_state(try_to_connect)

    async def channel_ready(self) -> None:
        await self.serving.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await asyncio.gather(self.serving.close(grace), self.fallback.close(grace))

    async def __aenter__(self) -> BalancedChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class ReloadingChannel(_ChannelMethods):
    """A grpc.aio channel that follows certificate rotation on the client side.

    Every `check_every` seconds it looks at the TLS files; when they changed, new calls go to a
    channel made with the new files, and the old channel is closed once its calls had `drain`
    seconds to finish. Stubs built on it (`RecommendationServiceStub(channel)`) keep working: each
    call resolves the current channel. Without TLS it is a plain channel.
    """

    def __init__(
        self, target: str, *, tls: TlsFiles | None, check_every: float = 30.0, drain: float = 30.0, **options: Any
    ) -> None:
        """`options` are those of `create_channel`."""
        self._make: Callable[[], BalancedChannel] = lambda: create_channel(target, tls=tls, **options)
        self._tls = tls
        self._check_every = check_every
        self._drain = drain
        self._channel = self._make()
        self._generation = 0
        self._fingerprint = tls.fingerprint() if tls else None
        self._watcher: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def generation(self) -> int:
        """How many times the channel was remade after a rotation."""
        return self._generation

    def _watch(self) -> None:
        if self._tls is not None and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._follow_rotation())

    async def _follow_rotation(self) -> None:
        while True:
            await asyncio.sleep(self._check_every)
            self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Remakes the channel if the TLS files changed; returns whether it did."""
        try:
            fingerprint = self._tls.fingerprint() if self._tls else None
            if fingerprint == self._fingerprint:
                return False
            fresh = self._make()  # reads and checks the new files; raises if they are unusable
        except (OSError, ValueError) as error:
            logger.error("keeping the current client certificate: %s", error)
            return False
        old, self._channel, self._fingerprint = self._channel, fresh, fingerprint
        self._generation += 1
        logger.info("client certificate changed: new calls use a new channel (generation %d)", self._generation)
        task = asyncio.get_running_loop().create_task(self._close_later(old))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return True

    async def _close_later(self, channel: BalancedChannel) -> None:
        await asyncio.sleep(self._drain)
        await channel.close()

    def _multicallable(self, kind: str, method: str, args: dict[str, Any]) -> Callable[..., Any]:
        made: dict[str, Any] = {"generation": -1, "callable": None}

        def call(request: Any = None, **kwargs: Any) -> Any:
            """`request` is the message, or for a client-streaming or bidi method the request iterator (or
            None, to write with the call's `write`)."""
            self._watch()
            if made["generation"] != self._generation:  # bind to the current channel once per generation
                made["callable"] = getattr(self._channel, kind)(method, **args)
                made["generation"] = self._generation
            return made["callable"](request, **kwargs)

        return call

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self._closing):
            task.cancel()
        await self._channel.close(grace)

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
