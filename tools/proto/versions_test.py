"""The generated code and the runtimes it runs on come from releases that work together.

Generated message modules name the protobuf release of the protoc that wrote them (grpcio-tools'), and
refuse, at import, a runtime older than that or of another major version; generated gRPC modules name the
grpcio-tools release and refuse an older grpcio. When one of grpcio, grpcio-tools and protobuf moves
alone in the lock, every test that imports generated code breaks with a traceback deep in an import;
this test says what is wrong and which command fixes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google import protobuf

from testdata import shelf_event_pb2, shelf_event_pb2_grpc

FIX = (
    "re-lock them together: ./bazelw run //:requirements.update -- "
    "--upgrade-package grpcio --upgrade-package grpcio-tools --upgrade-package protobuf"
)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def problems(protobuf_gencode: str, protobuf_runtime: str, grpc_gencode: str, grpc_runtime: str) -> list[str]:
    found = []
    if version(protobuf_gencode)[0] != version(protobuf_runtime)[0] or version(protobuf_gencode) > version(
        protobuf_runtime
    ):
        found.append(f"generated messages are protobuf {protobuf_gencode}, the runtime is protobuf {protobuf_runtime}")
    if version(grpc_gencode) > version(grpc_runtime):
        found.append(f"generated gRPC code is grpcio-tools {grpc_gencode}, the runtime is grpcio {grpc_runtime}")
    return found


def generated_protobuf_version() -> str:
    header = Path(shelf_event_pb2.__file__).read_text()
    found = re.search(r"^# Protobuf Python Version: (\S+)$", header, re.M)
    assert found, "the generated module does not say which protobuf release generated it"
    return found.group(1)


def test_generated_code_runs_on_the_runtimes_of_the_lock() -> None:
    found = problems(
        generated_protobuf_version(),
        protobuf.__version__,
        shelf_event_pb2_grpc.GRPC_GENERATED_VERSION,
        grpc.__version__,
    )
    assert not found, "; ".join(found) + f". To fix, {FIX}"


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        (("7.35.1", "7.36.2", "1.85.1", "1.85.3"), []),
        (
            ("7.36.0", "7.35.1", "1.85.1", "1.85.3"),
            ["generated messages are protobuf 7.36.0, the runtime is protobuf 7.35.1"],
        ),
        (
            ("6.31.1", "7.36.2", "1.85.1", "1.85.3"),
            ["generated messages are protobuf 6.31.1, the runtime is protobuf 7.36.2"],
        ),
        (
            ("7.35.1", "7.36.2", "1.86.0", "1.85.3"),
            ["generated gRPC code is grpcio-tools 1.86.0, the runtime is grpcio 1.85.3"],
        ),
    ],
)
def test_the_check_catches_a_release_that_moved_alone(versions: tuple[str, ...], expected: list[str]) -> None:
    assert problems(*versions) == expected
