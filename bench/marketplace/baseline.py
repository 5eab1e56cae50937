"""The tutorial's marketplace, for bench/marketplace to measure against: Flask's development server,
one blocking gRPC call per page, any gRPC error an HTTP 500. Deliberately not production code."""

from __future__ import annotations

import argparse
import sys

import grpc
from flask import Flask, render_template_string

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc

PAGE = """<!doctype html>
<html><head><title>Online Books For You</title></head>
<body><h1>Mystery books you may like</h1>
<ul>{% for book in books %}<li>{{ book.title }}</li>{% endfor %}</ul></body></html>"""


def create_app(stub: recommendations_pb2_grpc.RecommendationServiceStub) -> Flask:
    app = Flask(__name__)

    @app.route("/")
    def render_homepage() -> str:
        request = recommendations_pb2.RecommendRequest(user_id=1, category=catalog_pb2.MYSTERY, max_results=3)
        response = stub.Recommend(request)
        return render_template_string(PAGE, books=response.recommendations)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--recommendations-addr", required=True)
    args = parser.parse_args(argv)
    stub = recommendations_pb2_grpc.RecommendationServiceStub(grpc.insecure_channel(args.recommendations_addr))
    create_app(stub).run(host="127.0.0.1", port=args.port)  # `flask run`: the development server
    return 0


if __name__ == "__main__":
    sys.exit(main())
