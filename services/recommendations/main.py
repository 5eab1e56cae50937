"""Recommendations gRPC server: `bazel run //services/recommendations -- --port 50051 [--insecure]`."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from books.recommendations.v1 import recommendations_pb2_grpc
from libs.interceptors.core import Middleware
from libs.interceptors.tracing import configure_tracing
from libs.runtime.config import (
    ConfigError,
    ServerConfig,
    add_callee_flags,
    add_flag,
    add_server_flags,
    server_config,
    user_path,
)
from libs.runtime.logs import configure_logging
from libs.runtime.server import GrpcServer, serve
from services.recommendations.catalog import DEFAULT_CATALOG, Catalog, CatalogError
from services.recommendations.servicer import SERVICE_NAME, RecommendationServicer, category_names
from services.registry import REGISTRY

SERVICE = REGISTRY["recommendations"]
logger = logging.getLogger("recommendations")


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=__doc__)
    add_server_flags(result, SERVICE.env_prefix, SERVICE.port)
    # The address of every service it calls (none today; services/services.bzl says who calls whom).
    add_callee_flags(result, REGISTRY.callee_ports(SERVICE.name))
    add_flag(
        result,
        SERVICE.env_prefix,
        "--catalog",
        str(DEFAULT_CATALOG),
        "books CSV: id,category,title,author,year",
        type=user_path,
    )
    return result


def build_server(config: ServerConfig, catalog: Catalog, middleware: Sequence[Middleware] | None = None) -> GrpcServer:
    """The server with its dependencies passed in: the catalog, and the runtime's executor.
    `middleware` replaces the standard stack (bench/interceptors compares against none)."""
    # Who may call which method under mTLS: services/services.bzl (replaced by --allow).
    server = GrpcServer(config, SERVICE.allow, logger, service_name=SERVICE.name, middleware=middleware)
    servicer = RecommendationServicer(catalog, server.executor)
    server.add_service(
        SERVICE_NAME,
        lambda grpc_server: recommendations_pb2_grpc.add_RecommendationServiceServicer_to_server(servicer, grpc_server),
    )
    return server


def main(argv: list[str] | None = None) -> int:
    argument_parser = parser()
    args = argument_parser.parse_args(argv)
    configure_logging(args.log_format)
    configure_tracing(SERVICE.name)
    try:
        config = server_config(args)
    except ConfigError as error:
        argument_parser.error(str(error))  # exits 2 with the usage line, before binding anything
    try:
        catalog = Catalog.from_csv(args.catalog, category_names())
    except (OSError, CatalogError) as error:
        logger.error("cannot load catalog: %s", error)
        return 2
    logger.info("loaded %d books from %s (pid %d)", catalog.count(), args.catalog, os.getpid())
    # Loaded before any fork: with --processes N the children share the catalog's pages.
    return serve(SERVICE.name, config, lambda each: build_server(each, catalog), logger)


if __name__ == "__main__":
    raise SystemExit(main())
