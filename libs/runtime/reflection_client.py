"""A client that needs no generated code: it learns a server's API through gRPC reflection, like grpcurl.

    with grpc.secure_channel(target, credentials) as channel:
        client = ReflectionClient(channel)
        client.services()                                 # ['books.order_history.v1.OrderHistoryService', ...]
        client.call("books.order_history.v1.OrderHistoryService", "CountWords",
                    {"text": "a rose is a rose", "top": 2})   # a dict, in proto3 JSON form

Request fields are given as proto3 JSON (json_format); responses come back the same way, a list of them
for a server-streaming method. Client-streaming and bidi methods take a list of requests. Tests and
tools use it to call any service of the repository, including one generated a minute ago.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc
from google.protobuf import descriptor, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

Json = dict[str, Any]


class ReflectionClient:
    """Calls any method of a server that serves reflection (every server on libs/runtime does)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._database = ProtoReflectionDescriptorDatabase(channel)
        self._pool = descriptor_pool.DescriptorPool(self._database)

    def services(self) -> list[str]:
        return list(self._database.get_services())

    def methods(self, service: str) -> list[str]:
        """The names of `service`'s methods, in the order of its proto."""
        return [method.name for method in self._pool.FindServiceByName(service).methods]

    def sample_request(self, service: str, method: str) -> Json:
        """A request a well-behaved caller might send, made from the descriptor alone: every field set, a
        string to "sample", a number to 1, an enum to its first value other than 0, a repeated field
        to one element, a message recursively (three levels deep at most)."""
        return _sample(self.method(service, method).input_type, depth=3)

    def method(self, service: str, method: str) -> descriptor.MethodDescriptor:
        """The descriptor of `service`/`method`; KeyError if the server does not offer it."""
        return self._pool.FindServiceByName(service).methods_by_name[method]

    def call(
        self, service: str, method: str, request: Json | Sequence[Json], timeout: float = 5.0, **kwargs: Any
    ) -> Json | list[Json]:
        """Calls `service`/`method` with `request` (a list of them for a client-streaming method); returns the
        response as JSON (a list for a server-streaming one). Failures raise grpc.RpcError as usual."""
        found = self.method(service, method)
        request_class = message_factory.GetMessageClass(found.input_type)
        response_class = message_factory.GetMessageClass(found.output_type)
        # The four kinds of multicallable differ in type; each is called the same way (request first).
        kinds: dict[tuple[bool, bool], Callable[..., Callable[..., Any]]] = {
            (False, False): self._channel.unary_unary,
            (False, True): self._channel.unary_stream,
            (True, False): self._channel.stream_unary,
            (True, True): self._channel.stream_stream,
        }
        stub = kinds[(found.client_streaming, found.server_streaming)](
            f"/{service}/{method}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        # As documented: a list of requests for a client-streaming method, else one.
        if found.client_streaming:
            requests = [json_format.ParseDict(fields, request_class()) for fields in cast(Sequence[Json], request)]
            outcome = stub(iter(requests), timeout=timeout, **kwargs)
        else:
            outcome = stub(json_format.ParseDict(cast(Json, request), request_class()), timeout=timeout, **kwargs)
        if found.server_streaming:
            return [json_format.MessageToDict(response) for response in outcome]
        return json_format.MessageToDict(outcome)


def _sample(message: descriptor.Descriptor, depth: int) -> Json:
    fields: Json = {}
    for field in message.fields:
        if field.containing_oneof is not None and any(
            other.json_name in fields for other in field.containing_oneof.fields
        ):
            continue  # one member of a oneof
        if field.message_type is not None:
            if depth == 0 or field.message_type.GetOptions().map_entry:
                continue
            value: Any = _sample(field.message_type, depth - 1)
        elif field.enum_type is not None:
            values = field.enum_type.values
            value = next((each.name for each in values if each.number != 0), values[0].name)
        elif field.type == descriptor.FieldDescriptor.TYPE_STRING:
            value = "sample"
        elif field.type == descriptor.FieldDescriptor.TYPE_BYTES:
            value = "c2FtcGxl"  # base64 of "sample"
        elif field.type == descriptor.FieldDescriptor.TYPE_BOOL:
            value = True
        else:
            value = 1
        fields[field.json_name] = [value] if field.is_repeated else value
    return fields
