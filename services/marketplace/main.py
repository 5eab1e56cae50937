"""Marketplace web server: `bazel run //services/marketplace -- --port 8080 --recommendations-addr HOST:PORT`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from books.recommendations.v1 import recommendations_pb2_grpc
from libs.interceptors.tracing import configure_tracing
from libs.runtime.channel import create_channel, normalize_target
from libs.runtime.config import add_flag, add_log_flags, add_tls_flags, tls_files
from libs.runtime.logs import configure_logging
from libs.runtime.tls import TlsFiles
from services.marketplace.app import create_app

ENV_PREFIX = "MARKETPLACE"

logger = logging.getLogger("marketplace")


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=__doc__)
    add_flag(result, ENV_PREFIX, "--host", "0.0.0.0", "address to listen on")
    add_flag(result, ENV_PREFIX, "--port", 8080, "HTTP port", type=int)
    add_tls_flags(result, ENV_PREFIX)
    add_log_flags(result, ENV_PREFIX)
    # The Recommendations settings keep their own names: RECOMMENDATIONS_ADDR is what callers expect.
    add_flag(
        result,
        "RECOMMENDATIONS",
        "--recommendations-addr",
        "localhost:50051",
        "gRPC target: host:port, dns:///name:port (balanced over every address) or ip:port,ip:port",
    )
    add_flag(
        result,
        "RECOMMENDATIONS",
        "--recommendations-timeout",
        0.3,
        "seconds each page may spend on Recommendations",
        type=float,
    )
    add_flag(
        result,
        "RECOMMENDATIONS",
        "--recommendations-tls-name",
        "recommendations",
        "name the Recommendations certificate must carry",
    )
    return result


def validate(args: argparse.Namespace) -> list[str]:
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be between 0 and 65535, got {args.port}")
    if args.recommendations_timeout <= 0:
        problems.append(f"--recommendations-timeout must be positive, got {args.recommendations_timeout}")
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


async def serve(args: argparse.Namespace, tls: TlsFiles | None) -> None:
    """Serves HTTP until SIGTERM/SIGINT (uvicorn handles both), then closes the gRPC channel."""
    channel = create_channel(
        args.recommendations_addr,
        tls=tls,
        tls_server_name=args.recommendations_tls_name,
        default_timeout=args.recommendations_timeout,
    )
    async with channel:
        app = create_app(recommendations_pb2_grpc.RecommendationServiceStub(channel), args.recommendations_timeout)
        config = uvicorn.Config(app, host=args.host, port=args.port, http="httptools", lifespan="off", log_config=None)
        logger.info("calling Recommendations at %s", args.recommendations_addr)
        await Server(config).serve()


def main(argv: list[str] | None = None) -> int:
    argument_parser = parser()
    args = argument_parser.parse_args(argv)
    configure_logging(args.log_format)
    configure_tracing("marketplace")
    problems = validate(args)
    tls = tls_files(args, problems)
    try:
        normalize_target(args.recommendations_addr)
    except ValueError as error:
        problems.append(f"--recommendations-addr: {error}")
    if problems:
        argument_parser.error("; ".join(problems))  # exits 2 before binding anything
    asyncio.run(serve(args, tls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
