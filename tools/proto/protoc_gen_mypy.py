"""mypy-protobuf's message plugin as a Bazel tool: protoc runs it with a CodeGeneratorRequest on stdin."""

from mypy_protobuf import main  # type: ignore[import-untyped]  # ships no py.typed

if __name__ == "__main__":
    main.main()
