"""A tiny service on the shared runtime, for tests that need a real server process.

`test.v1.Echo/Echo` answers `echo:<request>`; a request `sleep:<seconds>` first sleeps that long,
to hold a call in flight, `block:<seconds>` blocks the whole process that long (a CPU-bound handler:
calls arriving meanwhile wait in gRPC's backlog), and `pid` answers `pid:<the serving process's id>`.
Takes every flag of libs/runtime/config.py (prefix ECHO).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

import grpc

from libs.runtime.config import ServerConfig, add_config_flags, parse_config
from libs.runtime.server import GrpcServer, serve

SERVICE = "test.v1.Echo"


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request.startswith(b"sleep:"):
        await asyncio.sleep(float(request.removeprefix(b"sleep:")))
    if request.startswith(b"block:"):
        time.sleep(float(request.removeprefix(b"block:")))
    if request == b"pid":
        return f"pid:{os.getpid()}".encode()
    return b"echo:" + request


def register(server: grpc.aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_flags(parser, ServerConfig, "ECHO", 0)
    config = parse_config(parser, ServerConfig, argv)
    return serve("echo", config, build, logging.getLogger("echo"))


def build(config: ServerConfig) -> GrpcServer:
    server = GrpcServer(config, {"Echo": ["*"]}, service_name="echo")
    server.add_service(SERVICE, register)
    return server


if __name__ == "__main__":
    sys.exit(main())
