"""Marketplace web server: `./bazelw run //services/marketplace -- --port 8080 --recommendations-addr HOST:PORT`."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import cast

import grpc
from grpc_health.v1 import health_pb2_grpc
from starlette.applications import Starlette

from books.recommendations.v1 import recommendations_pb2_grpc
from libs.http.grpc_json import Backend
from libs.interceptors.tracing import configure_tracing
from libs.runtime.channel import ReloadingChannel
from libs.runtime.config import add_config_flags, parse_config
from libs.runtime.web import HttpConfig, serve_http
from services.marketplace.app import RECOMMENDATIONS_SERVICE, create_app
from services.registry import REGISTRY

SERVICE = REGISTRY["marketplace"]
logger = logging.getLogger("marketplace")


def parser() -> argparse.ArgumentParser:
    """Every flag, each with its MARKETPLACE_* environment variable: a web service's, and how to reach every
    service this one calls (services/services.bzl): --recommendations-addr, -tls-name, -timeout."""
    result = argparse.ArgumentParser(description=__doc__)
    add_config_flags(result, HttpConfig, SERVICE.env_prefix, SERVICE.port, REGISTRY.callee_ports(SERVICE.name))
    return result


@contextlib.asynccontextmanager
async def make_app(config: HttpConfig) -> AsyncIterator[Starlette]:
    """The app with its channel to Recommendations, in the process that serves it."""
    configure_tracing(SERVICE.name)
    recommendations = config.callees["recommendations"]
    channel = ReloadingChannel(
        recommendations.address,
        tls=config.tls,
        tls_server_name=recommendations.tls_name,
        default_timeout=recommendations.timeout,
    )
    async with channel:
        logger.info("calling Recommendations at %s", recommendations.address)
        # A ReloadingChannel has the grpc.aio.Channel methods a stub calls, without being one (by type).
        as_channel = cast(grpc.aio.Channel, channel)
        stub = recommendations_pb2_grpc.RecommendationServiceStub(as_channel)
        backend = Backend.of(RECOMMENDATIONS_SERVICE, as_channel, recommendations.timeout)
        yield create_app(
            stub, recommendations.timeout, health_pb2_grpc.HealthStub(channel), {"recommendations": backend}
        )


def main(argv: list[str] | None = None) -> int:
    config = parse_config(parser(), HttpConfig, argv, REGISTRY.calls(SERVICE.name))
    return serve_http(SERVICE.name, config, make_app, logger)  # --processes N: libs/runtime/supervisor.py


if __name__ == "__main__":
    raise SystemExit(main())
