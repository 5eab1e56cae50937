"""The gateway's server, JSON over HTTP for the gRPC APIs of the list (app.py):
`./bazelw run //services/gateway -- --port 8090 [--insecure]`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from typing import cast

import grpc
from starlette.applications import Starlette

from libs.http.grpc_json import Backend
from libs.interceptors.tracing import configure_tracing
from libs.runtime.channel import ReloadingChannel
from libs.runtime.config import add_config_flags, parse_config
from libs.runtime.web import HttpConfig, serve_http
from services.gateway.app import create_app
from services.registry import REGISTRY

SERVICE = REGISTRY["gateway"]
logger = logging.getLogger("gateway")


def parser() -> argparse.ArgumentParser:
    """Every flag, each with its GATEWAY_* environment variable: a web service's, and how to reach every
    service this one calls (services/services.bzl). Settings of its own: a subclass of HttpConfig with
    fields declared by libs/runtime/settings.py's `setting`, read by parse_config like the rest."""
    result = argparse.ArgumentParser(description=__doc__)
    add_config_flags(result, HttpConfig, SERVICE.env_prefix, SERVICE.port, REGISTRY.callee_ports(SERVICE.name))
    return result


@contextlib.asynccontextmanager
async def make_app(config: HttpConfig) -> AsyncIterator[Starlette]:
    """The app with a channel to every service it calls, made in the process that serves it."""
    configure_tracing(SERVICE.name)
    async with contextlib.AsyncExitStack() as channels:
        backends = {}
        for name, callee in config.callees.items():
            importlib.import_module(REGISTRY[name].proto_module)  # its descriptors, for unary_methods
            channel = ReloadingChannel(
                callee.address, tls=config.tls, tls_server_name=callee.tls_name, default_timeout=callee.timeout
            )
            await channels.enter_async_context(channel)
            # A ReloadingChannel has the grpc.aio.Channel methods a call needs, without being one (by type).
            backend = Backend.of(REGISTRY[name].grpc_service, cast(grpc.aio.Channel, channel), callee.timeout)
            backends[name] = backend
            logger.info("calling %s at %s", name, callee.address)
        yield create_app(backends)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(parser(), HttpConfig, argv, REGISTRY.calls(SERVICE.name))
    return serve_http(SERVICE.name, config, make_app, logger)  # --processes N: libs/runtime/supervisor.py


if __name__ == "__main__":
    raise SystemExit(main())
