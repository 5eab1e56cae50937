"""A sample request made from a descriptor alone is a valid message with every field set."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, json_format

from libs.runtime.reflection_client import _sample


def test_a_sample_sets_every_kind_of_field_and_parses_as_its_message() -> None:
    sample = _sample(descriptor_pb2.FieldDescriptorProto.DESCRIPTOR, depth=3)
    parsed = json_format.ParseDict(sample, descriptor_pb2.FieldDescriptorProto())
    assert parsed.name == "sample"  # string
    assert parsed.number == 1  # number
    assert parsed.label == descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL  # the enum's first value other than 0
    assert parsed.proto3_optional is True  # bool
    assert parsed.HasField("options")  # a message, recursively


def test_repeated_fields_get_one_element_and_recursion_stops() -> None:
    sample = _sample(descriptor_pb2.DescriptorProto.DESCRIPTOR, depth=1)
    parsed = json_format.ParseDict(sample, descriptor_pb2.DescriptorProto())
    assert [field.name for field in parsed.field] == ["sample"]
    assert len(parsed.reserved_name) == 1
    assert not parsed.field[0].HasField("options")  # depth 1: the nested message's messages are left out
