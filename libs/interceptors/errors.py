"""Rich gRPC errors: INVALID_ARGUMENT with `google.rpc.BadRequest` field violations, both ways.

Servers raise `BadRequest([FieldViolation("max_results", "must be between 1 and 20")...])` naming every
bad field at once; ExceptionToStatus sends it as the status message plus the standard
`grpc-status-details-bin` trailer (grpcio-status's `to_status`). Clients call `field_violations(error)` to
get the list back (grpcio-status's `from_call`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]  # .pyi, no py.typed
from grpc_interceptor.exceptions import InvalidArgument
from grpc_status import rpc_status

MAX_VIOLATIONS = 10
"""Violations sent per error; the rest are summed up in one more. A caller's client refuses trailers past its
metadata limit (gRPC's default is 8 KiB) with RESOURCE_EXHAUSTED, hiding the INVALID_ARGUMENT (bench/RESULTS.md,
"Figures behind the code"). With these caps a BadRequest's trailers stay under 4 KiB however many fields were
wrong: the details (base64) under 2.6 KiB, the message (percent-encoded) under MAX_MESSAGE_CHARS."""
MAX_FIELD_CHARS = 64
MAX_DESCRIPTION_CHARS = 120
MAX_MESSAGE_CHARS = 600


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BadRequest(InvalidArgument):
    """INVALID_ARGUMENT carrying a google.rpc.BadRequest with one violation per bad field: at most
    MAX_VIOLATIONS of them, each clipped, so that the error always reaches the caller whole."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        room = MAX_VIOLATIONS if len(violations) <= MAX_VIOLATIONS else MAX_VIOLATIONS - 1
        kept = [
            FieldViolation(_clip(v.field, MAX_FIELD_CHARS), _clip(v.description, MAX_DESCRIPTION_CHARS))
            for v in violations[:room]
        ]
        if len(violations) > MAX_VIOLATIONS:
            kept.append(FieldViolation("", f"and {len(violations) - len(kept)} more violations"))
        self.violations = kept
        super().__init__(_clip("; ".join(str(v) for v in self.violations), MAX_MESSAGE_CHARS))

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
    """The google.rpc.Status in a failed call's trailers (sync or aio), if the server sent one that agrees
    with the call's own code and message."""
    try:
        return rpc_status.from_call(error)  # type: ignore[arg-type]  # an RpcError of a call is a grpc.Call
    except ValueError:  # a status that contradicts the call's: trust the call
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
