"""Baseline for //bench: the tutorial's Recommendations server, faithfully.

A sync `grpc.server` with ten threads and grpc-interceptor's ExceptionToStatusInterceptor, nine
books in a dict (three per category), `random.sample`, NOT_FOUND for an unknown category. With
`--processes N`, in the shape of grpc's examples/python/multiprocessing: the port reserved with
SO_REUSEPORT, then N forked processes, each with its own server on that port (`grpc.so_reuseport`).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import sys
from concurrent import futures

import grpc
from grpc_interceptor import ExceptionToStatusInterceptor
from grpc_interceptor.exceptions import NotFound

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc

Book = recommendations_pb2.BookRecommendation
BOOKS_BY_CATEGORY = {
    catalog_pb2.MYSTERY: [
        Book(id=1, title="The Maltese Falcon"),
        Book(id=2, title="Murder on the Orient Express"),
        Book(id=3, title="The Hound of the Baskervilles"),
    ],
    catalog_pb2.SCIENCE_FICTION: [
        Book(id=4, title="The Hitchhiker's Guide to the Galaxy"),
        Book(id=5, title="Ender's Game"),
        Book(id=6, title="The Dune Chronicles"),
    ],
    catalog_pb2.SELF_HELP: [
        Book(id=7, title="The 7 Habits of Highly Effective People"),
        Book(id=8, title="How to Win Friends and Influence People"),
        Book(id=9, title="Man's Search for Meaning"),
    ],
}


class RecommendationService(recommendations_pb2_grpc.RecommendationServiceServicer):
    def Recommend(self, request, context):
        if request.category not in BOOKS_BY_CATEGORY:
            raise NotFound("Category not found")
        books = BOOKS_BY_CATEGORY[request.category]
        return recommendations_pb2.RecommendResponse(
            recommendations=random.sample(books, min(request.max_results, len(books)))
        )


def serve(port: int) -> None:
    options = [("grpc.so_reuseport", 1)]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=10), interceptors=[ExceptionToStatusInterceptor()], options=options
    )
    # The tutorial's server answers Recommend only (its API had no RecommendEach), as the baseline should.
    servicer = RecommendationService()  # type: ignore[abstract]
    recommendations_pb2_grpc.add_RecommendationServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1, help="forked processes sharing the port (default 1)")
    args = parser.parse_args(argv)
    if args.processes == 1:
        serve(args.port)
        return 0
    # Held until the children exit, so that no other program takes the port in between (grpc's example).
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind(("127.0.0.1", args.port))
    children = []
    for _ in range(args.processes):
        pid = os.fork()  # before any gRPC object exists in this process
        if pid == 0:
            serve(args.port)
            os._exit(0)
        children.append(pid)

    def stop_children(*_: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_children)
    for child in children:
        os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
