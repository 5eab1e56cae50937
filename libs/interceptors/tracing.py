"""Distributed tracing with OpenTelemetry, W3C `traceparent` in gRPC metadata.

The server middleware continues the caller's trace (or starts one) with a SERVER span named
`pkg.Service/Method` carrying the standard RPC attributes (rpc.system, rpc.service, rpc.method,
rpc.grpc.status_code); the client interceptors start a CLIENT span and inject `traceparent` into
the outgoing metadata. Without configuration the OpenTelemetry API is a no-op that still carries
the trace context across hops (so logs keep trace ids). `configure_tracing()` switches on the SDK
with an OTLP/HTTP exporter when the standard variables ask for it: OTEL_TRACES_EXPORTER=otlp or
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (plus OTEL_SERVICE_NAME, ...).
"""

from __future__ import annotations

import logging
import os

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from libs.interceptors.core import Call, Middleware

PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = DefaultGetter()
logger = logging.getLogger(__name__)


def trace_id_of(span: trace.Span) -> str:
    span_context = span.get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


def current_trace_id() -> str:
    return trace_id_of(trace.get_current_span())


def rpc_attributes(service: str, method: str) -> dict[str, str]:
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def end_span(span: trace.Span, code_name: str, code_value: int, exception: BaseException | None) -> None:
    span.set_attribute("rpc.grpc.status_code", code_value)
    if code_name != "OK":
        span.set_status(Status(StatusCode.ERROR, code_name))
    if exception is not None:
        span.record_exception(exception)
    span.end()


def _recording(provider: trace.TracerProvider | None) -> bool:
    """Whether spans would be recorded: false until an SDK provider is installed (configure_tracing)."""
    provider = provider or trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class Tracing(Middleware):
    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._recording = _recording(tracer_provider)
        self._recheck_at = 0.0

    def _records(self, now: float) -> bool:
        """Whether spans are recorded. An installed SDK provider stays; until there is one, look again at
        most once a second: the look reads os.environ, most of this middleware's cost per call."""
        if not self._recording and now >= self._recheck_at:
            self._recording = _recording(self._provider)
            self._recheck_at = now + 1.0
        return self._recording

    def begin(self, call: Call) -> tuple[trace.Span, object] | None:
        """The call's SERVER span and the token that detaches it from the context (None: no span)."""
        traced = "traceparent" in call.metadata
        if not traced and not self._records(call.started):
            return None  # nothing to continue and nothing to record: skip the no-op span's cost
        parent = PROPAGATOR.extract(call.metadata, getter=_GETTER) if traced else None
        rpc = call.rpc
        span = self._tracer.start_span(
            f"{rpc.service}/{rpc.name}", context=parent, kind=SpanKind.SERVER,
            attributes=rpc_attributes(rpc.service, rpc.name),
        )  # fmt: skip
        call.trace_id = trace_id_of(span)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def end(self, call: Call, state: tuple[trace.Span, object] | None) -> None:
        if state is None:
            return
        span, token = state
        end_span(span, call.code_name, call.code.value[0], call.exception if call.unexpected else None)
        otel_context.detach(token)  # type: ignore[arg-type]


def configure_tracing(service_name: str) -> bool:
    """Installs the OpenTelemetry SDK with an OTLP/HTTP exporter if the environment asks; returns
    whether it did. Otherwise tracing stays a no-op that only propagates context."""
    wanted = os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "otlp" or any(
        os.environ.get(name) for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if not wanted or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    logger.info("tracing on: OTLP/HTTP export of %s spans", service_name)
    return True
