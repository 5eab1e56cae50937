"""A tiny service on the shared runtime, for tests that need a real server process.

`test.v1.Echo/Echo` answers `echo:<request>`; a request `sleep:<seconds>` first sleeps that long,
to hold a call in flight, `block:<seconds>` blocks its thread that long (served by aio, the whole
process: a CPU-bound handler, calls arriving meanwhile wait in gRPC's backlog), and `pid` answers
`pid:<the serving process's id>`.
Takes every flag of libs/runtime/config.py (prefix ECHO), and `--serving` (either way a service may be
served: its handler is a coroutine for aio, a plain function for threads).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass

import grpc

from libs.runtime.config import ServerConfig, add_config_flags, parse_config
from libs.runtime.server import SERVING, GrpcServer, serve
from libs.runtime.settings import setting

SERVICE = "test.v1.Echo"


@dataclass(frozen=True)
class EchoConfig(ServerConfig):
    serving: str = setting("aio", "how calls are served", choices=tuple(SERVING))


def answer(request: bytes) -> bytes:
    if request.startswith(b"block:"):
        time.sleep(float(request.removeprefix(b"block:")))
    if request == b"pid":
        return f"pid:{os.getpid()}".encode()
    return b"echo:" + request


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request.startswith(b"sleep:"):
        await asyncio.sleep(float(request.removeprefix(b"sleep:")))
    return answer(request)


def echo_in_thread(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request.startswith(b"sleep:"):
        time.sleep(float(request.removeprefix(b"sleep:")))
    return answer(request)


def register(server: grpc.aio.Server, serving: str = "aio") -> None:
    behaviour = echo if SERVING[serving].asynchronous else echo_in_thread
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(behaviour)})
    server.add_generic_rpc_handlers((handler,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_flags(parser, EchoConfig, "ECHO", 0)
    config = parse_config(parser, EchoConfig, argv)
    return serve("echo", config, build, logging.getLogger("echo"))


def build(config: ServerConfig) -> GrpcServer:
    serving = config.serving if isinstance(config, EchoConfig) else "aio"
    server = GrpcServer(config, {"Echo": ["*"]}, service_name="echo", serving=serving)
    server.add_service(SERVICE, lambda target: register(target, serving))
    return server


if __name__ == "__main__":
    sys.exit(main())
