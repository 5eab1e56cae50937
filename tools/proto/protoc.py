"""protoc from grpcio-tools: the compiler Bazel's proto_library runs (--proto_compiler in .bazelrc) and the
Python rules of defs.bzl run, with its built-in Python and gRPC Python generators.

Why grpcio-tools' and not Debian's protobuf-compiler: it is the protoc of the protobuf release the lock's
runtime belongs to (generated code checks that it is not newer than the runtime), it comes hash-pinned
through the lock like every other Python package, and it carries the gRPC generator, which Debian ships
separately as a C++ plugin. Takes protoc's own arguments; exits with protoc's status.
"""

from __future__ import annotations

import sys

from grpc_tools import protoc

if __name__ == "__main__":
    sys.exit(protoc.main(["protoc", *sys.argv[1:]]))
