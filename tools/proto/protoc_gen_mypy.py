"""mypy-protobuf's message plugin as a Bazel tool: protoc runs it with a CodeGeneratorRequest on stdin."""

from mypy_protobuf import main

if __name__ == "__main__":
    main.main()
