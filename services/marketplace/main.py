"""Marketplace web server: `bazel run //services/marketplace -- --port 8080 --recommendations-addr HOST:PORT`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator

import grpc
import uvicorn

from books.recommendations.v1 import recommendations_pb2_grpc
from services.marketplace.app import create_app

logger = logging.getLogger("marketplace")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--host",
        default=os.environ.get("MARKETPLACE_HOST", "0.0.0.0"),
        help="address to listen on (env MARKETPLACE_HOST; default: all interfaces)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("MARKETPLACE_PORT", "8080")),
        help="port to listen on (env MARKETPLACE_PORT; default: 8080)",
    )
    parser.add_argument(
        "--recommendations-addr",
        default=os.environ.get("RECOMMENDATIONS_ADDR", "localhost:50051"),
        help="gRPC target of the Recommendations service (env RECOMMENDATIONS_ADDR; default: localhost:50051)",
    )
    parser.add_argument(
        "--recommendations-timeout",
        type=float,
        default=float(os.environ.get("RECOMMENDATIONS_TIMEOUT", "0.3")),
        help="deadline in seconds of each Recommendations call (env RECOMMENDATIONS_TIMEOUT; default: 0.3)",
    )
    return parser.parse_args(argv)


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


async def serve(args: argparse.Namespace) -> None:
    """Serves HTTP until SIGTERM/SIGINT (uvicorn handles both), then closes the gRPC channel."""
    async with grpc.aio.insecure_channel(args.recommendations_addr) as channel:
        app = create_app(recommendations_pb2_grpc.RecommendationServiceStub(channel), args.recommendations_timeout)
        config = uvicorn.Config(app, host=args.host, port=args.port, http="httptools", lifespan="off", log_config=None)
        logger.info("calling Recommendations at %s", args.recommendations_addr)
        await Server(config).serve()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not 0 <= args.port <= 65535:
        logger.error("--port must be between 0 and 65535, got %d", args.port)
        return 2
    if args.recommendations_timeout <= 0:
        logger.error("--recommendations-timeout must be positive, got %s", args.recommendations_timeout)
        return 2
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
