"""A bare grpc.aio server for the reproduction: one unary method, gRPC's channel options from argv.

    python server.py PORT '[["grpc.http2.settings_timeout", 2000]]'

SIGUSR1 calls glibc's malloc_trim(0), to tell memory glibc keeps from memory gRPC still holds.
"""

import asyncio
import ctypes
import json
import signal
import sys

import grpc


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def main() -> None:
    port = int(sys.argv[1])
    options = [tuple(option) for option in json.loads(sys.argv[2])] if len(sys.argv) > 2 else []
    server = grpc.aio.server(options=options)
    handler = grpc.method_handlers_generic_handler("test.v1.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    libc = ctypes.CDLL(None)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: libc.malloc_trim(0))
    print("ready", flush=True)
    await server.wait_for_termination()


asyncio.run(main())
