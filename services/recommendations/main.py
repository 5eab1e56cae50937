"""Recommendations gRPC server: `bazel run //services/recommendations -- --port 50051`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

import grpc

from books.recommendations.v1 import recommendations_pb2_grpc
from libs.interceptors import server_interceptors
from services.recommendations.catalog import DEFAULT_CATALOG, Catalog, CatalogError
from services.recommendations.servicer import RecommendationServicer, category_names

logger = logging.getLogger("recommendations")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--host",
        default=os.environ.get("RECOMMENDATIONS_HOST", "[::]"),
        help="address to listen on (env RECOMMENDATIONS_HOST; default: all interfaces)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("RECOMMENDATIONS_PORT", "50051")),
        help="port to listen on (env RECOMMENDATIONS_PORT; default: 50051)",
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        default=Path(os.environ.get("RECOMMENDATIONS_CATALOG", DEFAULT_CATALOG)),
        help="books CSV: id,category,title,author,year (env RECOMMENDATIONS_CATALOG; default: the bundled catalog)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=float(os.environ.get("RECOMMENDATIONS_SHUTDOWN_GRACE", "5")),
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT (env RECOMMENDATIONS_SHUTDOWN_GRACE; default: 5)",
    )
    return parser.parse_args(argv)


async def serve(servicer: RecommendationServicer, address: str, shutdown_grace: float) -> int:
    """Serves until SIGTERM or SIGINT, then lets in-flight calls finish within `shutdown_grace`."""
    server = grpc.aio.server(interceptors=server_interceptors(logger))
    recommendations_pb2_grpc.add_RecommendationServiceServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:  # grpc's way of saying the address cannot be bound
        logger.error("cannot listen on %s: %s", address, error)
        return 1
    await server.start()
    logger.info("serving on %s (port %d)", address, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logger.info("shutting down, grace %.1fs", shutdown_grace)
    await server.stop(shutdown_grace)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not 0 <= args.port <= 65535:
        logger.error("--port must be between 0 and 65535, got %d", args.port)
        return 2
    try:
        catalog = Catalog.from_csv(args.catalog, category_names())
    except (OSError, CatalogError) as error:
        logger.error("cannot load catalog: %s", error)
        return 2
    logger.info("loaded %d books from %s", catalog.count(), args.catalog)
    return asyncio.run(serve(RecommendationServicer(catalog), f"{args.host}:{args.port}", args.shutdown_grace))


if __name__ == "__main__":
    raise SystemExit(main())
