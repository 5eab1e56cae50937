"""The proto rules generate importable messages, type stubs and gRPC code across imports."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import timestamp_pb2

from testdata import shelf_event_pb2, shelf_event_pb2_grpc, shelf_pb2


def test_messages_import_well_known_types_and_our_protos() -> None:
    event = shelf_event_pb2.ShelfEvent(at=timestamp_pb2.Timestamp(seconds=1_700_000_000), shelf=shelf_pb2.SHELF_BACK)
    decoded = shelf_event_pb2.ShelfEvent.FromString(event.SerializeToString())
    assert decoded.at.seconds == 1_700_000_000
    assert decoded.shelf == shelf_pb2.SHELF_BACK
    dependencies = [dep.name for dep in shelf_event_pb2.DESCRIPTOR.dependencies]
    assert dependencies == ["testdata/shelf.proto", "google/protobuf/timestamp.proto"]


def test_grpc_code_is_generated() -> None:
    assert hasattr(shelf_event_pb2_grpc, "ShelfEventsStub")
    assert hasattr(shelf_event_pb2_grpc, "ShelfEventsServicer")
    assert hasattr(shelf_event_pb2_grpc, "add_ShelfEventsServicer_to_server")


def test_type_stubs_sit_beside_the_modules() -> None:
    for module, declared in ((shelf_event_pb2, "class ShelfEvent("), (shelf_pb2, "class Shelf(")):
        stub = Path(str(module.__file__)).with_suffix(".pyi")
        assert declared in stub.read_text(), stub


def test_grpc_type_stubs_cover_sync_and_aio() -> None:
    stub = Path(shelf_event_pb2_grpc.__file__).with_suffix(".pyi").read_text()
    assert "class ShelfEventsStub" in stub
    assert "class ShelfEventsServicer" in stub
    assert "_aio.Channel" in stub  # the stub accepts a grpc.aio channel
    assert "_aio.ServicerContext" in stub  # servicers type-check under grpc.aio too


def test_generated_code_is_from_the_protoc_of_the_runtime() -> None:
    """The message module says which protobuf release generated it; the runtime checks it at import."""
    source = Path(shelf_event_pb2.__file__).read_text()
    assert "ValidateProtobufRuntimeVersion" in source
