"""Recommendations gRPC server: `bazel run //services/recommendations -- --port 50051 [--insecure]`."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from books.recommendations.v1 import recommendations_pb2_grpc
from libs.interceptors.core import Middleware
from libs.interceptors.tracing import configure_tracing
from libs.runtime.config import ServerConfig, add_config_flags, parse_config, user_path
from libs.runtime.server import GrpcServer, serve
from libs.runtime.settings import setting
from services.recommendations.catalog import DEFAULT_CATALOG, Catalog, CatalogError
from services.recommendations.servicer import SERVICE_NAME, RecommendationServicer, category_names
from services.registry import REGISTRY

SERVICE = REGISTRY["recommendations"]
logger = logging.getLogger("recommendations")


@dataclass(frozen=True)
class RecommendationsConfig(ServerConfig):
    """A gRPC server's settings and this service's own."""

    catalog: Path = setting(DEFAULT_CATALOG, "books CSV: id,category,title,author,year", parse=user_path)


def parser() -> argparse.ArgumentParser:
    """Every flag, each with its RECOMMENDATIONS_* environment variable, and the address of every service
    it calls (none today; services/services.bzl says who calls whom)."""
    result = argparse.ArgumentParser(description=__doc__)
    add_config_flags(
        result, RecommendationsConfig, SERVICE.env_prefix, SERVICE.port, REGISTRY.callee_ports(SERVICE.name)
    )
    return result


def build_server(config: ServerConfig, catalog: Catalog, middleware: Sequence[Middleware] | None = None) -> GrpcServer:
    """The server with its dependencies passed in: the catalog, and the runtime's executor.
    `middleware` replaces the standard stack (bench/interceptors compares against none)."""
    # Who may call which method under mTLS: services/services.bzl (replaced by --allow).
    server = GrpcServer(
        config, SERVICE.allow, logger, service_name=SERVICE.name, middleware=middleware, serving=SERVICE.serving
    )
    servicer = RecommendationServicer(catalog, server.executor)
    server.add_service(
        SERVICE_NAME,
        lambda grpc_server: recommendations_pb2_grpc.add_RecommendationServiceServicer_to_server(servicer, grpc_server),
    )
    return server


def main(argv: list[str] | None = None) -> int:
    config = parse_config(parser(), RecommendationsConfig, argv, REGISTRY.calls(SERVICE.name))
    configure_tracing(SERVICE.name)
    try:
        catalog = Catalog.from_csv(config.catalog, category_names())
    except (OSError, CatalogError) as error:
        logger.error("cannot load catalog: %s", error)
        return 2
    logger.info("loaded %d books from %s (pid %d)", catalog.count(), config.catalog, os.getpid())
    # Loaded before any fork: with --processes N the children share the catalog's pages.
    return serve(SERVICE.name, config, lambda each: build_server(each, catalog), logger)


if __name__ == "__main__":
    raise SystemExit(main())
