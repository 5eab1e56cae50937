"""mypy-protobuf's gRPC plugin as a Bazel tool: typed stubs and servicers for grpc and grpc.aio."""

from mypy_protobuf import main  # type: ignore[import-untyped]  # ships no py.typed

if __name__ == "__main__":
    main.grpc()
