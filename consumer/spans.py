"""Spans of input batches and records: trace context in from a record, onto its notification.

Imported only when tracing is on (consumer.tracing decides); everything here may use the SDK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace import Tracer as OtelTracer
from opentelemetry.trace.propagation import get_current_span, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from consumer import __version__
from consumer.tracing import Outcome

__all__ = ["BatchTrace", "RecordSpan", "TracedRecord", "Tracer"]

# OpenTelemetry semantic conventions for messaging (Kafka), as of semconv 1.27+: the
# registry names, not the deprecated messaging.kafka.consumer.group / .message.offset.
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_DESTINATION_PARTITION_ID: Final = "messaging.destination.partition.id"
MESSAGING_KAFKA_OFFSET: Final = "messaging.kafka.offset"
MESSAGING_KAFKA_MESSAGE_TOMBSTONE: Final = "messaging.kafka.message.tombstone"
MESSAGING_CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_BATCH_MESSAGE_COUNT: Final = "messaging.batch.message_count"
MESSAGING_CLIENT_ID: Final = "messaging.client.id"
ERROR_TYPE: Final = "error.type"
# Ours, under the service's own prefix as the conventions ask of custom attributes.
OUTCOME: Final = "loyalty_consumer.outcome"
REASON_CLASS: Final = "loyalty_consumer.dead_letter.reason_class"
TRANSACTION_ID: Final = "loyalty_consumer.transaction_id"

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_NO_PARENT: Final = Context()  # not the ambient context: a record without one starts a trace
_DEFAULT_SERVICE_NAME: Final = "loyalty-consumer"


class TracedRecord(Protocol):
    """What a span reads of an input record (aiokafka's ConsumerRecord has it all)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def _resource() -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES as the SDK reads them; ours where unset."""
    # merge: the argument's attributes win.
    resource = Resource({SERVICE_VERSION: __version__}).merge(Resource.create())
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: _DEFAULT_SERVICE_NAME}))
    return resource


class Tracer:
    """Starts the spans of input batches; one per worker, built by consumer.tracing."""

    __slots__ = ("_base", "_provider", "_tracer")

    def __init__(self, provider: TracerProvider, *, consumer_group: str, client_id: str) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("consumer.worker", __version__)
        self._base: dict[str, str] = {
            MESSAGING_SYSTEM: "kafka",
            MESSAGING_OPERATION_TYPE: "process",
            MESSAGING_OPERATION_NAME: "process",
            MESSAGING_CONSUMER_GROUP_NAME: consumer_group,
            MESSAGING_CLIENT_ID: client_id,
        }

    @classmethod
    def exporting_to(
        cls,
        exporters: Sequence[SpanExporter],
        *,
        consumer_group: str,
        client_id: str,
        in_background: bool = True,
    ) -> Tracer:
        """A tracer whose spans go to `exporters`: in a background thread, in batches (the
        SDK's BatchSpanProcessor, OTEL_BSP_* settings), or as each span ends (tests)."""
        # The provider's sampler and span limits come from OTEL_TRACES_SAMPLER(_ARG) and
        # OTEL_SPAN_*_LIMIT, read by the SDK itself.
        provider = TracerProvider(resource=_resource())
        for exporter in exporters:
            processor = (
                BatchSpanProcessor(exporter) if in_background else SimpleSpanProcessor(exporter)
            )
            provider.add_span_processor(processor)
        return cls(provider, consumer_group=consumer_group, client_id=client_id)

    def start_batch(self, topic: str, size: int) -> BatchTrace:
        """The span of one poll's records, before the first of them is looked at."""
        attributes = {**self._base, MESSAGING_DESTINATION_NAME: topic}
        span = self._tracer.start_span(
            f"process {topic}",
            context=_NO_PARENT,
            kind=SpanKind.CONSUMER,
            attributes={**attributes, MESSAGING_BATCH_MESSAGE_COUNT: size},
        )
        return BatchTrace(self._tracer, span, attributes)

    def shutdown(self) -> None:
        """Export what is pending and stop; at the worker's exit."""
        self._provider.shutdown()


class BatchTrace:
    """One batch span; the record spans started from it link to it."""

    __slots__ = ("_attributes", "_link", "_open", "_span", "_tracer")

    def __init__(self, tracer: OtelTracer, span: Span, attributes: dict[str, str]) -> None:
        self._tracer = tracer
        self._span = span
        self._attributes = attributes
        self._link = (Link(span.get_span_context()),)
        self._open: list[RecordSpan] = []

    def start_record(self, record: TracedRecord) -> RecordSpan:
        """The span of one record, continuing the record's trace context when it has one.

        Call it when the record is first looked at (before the signature check and parsing);
        end it with its outcome once that outcome is committed.
        """
        traceparent = tracestate = None
        for name, value in record.headers or ():
            if name == TRACEPARENT:
                traceparent = value
            elif name == TRACESTATE:
                tracestate = value
        parent = _NO_PARENT
        if traceparent is not None:
            carrier = {TRACEPARENT: traceparent.decode("latin-1")}
            if tracestate is not None:
                carrier[TRACESTATE] = tracestate.decode("latin-1")
            # An unreadable traceparent extracts to no parent: the record starts a trace.
            parent = _PROPAGATOR.extract(carrier, context=_NO_PARENT)
        attributes: dict[str, str | int | bool] = {
            **self._attributes,
            MESSAGING_DESTINATION_PARTITION_ID: str(record.partition),
            MESSAGING_KAFKA_OFFSET: int(record.offset),
        }
        if record.value is None:
            attributes[MESSAGING_KAFKA_MESSAGE_TOMBSTONE] = True
        span = self._tracer.start_span(
            f"process {record.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=self._link,
        )
        incoming = get_current_span(parent).get_span_context()
        # The batch span links to where each record came from; to the record's own span
        # when it came without a trace, so that every record is found from its batch.
        self._span.add_link(incoming if incoming.is_valid else span.get_span_context())
        record_span = RecordSpan(span)
        self._open.append(record_span)
        return record_span

    def end(self) -> None:
        """End the batch span. A record span not ended by now is abandoned: its record was
        not committed in this batch, and will be processed again in another."""
        for span in self._open:
            if not span.ended:
                span.abandon("not committed in this batch")
        self._open.clear()
        self._span.end()


class RecordSpan:
    """The span of one input record, from its classification to its committed outcome."""

    __slots__ = ("_span", "ended")

    def __init__(self, span: Span) -> None:
        self._span = span
        self.ended = False

    def headers(self) -> list[tuple[str, bytes]]:
        """`traceparent` (and `tracestate`, when there is one) naming this span, for the
        notification, so that its readers continue the same trace."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=set_span_in_context(self._span, _NO_PARENT))
        return [(name, value.encode("latin-1")) for name, value in carrier.items()]

    def end(
        self,
        outcome: Outcome,
        *,
        reason_class: str | None = None,
        transaction_id: str | None = None,
    ) -> None:
        """Record the committed outcome and end the span; later calls do nothing."""
        if self.ended:
            return
        self.ended = True
        attributes: dict[str, str] = {OUTCOME: outcome}
        if reason_class is not None:
            attributes[REASON_CLASS] = reason_class
        if transaction_id is not None:
            attributes[TRANSACTION_ID] = transaction_id
        self._span.set_attributes(attributes)
        self._span.end()

    def abandon(self, why: str) -> None:
        """End the span without an outcome: the record will be processed again (put back,
        partition lost, transaction aborted). Its next attempt gets a span of its own."""
        if self.ended:
            return
        self.ended = True
        self._span.set_attribute(ERROR_TYPE, "abandoned")
        self._span.set_status(Status(StatusCode.ERROR, why))
        self._span.end()
