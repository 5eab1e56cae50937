"""Baseline for //bench: the least a grpc.aio server can do per Recommend call.

No interceptors, no validation, no catalog: every call gets the same prebuilt, pre-serialised
response. Our service is compared against this ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from books.recommendations.v1 import recommendations_pb2

SERVICE = "books.recommendations.v1.RecommendationService"
RESPONSE = recommendations_pb2.RecommendResponse(
    recommendations=[
        recommendations_pb2.BookRecommendation(
            id=1, title="Murder on the Orient Express", author="Agatha Christie", year=1934
        ),
        recommendations_pb2.BookRecommendation(id=2, title="The Big Sleep", author="Raymond Chandler", year=1939),
        recommendations_pb2.BookRecommendation(id=3, title="Rebecca", author="Daphne du Maurier", year=1938),
    ]
).SerializeToString()


async def recommend(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return RESPONSE


async def serve(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Recommend": grpc.unary_unary_rpc_method_handler(recommend)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args(argv).port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
