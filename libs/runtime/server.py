"""The shared gRPC server runtime: what every gRPC service of ours gets by calling it.

`GrpcServer` adds to a service's handlers: the standard interceptor stack (libs/interceptors), mTLS
with per-method authorisation (or plaintext with --insecure), grpc.health.v1 with overall and
per-service status (optionally also on a plaintext probe port), server reflection, message-size
limits, keepalive, a bounded executor for blocking work, and graceful shutdown: on SIGTERM/SIGINT
health turns NOT_SERVING, calls are still served for the drain period (so load balancers stop
sending), then `stop(grace)` lets in-flight calls finish.

Two ways to serve, chosen per service in services/services.bzl (`serving`), with the same middleware,
metrics, health, reflection, limits and drain: "aio", grpc.aio on the event loop (handlers are
coroutines: for handlers that wait on other services), and "threads", grpc's sync server with `--threads`
workers (handlers are plain functions: for short unary work it serves more calls per CPU-second;
bench/RESULTS.md). The event loop runs the server's life (start, signals, drain) in both.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from libs.interceptors import AccessPolicy, server_middleware
from libs.interceptors.batched_lines import flush_all
from libs.interceptors.core import InstrumentedServer, Middleware, Pipeline
from libs.interceptors.metrics import RpcMetrics, start_metrics_server
from libs.runtime import event_loop
from libs.runtime.config import ServerConfig
from libs.runtime.memory import trim_heap_in_background
from libs.runtime.supervisor import Supervisor, reserve_port
from libs.runtime.tls import server_credentials
from libs.runtime.transport import LOG_INTERVAL as DROPPED_LOG_INTERVAL
from libs.runtime.transport import DroppedCallsLog, TransportCalls, channelz_server_ids

OVERALL = ""  # the health service's name for the server as a whole


@dataclass(frozen=True)
class Service:
    """A gRPC service to host: its full name (for health and reflection) and how to add its handlers."""

    name: str
    register: Callable[[grpc.aio.Server], None]


class StartError(RuntimeError):
    """The server could not start, e.g. its port is taken."""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def server_options(config: ServerConfig, max_streams_per_connection: int | None = None) -> list[tuple[str, int]]:
    """gRPC's own limits: messages, keepalive (and its enforcement: a client pinging more often than
    our clients do is sent away after 2 strikes), idle and maximum connection age, the TLS/HTTP2
    handshake, and the streams one connection may have open."""
    keepalive_ms = _ms(config.keepalive_time)
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", _ms(config.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept client pings as often as our own clients send them (libs/runtime/channel.py).
        ("grpc.http2.min_ping_interval_without_data_ms", min(keepalive_ms, 10_000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", _ms(config.max_connection_idle)),
        ("grpc.max_connection_age_ms", _ms(config.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", _ms(config.max_connection_age_grace)),
        ("grpc.server_handshake_timeout_ms", _ms(config.handshake_timeout)),
        # Until a client acknowledges our SETTINGS, gRPC measures its header blocks against HTTP/2's
        # defaults, not our metadata limit: a client that never does is sent away this soon (gRPC's
        # default: a minute). docs/upstream/grpc-hostile-clients/README.md.
        ("grpc.http2.settings_timeout", _ms(config.settings_timeout)),
        ("grpc.max_concurrent_streams", max_streams_per_connection or config.max_streams_per_connection),
        # gRPC's backlog of calls that arrived faster than the process picks them up (a CPU-bound process
        # falls behind here, not in its handlers): past the limit gRPC resets a growing share of new calls,
        # past twice it every one, in C and cheaply (a refusal in Python costs as much as an answer:
        # bench/RESULTS.md). No handler sees these calls; transport.py counts and logs them.
        ("grpc.server.max_pending_requests", config.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", 2 * config.max_pending_calls),
        # Several processes share the port only when asked to (libs/runtime/supervisor.py); otherwise a
        # second server started on a taken port fails instead of silently taking half the connections.
        ("grpc.so_reuseport", 1 if config.processes > 1 else 0),
    ]


PROBE_STREAMS_PER_CONNECTION = 16
"""The plaintext health port serves probes, a few calls at a time: one connection may not hold more."""


# grpc-stubs' grpc_health stub has no `aio` (the servicer grpc.aio servers need): the base class is untyped.
class BoundedHealthServicer(health.aio.HealthServicer):  # type: ignore[name-defined,misc]
    """grpc.health.v1 with at most `max_watches` Watch streams open at once: each holds a task and a
    queue until its caller leaves, and the probe port is open to anyone who reaches it (bench/RESULTS.md,
    "Figures behind the code")."""

    def __init__(self, max_watches: int, logger: logging.Logger) -> None:
        super().__init__()
        self._max_watches = max_watches
        self._watches = 0
        self._logger = logger

    async def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
    ) -> None:
        if self._watches >= self._max_watches:
            self._logger.warning("refused a health Watch from %s: %d open", context.peer(), self._watches)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {self._max_watches} Watch streams")
        self._watches += 1
        try:
            await super().Watch(request, context)
        finally:
            self._watches -= 1


class SyncBoundedHealthServicer(health.HealthServicer):
    """BoundedHealthServicer for a sync server. Each Watch stream holds a thread of a pool of its own, so
    that watches (every client channel of ours keeps one open) never take the threads calls need. Not
    grpc_health's non-blocking Watch: with it, a status change waits until every watcher's client has
    read the last one, so one client that stops reading would hold up the drain."""

    def __init__(self, max_watches: int, logger: logging.Logger) -> None:
        # One thread more than watches may be open: a Watch past the limit needs one to be refused on.
        pool = ThreadPoolExecutor(max_watches + 1, thread_name_prefix="health-watch")
        super().__init__(experimental_non_blocking=False, experimental_thread_pool=pool)
        self._max_watches = max_watches
        self._watches = 0
        self._watches_lock = threading.Lock()  # not _lock: that is grpc_health's own (re-entrant) one
        self._logger = logger

    def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Callable[..., object] | None = None,  # never given: Watch blocks
    ) -> object:
        with self._watches_lock:
            admitted = self._watches < self._max_watches
            self._watches += admitted
        if not admitted:
            self._logger.warning("refused a health Watch from %s: %d open", context.peer(), self._max_watches)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {self._max_watches} Watch streams")
        context.add_callback(self._watch_ended)
        return super().Watch(request, context, send_response_callback)

    def _watch_ended(self) -> None:
        with self._watches_lock:
            self._watches -= 1


HealthServicer = BoundedHealthServicer | SyncBoundedHealthServicer


class AioServing:
    """grpc.aio on the event loop: handlers are coroutines."""

    asynchronous = True

    def server(self, options: list[tuple[str, int]], threads: int, max_calls: int) -> grpc.aio.Server:
        # No maximum_concurrent_rpcs: gRPC would refuse past it, unseen; LoadShedding counts and logs.
        return grpc.aio.server(options=options)

    def health(self, max_watches: int, logger: logging.Logger) -> HealthServicer:
        return BoundedHealthServicer(max_watches, logger)

    def reflection(self, names: list[str]) -> object:
        # grpc-stubs' reflection stub lacks `aio` (its `aio` is grpc.aio, imported and not re-exported).
        return reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]

    async def start(self, server: grpc.aio.Server) -> None:
        await server.start()

    async def stop(self, server: grpc.aio.Server, grace: float) -> None:
        await server.stop(grace)

    async def set_health(self, servicer: HealthServicer, name: str, status: int) -> None:
        await cast(BoundedHealthServicer, servicer).set(name, status)

    async def enter_graceful_shutdown(self, servicer: HealthServicer) -> None:
        await cast(BoundedHealthServicer, servicer).enter_graceful_shutdown()


class ThreadsServing:
    """grpc's sync server, `threads` worker threads: handlers are plain functions. The event loop only
    starts and stops it; the sync server's methods take the place of grpc.aio's of the same names."""

    asynchronous = False

    def server(self, options: list[tuple[str, int]], threads: int, max_calls: int) -> grpc.aio.Server:
        # gRPC's own bound, since calls waiting for a thread are no handler's yet (LoadShedding cannot see
        # them): past `max_calls` running or waiting, RESOURCE_EXHAUSTED (transport.py counts and logs it).
        pool = ThreadPoolExecutor(threads, thread_name_prefix="grpc-call")
        return cast(grpc.aio.Server, grpc.server(pool, options=options, maximum_concurrent_rpcs=max_calls or None))

    def health(self, max_watches: int, logger: logging.Logger) -> HealthServicer:
        return SyncBoundedHealthServicer(max_watches, logger)

    def reflection(self, names: list[str]) -> object:
        return reflection.ReflectionServicer(names)

    async def start(self, server: grpc.aio.Server) -> None:
        cast(grpc.Server, server).start()

    async def stop(self, server: grpc.aio.Server, grace: float) -> None:
        stopped = cast(grpc.Server, server).stop(grace)  # a threading.Event, set once every call finished
        await asyncio.to_thread(stopped.wait)

    async def set_health(self, servicer: HealthServicer, name: str, status: int) -> None:
        servicer.set(name, status)

    async def enter_graceful_shutdown(self, servicer: HealthServicer) -> None:
        servicer.enter_graceful_shutdown()


SERVING: dict[str, AioServing | ThreadsServing] = {"aio": AioServing(), "threads": ThreadsServing()}
"""The ways to serve, by their name in services/services.bzl (`serving`)."""
PROBE_THREADS = 2  # the plaintext probe port's workers when served by threads: Check calls, now and then


class GrpcServer:
    def __init__(
        self,
        config: ServerConfig,
        default_policy: Mapping[str, Iterable[str]] | None = None,
        logger: logging.Logger | None = None,
        service_name: str = "",
        middleware: Sequence[Middleware] | None = None,
        serving: str = "aio",
    ) -> None:
        """`default_policy` says who may call each method under mTLS; `config.allow` overrides it.
        `service_name` names this process in logs and metrics; `middleware` replaces the standard
        stack of libs/interceptors (benchmarks pass [] for a bare server); `serving` is one of SERVING
        (the service's entry in services/services.bzl says which). Add services with `add_service`
        before `start`."""
        self.config = config
        self.services: list[Service] = []
        self.logger = logger or logging.getLogger(__name__)
        self.policy = AccessPolicy(default_policy or {}).with_overrides(config.allow)
        self.serving = SERVING[serving]
        self.health = self.serving.health(config.max_health_watches, self.logger)
        # Handlers hand blocking work (SQLite, CPU) to this bounded pool and keep the event loop free.
        self.executor = ThreadPoolExecutor(config.blocking_workers, thread_name_prefix="blocking")
        self.port = 0
        self.health_port = 0
        self._servers: list[grpc.aio.Server] = []
        self._stopping = False
        self._channelz_id = 0  # the service port's server in gRPC's channelz (libs/runtime/transport.py)
        self._dropped: DroppedCallsLog | None = None
        self._dropped_watch: asyncio.Task[None] | None = None
        self._middleware = middleware
        self.service_name = service_name or "grpc-server"

    def add_service(self, name: str, register: Callable[[grpc.aio.Server], None]) -> None:
        """Hosts the service `name` (full name, e.g. 'pkg.v1.Service'); `register` adds its handlers."""
        self.services.append(Service(name, register))

    def _standard_middleware(self, policy: AccessPolicy | None) -> list[Middleware]:
        return server_middleware(
            self.service_name,
            logger=self.logger,
            policy=policy,
            access_log_interval=self.config.access_log_interval,
            max_in_flight=self.config.max_concurrent_rpcs,
        )

    def _bind(self, server: grpc.aio.Server, address: str, secure: bool) -> int:
        try:
            if secure and self.config.tls:
                return server.add_secure_port(address, server_credentials(self.config.tls))
            return server.add_insecure_port(address)
        except RuntimeError as error:  # gRPC's way of saying the address cannot be bound
            raise StartError(f"cannot listen on {address}: {error}") from error

    async def start(self) -> None:
        config = self.config
        middleware = self._middleware
        if middleware is None:
            middleware = self._standard_middleware(self.policy if config.tls else None)
        existing = channelz_server_ids()
        server = self.serving.server(server_options(config), config.threads, config.max_concurrent_rpcs)
        (self._channelz_id,) = channelz_server_ids() - existing
        if self._middleware is None:  # the standard stack counts what its handlers saw: the rest is dropped
            TransportCalls.of().add(self._channelz_id)
            self._dropped = DroppedCallsLog(self._channelz_id, RpcMetrics.of("server"), self.logger)
        # The middleware wraps each handler as it registers: cheaper than gRPC's interceptor path.
        asynchronous = self.serving.asynchronous
        instrumented = InstrumentedServer(server, Pipeline(middleware), asynchronous) if middleware else None
        # An InstrumentedServer stands in for the server it wraps: it takes the registrations (what the
        # generated add_*_to_server functions call) and passes everything else through.
        target = cast(grpc.aio.Server, instrumented) if instrumented is not None else server
        for service in self.services:
            service.register(target)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, target)
        names = [s.name for s in self.services] + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        # Not reflection.enable_server_reflection: it picks the sync servicer for anything but a bare aio server.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            self.serving.reflection([*names, reflection.SERVICE_NAME]), target
        )
        if instrumented is not None:
            instrumented.finish()
        self.port = self._bind(server, config.address, secure=True)
        self._servers.append(server)

        if config.health_port:
            # Kubernetes' native gRPC probes cannot present a client certificate: health only, plaintext.
            # Its calls take the service port's path (decoding, errors, metrics, logs) but authorisation:
            # a malformed request from anyone is INVALID_ARGUMENT, counted, not an ERROR with a traceback.
            probe_options = server_options(config, PROBE_STREAMS_PER_CONNECTION)
            probe = self.serving.server(probe_options, PROBE_THREADS, config.max_concurrent_rpcs)
            probe_middleware = self._middleware if self._middleware is not None else self._standard_middleware(None)
            probe_target = None
            if probe_middleware:
                probe_target = InstrumentedServer(probe, Pipeline(probe_middleware), asynchronous)
            health_pb2_grpc.add_HealthServicer_to_server(
                self.health, cast(grpc.aio.Server, probe_target) if probe_target is not None else probe
            )
            if probe_target is not None:
                probe_target.finish()
            self.health_port = self._bind(probe, f"{config.host}:{config.health_port}", secure=False)
            self._servers.append(probe)

        if config.metrics_port:
            try:
                start_metrics_server(config.metrics_port, config.host.strip("[]") or "0.0.0.0")
            except OSError as error:
                raise StartError(f"cannot serve /metrics on port {config.metrics_port}: {error}") from error
        for each in self._servers:
            await self.serving.start(each)
        trim_heap_in_background(self.logger)
        if self._dropped is not None:
            self._dropped_watch = asyncio.get_running_loop().create_task(self._log_dropped(self._dropped))
        for name in [OVERALL, *(s.name for s in self.services)]:
            await self.serving.set_health(self.health, name, health_pb2.HealthCheckResponse.SERVING)
        self.logger.info(
            "serving %s on %s:%d (%s)%s",
            ", ".join(s.name for s in self.services),
            config.host,
            self.port,
            "mTLS" if config.tls else "plaintext, --insecure",
            f", health probes on port {self.health_port}" if self.health_port else "",
        )
        if config.metrics_port:
            self.logger.info("Prometheus metrics on http://%s:%d/metrics", config.host, config.metrics_port)

    async def _log_dropped(self, dropped: DroppedCallsLog) -> None:
        while True:
            await asyncio.sleep(DROPPED_LOG_INTERVAL)
            dropped.check()

    async def shutdown(self) -> None:
        """NOT_SERVING, drain, then stop with grace; in-flight calls finish, new ones are refused.

        Only the first call acts (a second signal during the drain changes nothing)."""
        if self._stopping:
            return
        self._stopping = True
        await self.serving.enter_graceful_shutdown(self.health)
        self.logger.info(
            "health NOT_SERVING; draining %.1fs, then %.1fs grace",
            self.config.drain_seconds,
            self.config.shutdown_grace,
        )
        await asyncio.sleep(self.config.drain_seconds)
        if self._dropped is not None:
            assert self._dropped_watch is not None  # made by start() along with _dropped
            self._dropped_watch.cancel()
            self._dropped.check()
            TransportCalls.of().total()  # the last count gRPC will give before it forgets the server
        await asyncio.gather(*(self.serving.stop(server, self.config.shutdown_grace) for server in self._servers))
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._dropped is not None:
            TransportCalls.of().retire(self._channelz_id)
        flush_all()
        self.logger.info("stopped")

    async def run(self) -> None:
        """Starts, serves until SIGTERM or SIGINT, then shuts down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        await stop.wait()
        await self.shutdown()


def serve(name: str, config: ServerConfig, build: Callable[[ServerConfig], GrpcServer], logger: logging.Logger) -> int:
    """Serves what `build(config)` makes until SIGTERM/SIGINT and returns the exit code: in this process,
    or in `config.processes` forked children sharing the ports (libs/runtime/supervisor.py), the
    supervisor serving their summed /metrics. `name`: the service's, for the supervisor's files."""
    if config.processes == 1:
        return _serve_here(config, build, logger)
    reserved: list[socket.socket] = []
    for port in [config.port, config.health_port] if config.health_port else [config.port]:
        try:
            reserved.append(reserve_port(config.host, port))
        except OSError as error:
            logger.error("cannot listen on %s:%d: %s", config.host, port, error)
            for sock in reserved:
                sock.close()
            return 1
    # The children bind the reserved ports themselves (0 became a real one); /metrics is the supervisor's.
    children = replace(config, port=reserved[0].getsockname()[1], metrics_port=0)
    supervisor = Supervisor(
        config.processes,
        lambda index: _serve_here(children, build, logger),
        logger,
        name=name,
        stop_timeout=config.drain_seconds + config.shutdown_grace + 5,
        metrics_port=config.metrics_port,
        metrics_host=config.host.strip("[]") or "0.0.0.0",
        inherited=reserved,
    )
    try:
        return supervisor.run()
    except OSError as error:
        logger.error("cannot serve /metrics on port %d: %s", config.metrics_port, error)
        return 1
    finally:
        for sock in reserved:
            sock.close()


def _serve_here(config: ServerConfig, build: Callable[[ServerConfig], GrpcServer], logger: logging.Logger) -> int:
    try:
        event_loop.run(build(config).run(), config.event_loop)
    except StartError as error:
        logger.error("%s", error)
        return 1
    return 0
