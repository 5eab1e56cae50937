"""Marketplace web server: `bazel run //services/marketplace -- --port 8080 --recommendations-addr HOST:PORT`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import uvicorn
from grpc_health.v1 import health_pb2_grpc

from books.recommendations.v1 import recommendations_pb2_grpc
from libs.http.protocol import HttpLimits, limited_protocol
from libs.interceptors.tracing import configure_tracing
from libs.runtime import event_loop
from libs.runtime.channel import ReloadingChannel, normalize_target
from libs.runtime.config import add_callee_flags, add_flag, add_log_flags, add_tls_flags, tls_files
from libs.runtime.event_loop import DEFAULT as DEFAULT_EVENT_LOOP
from libs.runtime.event_loop import EVENT_LOOPS
from libs.runtime.logs import configure_logging
from libs.runtime.supervisor import Supervisor, parse_processes
from libs.runtime.tls import TlsFiles
from services.marketplace.app import create_app
from services.registry import REGISTRY

SERVICE = REGISTRY["marketplace"]
ENV_PREFIX = SERVICE.env_prefix

logger = logging.getLogger("marketplace")


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=__doc__)
    add_flag(result, ENV_PREFIX, "--host", "0.0.0.0", "address to listen on")
    add_flag(result, ENV_PREFIX, "--port", SERVICE.port, "HTTP port", type=int)
    add_flag(
        result,
        ENV_PREFIX,
        "--workers",
        "1",
        "processes serving HTTP, each with its own event loop; 'auto' = the CPUs this process may use",
    )
    add_flag(result, ENV_PREFIX, "--event-loop", DEFAULT_EVENT_LOOP, "the event loop", choices=EVENT_LOOPS)
    add_flag(result, ENV_PREFIX, "--access-log", True, "log each HTTP request", action=argparse.BooleanOptionalAction)
    limits = HttpLimits()
    add_flag(
        result, ENV_PREFIX, "--max-header-bytes", limits.max_header_bytes, "request line + headers; more: 431", type=int
    )
    add_flag(result, ENV_PREFIX, "--max-headers", limits.max_headers, "header fields per request; more: 431", type=int)
    add_flag(
        result,
        ENV_PREFIX,
        "--header-timeout",
        limits.header_timeout,
        "seconds a request may take to send its headers (slowloris); later: 408",
        type=float,
    )
    add_flag(result, ENV_PREFIX, "--max-body-bytes", limits.max_body_bytes, "request body; more: 413", type=int)
    add_flag(
        result,
        ENV_PREFIX,
        "--body-timeout",
        limits.body_timeout,
        "seconds a request body may take after its headers; later: 408",
        type=float,
    )
    add_flag(
        result,
        ENV_PREFIX,
        "--min-body-rate",
        limits.min_body_rate,
        "bytes per second a request body must average; slower: 408",
        type=int,
    )
    add_flag(
        result,
        ENV_PREFIX,
        "--write-timeout",
        limits.write_timeout,
        "seconds an answer may wait for a client that does not read it; then the connection is dropped",
        type=float,
    )
    add_flag(
        result, ENV_PREFIX, "--keep-alive-timeout", 5.0, "seconds an idle keep-alive connection stays open", type=float
    )
    add_flag(
        result,
        ENV_PREFIX,
        "--limit-concurrency",
        500,
        "connections + requests in progress per worker; more requests get 503",
        type=int,
    )
    add_flag(
        result,
        ENV_PREFIX,
        "--forwarded-allow-ips",
        "127.0.0.1",
        "proxies whose X-Forwarded-Proto/For are believed (comma-separated, or *)",
    )
    add_tls_flags(result, ENV_PREFIX)
    add_log_flags(result, ENV_PREFIX)
    # How to reach every service this one calls (services/services.bzl): --recommendations-addr, ...
    add_callee_flags(result, REGISTRY.callee_ports(SERVICE.name))
    add_flag(
        result,
        "RECOMMENDATIONS",
        "--recommendations-timeout",
        0.3,
        "seconds each page may spend on Recommendations",
        type=float,
    )
    return result


def validate(args: argparse.Namespace) -> list[str]:
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be between 0 and 65535, got {args.port}")
    if args.event_loop not in EVENT_LOOPS:
        problems.append(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}, got {args.event_loop}")
    try:
        args.workers = parse_processes(str(args.workers))
    except ValueError as error:
        problems.append(str(error).replace("--processes", "--workers"))
    if args.recommendations_timeout <= 0:
        problems.append(f"--recommendations-timeout must be positive, got {args.recommendations_timeout}")
    if not 1024 <= args.max_header_bytes <= 1024 * 1024:
        problems.append(f"--max-header-bytes must be between 1024 and 1048576, got {args.max_header_bytes}")
    if not 8 <= args.max_headers <= 1000:
        problems.append(f"--max-headers must be between 8 and 1000, got {args.max_headers}")
    if not 0 <= args.max_body_bytes <= 1024 * 1024 * 1024:
        problems.append(f"--max-body-bytes must be between 0 and 1073741824, got {args.max_body_bytes}")
    if not 1 <= args.min_body_rate <= 1024 * 1024 * 1024:
        problems.append(f"--min-body-rate must be between 1 and 1073741824, got {args.min_body_rate}")
    for name in ("header_timeout", "keep_alive_timeout", "body_timeout", "write_timeout"):
        if not 0.1 <= getattr(args, name) <= 300:
            problems.append(f"--{name.replace('_', '-')} must be from 0.1 to 300 seconds, got {getattr(args, name)}")
    if not 2 <= args.limit_concurrency <= 100_000:
        problems.append(f"--limit-concurrency must be between 2 and 100000, got {args.limit_concurrency}")
    return problems


class Server(uvicorn.Server):
    """uvicorn's server, exiting with code 0 after a graceful shutdown on SIGTERM/SIGINT.

    uvicorn re-raises the captured signal once it has shut down, so the process would end "killed by
    SIGTERM" (exit -15) although it stopped cleanly; orchestrators and //:dev read that as a failure.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        originals = {signum: signal.signal(signum, self.handle_exit) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in originals.items():
                signal.signal(signum, handler)


async def serve(
    args: argparse.Namespace, tls: TlsFiles | None, sock: socket.socket | None = None, metrics_sums: Path | None = None
) -> None:
    """Serves HTTP (on `sock` if given) until SIGTERM/SIGINT (uvicorn handles both), then closes the
    gRPC channel. Each worker process has its own event loop and channel; `metrics_sums`: where a
    worker finds the sum over all of them for /metrics."""
    configure_tracing(SERVICE.name)
    channel = ReloadingChannel(
        args.recommendations_addr,
        tls=tls,
        tls_server_name=args.recommendations_tls_name,
        default_timeout=args.recommendations_timeout,
    )
    async with channel:
        app = create_app(
            # A ReloadingChannel has the grpc.aio.Channel methods a stub calls, without being one (by type).
            recommendations_pb2_grpc.RecommendationServiceStub(cast(grpc.aio.Channel, channel)),
            args.recommendations_timeout,
            health_pb2_grpc.HealthStub(channel),
            metrics_sums,
        )
        limits = HttpLimits(
            args.max_header_bytes,
            args.max_headers,
            args.header_timeout,
            args.max_body_bytes,
            args.body_timeout,
            args.min_body_rate,
            args.write_timeout,
        )
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            http=limited_protocol(limits),  # httptools, with limits on headers, bodies and unread answers
            lifespan="off",
            log_config=None,
            access_log=args.access_log,
            timeout_keep_alive=args.keep_alive_timeout,
            limit_concurrency=args.limit_concurrency,
            proxy_headers=True,
            forwarded_allow_ips=args.forwarded_allow_ips,
        )
        logger.info("calling Recommendations at %s", args.recommendations_addr)
        await Server(config).serve(sockets=[sock] if sock else None)


def listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


def run_workers(args: argparse.Namespace, tls: TlsFiles | None) -> int:
    """`args.workers` processes accepting from one listening socket, under libs/runtime's supervisor:
    a dead worker is restarted, SIGTERM/SIGINT drain every one, /metrics is the sum over all.

    The supervisor binds before forking and never touches gRPC: a gRPC channel must not cross a fork.
    """
    sock = listen(args.host, args.port)
    logger.info("listening on %s:%d with %d workers", args.host, sock.getsockname()[1], args.workers)

    def worker(index: int) -> int:
        event_loop.run(serve(args, tls, sock, supervisor.sums), args.event_loop)
        return 0

    # uvicorn's graceful shutdown waits for open connections; past this a worker is killed.
    supervisor = Supervisor(args.workers, worker, logger, name=SERVICE.name, stop_timeout=30.0)
    try:
        return supervisor.run()
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    argument_parser = parser()
    args = argument_parser.parse_args(argv)
    configure_logging(args.log_format)
    problems = validate(args)
    tls = tls_files(args, problems)
    for callee in REGISTRY.calls(SERVICE.name):
        try:
            normalize_target(getattr(args, f"{REGISTRY[callee].package}_addr"))
        except ValueError as error:
            problems.append(f"{REGISTRY[callee].address_flag()}: {error}")
    if problems:
        argument_parser.error("; ".join(problems))  # exits 2 before binding anything
    if args.workers > 1:
        return run_workers(args, tls)
    event_loop.run(serve(args, tls), args.event_loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
