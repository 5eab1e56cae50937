"""Writes the gateway's OpenAPI 3.1 document: `openapi.py DESCRIPTOR_SET OUTPUT` (the `:openapi` target).

The routes are the ones the gateway serves (every HTTP binding of every service it calls, from their
generated descriptors); the descriptions are the protos' comments, from the descriptor set Bazel builds
of the services' APIs (//proto:api, with source info).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from libs.http.openapi import comments, document
from libs.http.transcoding import HttpRoute, routes_of
from services.registry import REGISTRY

NAME = "gateway"


def gateway_routes() -> list[HttpRoute]:
    """The routes the gateway serves: those of every service it calls."""
    routes = []
    for callee in REGISTRY.calls(NAME):
        importlib.import_module(REGISTRY[callee].proto_module)
        routes += routes_of(callee, REGISTRY[callee].grpc_service)
    return routes


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(f"usage: openapi.py DESCRIPTOR_SET OUTPUT\n\n{__doc__}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(Path(argv[0]).read_bytes())
    title = f"{REGISTRY[NAME].description} (services/services.bzl)"
    spec = document(gateway_routes(), comments(descriptor_set), title=title)
    Path(argv[1]).write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
