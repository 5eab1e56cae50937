"""Baselines for //bench: the least a grpc.aio server can do per Recommend call.

No interceptors, no validation, no catalog. By default every call gets the same prebuilt,
pre-serialised response (the transport's ceiling); with `--serialise` each call parses the request
and serialises a response message built for it, as any real service must (the ceiling our service is
held to). `--uvloop` runs it on uvloop, as our servers run (libs/runtime/event_loop.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
import uvloop

from books.recommendations.v1 import recommendations_pb2

SERVICE = "books.recommendations.v1.RecommendationService"
BOOKS = [
    recommendations_pb2.BookRecommendation(
        id=1, title="Murder on the Orient Express", author="Agatha Christie", year=1934
    ),
    recommendations_pb2.BookRecommendation(id=2, title="The Big Sleep", author="Raymond Chandler", year=1939),
    recommendations_pb2.BookRecommendation(id=3, title="Rebecca", author="Daphne du Maurier", year=1938),
]
RESPONSE = recommendations_pb2.RecommendResponse(recommendations=BOOKS).SerializeToString()


async def prebuilt(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return RESPONSE


async def serialised(
    request: recommendations_pb2.RecommendRequest, context: grpc.aio.ServicerContext
) -> recommendations_pb2.RecommendResponse:
    return recommendations_pb2.RecommendResponse(recommendations=BOOKS[: request.max_results])


def method_handler(serialise: bool) -> grpc.RpcMethodHandler:
    if not serialise:
        return grpc.unary_unary_rpc_method_handler(prebuilt)
    return grpc.unary_unary_rpc_method_handler(
        serialised,
        request_deserializer=recommendations_pb2.RecommendRequest.FromString,
        response_serializer=recommendations_pb2.RecommendResponse.SerializeToString,
    )


async def serve(port: int, serialise: bool) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Recommend": method_handler(serialise)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--serialise", action="store_true", help="parse each request, serialise each response")
    parser.add_argument("--uvloop", action="store_true", help="on uvloop instead of asyncio's own event loop")
    args = parser.parse_args(argv)
    (uvloop.run if args.uvloop else asyncio.run)(serve(args.port, args.serialise))
    return 0


if __name__ == "__main__":
    sys.exit(main())
