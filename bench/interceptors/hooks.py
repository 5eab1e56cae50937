"""Drives the middleware pipeline inside one live grpc.aio call, for pricing hooks under callgrind.

    bench/interceptors/hooks.sh VARIANT...    # handler | noop | full | -Name (full without it) | Name (only it)

A client makes one call; its handler then runs the wrapped Recommend-like handler (it returns at
once) `--calls` times on the real servicer context, inside functools.reduce so that callgrind's
--toggle-collect counts just that loop, and writes the access log before leaving it. The whole
server is priced by bench/interceptors/instructions.sh; this prices one hook at a time in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import sys
from typing import Any

import grpc

from libs.interceptors import server_middleware
from libs.interceptors.batched_lines import flush_all
from libs.interceptors.core import Middleware, Pipeline

METHOD = "/books.recommendations.v1.RecommendationService/Recommend"


def middleware(variant: str) -> list[Middleware] | None:
    # One batch of access lines for the whole loop, written inside it: a real run's batches hold ~200.
    stack = server_middleware("recommendations", access_log_interval=3600)
    if variant == "handler":
        return None
    if variant == "noop":
        return [Middleware()]
    if variant == "full":
        return stack
    if variant.startswith("-"):
        return [m for m in stack if type(m).__name__ != variant[1:]]
    return [m for m in stack if type(m).__name__ == variant]


async def handler(request: bytes, context: Any) -> bytes:
    return b"done"


def run_once(function: Any, context: Any) -> None:
    coroutine = function(b"", context)
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the handler suspended")


def price(variant: str, calls: int, context: Any) -> None:
    plain = grpc.unary_unary_rpc_method_handler(handler)
    stack = middleware(variant)
    wrapped = plain if stack is None else Pipeline(stack).wrap_async(METHOD, plain)
    for _ in range(300):  # warm-up, outside the counted loop
        run_once(wrapped.unary_unary, context)
    flush_all()

    def loop() -> None:
        for _ in range(calls):
            run_once(wrapped.unary_unary, context)
        flush_all()

    functools.reduce(lambda _, __: loop(), range(1), None)  # what callgrind counts


async def serve_one_call(variant: str, calls: int) -> None:
    async def measure(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        price(variant, calls, context)
        return b""

    server = grpc.aio.server()
    service, method = METHOD.strip("/").split("/")
    rpc = grpc.unary_unary_rpc_method_handler(measure)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: rpc}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)(
            b"", timeout=3600
        )  # metadata: gRPC's user-agent, as from h2load
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    with open(os.devnull, "w") as sink:  # access lines are formatted and written, as by a server
        logging.basicConfig(level=logging.INFO, stream=sink, force=True)
        asyncio.run(serve_one_call(args.variant, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
