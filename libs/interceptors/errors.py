"""Rich gRPC errors: INVALID_ARGUMENT with `google.rpc.BadRequest` field violations, both ways.

Servers raise `BadRequest([FieldViolation("max_results", "must be between 1 and 20")...])` naming every
bad field at once; ExceptionToStatusInterceptor sends it as the status message plus the standard
`grpc-status-details-bin` trailer. Clients call `field_violations(error)` to get the list back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_interceptor.exceptions import InvalidArgument

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class BadRequest(InvalidArgument):
    """INVALID_ARGUMENT carrying a google.rpc.BadRequest with one violation per bad field."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(str(v) for v in self.violations))

    def status_proto(self) -> status_pb2.Status:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
        )
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=self.details, details=[detail])


def status_proto(error: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status in a failed call's trailers, if the server sent one."""
    trailers = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """The BadRequest field violations of a failed call (sync or aio); [] if it carries none."""
    status = status_proto(error)
    violations: list[FieldViolation] = []
    for detail in status.details if status else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
    return violations
