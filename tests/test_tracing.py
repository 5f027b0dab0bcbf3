"""Tracing: off without configuration, the SDK's own OTEL_* configuration, and the span tree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import messaging_attributes as semconv
from opentelemetry.trace import SpanKind, StatusCode

from consumer import spans, tracing
from consumer.asyncapi import asyncapi_document
from consumer.errors import ConfigurationError
from consumer.spans import Tracer
from consumer.store.base import OutcomeKind

GROUP = "loyalty-consumer"
CLIENT = "loyalty-consumer-0"
TOPIC = "voucherify.webhooks"
# The bridge's span (W3C Trace Context, version 00, sampled) and a vendor's tracestate.
BRIDGE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BRIDGE_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{BRIDGE_TRACE}-{BRIDGE_SPAN}-01"
TRACESTATE = "bridge=t61rcWkgMzE,congo=lZWRzIHRoNhcm5hbCBwbGVhc3VyZS4"
TRACED = [("traceparent", TRACEPARENT.encode())]

_OTEL_VARIABLES = [name for name in os.environ if name.startswith("OTEL_")]


@dataclass
class FakeRecord:
    """An input record as the worker sees it (a plain value type: not a stand-in for Kafka)."""

    offset: int
    headers: Sequence[tuple[str, bytes]] = field(default_factory=list)
    value: bytes | None = b"{}"
    topic: str = TOPIC
    partition: int = 2


@pytest.fixture(autouse=True)
def _no_otel_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _OTEL_VARIABLES:
        monkeypatch.delenv(name)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    traced = Tracer.exporting_to(
        [exporter], consumer_group=GROUP, client_id=CLIENT, in_background=False
    )
    yield traced
    traced.shutdown()


def finished(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The batch span and the record spans, by offset."""
    done = exporter.get_finished_spans()
    [batch] = [
        s for s in done if s.attributes and semconv.MESSAGING_BATCH_MESSAGE_COUNT in s.attributes
    ]
    return batch, sorted((s for s in done if s is not batch), key=offset)


def offset(span: ReadableSpan) -> int:
    value = (span.attributes or {})[semconv.MESSAGING_KAFKA_OFFSET]
    assert isinstance(value, int)
    return value


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


# -- off -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "loyalty"}, False),  # names the service, exports nothing
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_requested_only_by_an_exporter_or_an_endpoint(
    variables: dict[str, str], expected: bool
) -> None:
    assert tracing.requested(variables) is expected


def test_without_configuration_no_opentelemetry_module_is_even_imported() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    probe = (
        "import sys\n"
        "from consumer import tracing\n"
        "tracer = tracing.from_environment(consumer_group='g', client_id='c')\n"
        "print(tracer, sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout == "None []\n"


def test_without_the_extra_tracing_stays_off_and_says_how_to_install_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_TRACES_EXPORTER"] = "console"
    # What an install without the extra sees: no opentelemetry package at all.
    probe = (
        "import sys\n"
        "class WithoutOpenTelemetry:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'opentelemetry':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, WithoutOpenTelemetry())\n"
        "from consumer import logs, tracing\n"
        "logs.configure('json', 'INFO')\n"
        "print(tracing.from_environment(consumer_group='g', client_id='c'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )

    assert result.stdout == "None\n"
    [event] = [json.loads(line) for line in result.stderr.splitlines()]
    assert event["event"] == "tracing.unavailable"
    assert event["level"] == "warning"
    assert "loyalty-consumer[otel]" in event["fix"]


# -- the SDK's configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "classes"),
    [
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, [GrpcExporter]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            [HttpExporter],
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp_proto_http,console"}, [HttpExporter, ConsoleSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, [GrpcExporter]),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            [HttpExporter],
        ),
    ],
)
def test_the_exporters_are_those_the_sdk_configures_from_the_variables(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], classes: list[type[object]]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    exporters = tracing._exporters()

    try:
        assert [type(exporter) for exporter in exporters] == classes
    finally:
        for exporter in exporters:
            exporter.shutdown()


@pytest.mark.parametrize(
    "variables",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin-json"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
    ],
)
def test_an_exporter_that_cannot_be_had_is_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER") as caught:
        tracing.from_environment(consumer_group=GROUP, client_id=CLIENT)

    assert "console, otlp" in str(caught.value)


def test_the_console_exporter_prints_the_record_span_through_the_real_process() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="loyalty-test")
    probe = (
        "from consumer import logs, tracing\n"
        "from tests.test_tracing import FakeRecord, TRACEPARENT\n"
        "logs.configure('json', 'INFO')\n"
        "tracer = tracing.from_environment(consumer_group='g1', client_id='c1')\n"
        "batch = tracer.start_batch('voucherify.webhooks', 1)\n"
        "record = FakeRecord(41, [('traceparent', TRACEPARENT.encode())])\n"
        "batch.start_record(record).end('applied')\n"
        "batch.end()\n"
        "tracer.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )

    decoder = json.JSONDecoder()
    printed, text = [], result.stdout.strip()
    while text:
        span, end = decoder.raw_decode(text)
        printed.append(span)
        text = text[end:].strip()
    [record] = [s for s in printed if s["parent_id"] == f"0x{BRIDGE_SPAN}"]
    assert record["context"]["trace_id"] == f"0x{BRIDGE_TRACE}"
    assert record["kind"] == "SpanKind.CONSUMER"
    assert record["attributes"]["messaging.consumer.group.name"] == "g1"
    assert record["attributes"]["loyalty_consumer.outcome"] == "applied"
    assert record["resource"]["attributes"]["service.name"] == "loyalty-test"


def test_the_service_is_named_loyalty_consumer_unless_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert spans._resource().attributes["service.name"] == "loyalty-consumer"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,team=loyalty")
    assert spans._resource().attributes["service.name"] == "from-attributes"
    assert spans._resource().attributes["team"] == "loyalty"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-service-name")
    assert spans._resource().attributes["service.name"] == "from-service-name"


# -- the spans -----------------------------------------------------------------------------


def test_a_record_span_continues_the_incoming_trace_as_a_child_of_the_bridge_span(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    headers = [("traceparent", TRACEPARENT.encode()), ("tracestate", TRACESTATE.encode())]
    batch = tracer.start_batch(TOPIC, 1)
    batch.start_record(FakeRecord(7, headers)).end("applied")
    batch.end()

    _, [record] = finished(exporter)

    assert trace_id(record) == BRIDGE_TRACE
    assert record.parent is not None and f"{record.parent.span_id:016x}" == BRIDGE_SPAN
    assert record.parent.is_remote
    assert record.context is not None
    assert record.context.trace_state.to_header() == TRACESTATE


def test_the_batch_span_links_every_record_and_every_record_links_the_batch(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    other_trace = "0af7651916cd43dd8448eb211c80319c"
    records = [
        FakeRecord(10, [("traceparent", TRACEPARENT.encode())]),
        FakeRecord(11, [("traceparent", f"00-{other_trace}-b7ad6b7169203331-01".encode())]),
        FakeRecord(12),  # no context: a new trace
    ]
    batch = tracer.start_batch(TOPIC, len(records))
    for record in records:
        batch.start_record(record).end("applied")
    batch.end()

    batch_span, record_spans = finished(exporter)

    assert batch_span.parent is None
    assert [
        (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}")
        for link in batch_span.links
    ] == [
        (BRIDGE_TRACE, BRIDGE_SPAN),
        (other_trace, "b7ad6b7169203331"),
        (trace_id(record_spans[2]), span_id(record_spans[2])),
    ]
    assert [trace_id(span) for span in record_spans[:2]] == [BRIDGE_TRACE, other_trace]
    assert record_spans[2].parent is None
    assert trace_id(record_spans[2]) not in (BRIDGE_TRACE, other_trace, trace_id(batch_span))
    for span in record_spans:
        [link] = span.links
        assert (link.context.trace_id, link.context.span_id) == (
            batch_span.context.trace_id if batch_span.context else None,
            batch_span.context.span_id if batch_span.context else None,
        )


def test_a_record_span_has_the_kafka_messaging_attributes_and_its_outcome(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    batch = tracer.start_batch(TOPIC, 2)
    batch.start_record(FakeRecord(41, partition=5)).end("dead_lettered", reason_class="invalid")
    batch.start_record(FakeRecord(42, partition=5, value=None)).end(
        "applied", transaction_id="vtx_0ff34b9df109a39357"
    )
    batch.end()

    batch_span, [letter, applied] = finished(exporter)

    common = {
        semconv.MESSAGING_SYSTEM: "kafka",
        semconv.MESSAGING_DESTINATION_NAME: TOPIC,
        semconv.MESSAGING_CONSUMER_GROUP_NAME: GROUP,
        semconv.MESSAGING_OPERATION_TYPE: "process",
        semconv.MESSAGING_OPERATION_NAME: "process",
        semconv.MESSAGING_CLIENT_ID: CLIENT,
    }
    assert dict(letter.attributes or {}) == {
        **common,
        semconv.MESSAGING_DESTINATION_PARTITION_ID: "5",
        semconv.MESSAGING_KAFKA_OFFSET: 41,
        "loyalty_consumer.outcome": "dead_lettered",
        "loyalty_consumer.dead_letter.reason_class": "invalid",
    }
    assert dict(applied.attributes or {}) == {
        **common,
        semconv.MESSAGING_DESTINATION_PARTITION_ID: "5",
        semconv.MESSAGING_KAFKA_OFFSET: 42,
        semconv.MESSAGING_KAFKA_MESSAGE_TOMBSTONE: True,
        "loyalty_consumer.outcome": "applied",
        "loyalty_consumer.transaction_id": "vtx_0ff34b9df109a39357",
    }
    assert dict(batch_span.attributes or {}) == {**common, semconv.MESSAGING_BATCH_MESSAGE_COUNT: 2}
    assert {letter.name, applied.name, batch_span.name} == {f"process {TOPIC}"}
    assert {letter.kind, applied.kind, batch_span.kind} == {SpanKind.CONSUMER}


def test_the_attribute_names_are_the_current_semantic_conventions() -> None:
    """Our constants, checked against the conventions package the SDK installs."""
    assert (
        spans.MESSAGING_KAFKA_OFFSET == semconv.MESSAGING_KAFKA_OFFSET == "messaging.kafka.offset"
    )
    assert spans.MESSAGING_CONSUMER_GROUP_NAME == semconv.MESSAGING_CONSUMER_GROUP_NAME
    assert spans.MESSAGING_DESTINATION_PARTITION_ID == semconv.MESSAGING_DESTINATION_PARTITION_ID
    assert spans.MESSAGING_OPERATION_TYPE == semconv.MESSAGING_OPERATION_TYPE
    assert spans.MESSAGING_OPERATION_NAME == semconv.MESSAGING_OPERATION_NAME
    assert spans.MESSAGING_BATCH_MESSAGE_COUNT == semconv.MESSAGING_BATCH_MESSAGE_COUNT
    assert spans.MESSAGING_CLIENT_ID == semconv.MESSAGING_CLIENT_ID
    assert spans.MESSAGING_KAFKA_MESSAGE_TOMBSTONE == semconv.MESSAGING_KAFKA_MESSAGE_TOMBSTONE


def test_the_returned_traceparent_names_the_record_span(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    headers = [("traceparent", TRACEPARENT.encode()), ("tracestate", TRACESTATE.encode())]
    batch = tracer.start_batch(TOPIC, 1)
    span = batch.start_record(FakeRecord(3, headers))
    outgoing = dict(span.headers())
    span.end("replay")
    batch.end()

    _, [record] = finished(exporter)

    assert set(outgoing) == {"traceparent", "tracestate"}
    assert outgoing["traceparent"] == f"00-{BRIDGE_TRACE}-{span_id(record)}-01".encode()
    assert outgoing["tracestate"] == TRACESTATE.encode()


def test_a_record_without_tracestate_gets_only_a_traceparent(tracer: Tracer) -> None:
    batch = tracer.start_batch(TOPIC, 1)
    span = batch.start_record(FakeRecord(3))

    [(name, value)] = span.headers()

    assert name == "traceparent"
    version, trace, parent, flags = value.decode().split("-")
    assert (version, len(trace), len(parent)) == ("00", 32, 16)
    assert int(flags, 16) & 0x01  # sampled
    span.end("skipped")
    batch.end()


@pytest.mark.parametrize(
    "traceparent",
    [
        b"00-abc-def-01",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        b"\xff\xfe",
    ],
)
def test_an_unreadable_traceparent_starts_a_new_trace(
    tracer: Tracer, exporter: InMemorySpanExporter, traceparent: bytes
) -> None:
    batch = tracer.start_batch(TOPIC, 1)
    batch.start_record(FakeRecord(3, [("traceparent", traceparent)])).end("dead_lettered")
    batch.end()

    _, [record] = finished(exporter)

    assert record.parent is None
    assert trace_id(record) != "0" * 32


def test_spans_end_when_the_outcome_is_known_and_only_once(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    batch = tracer.start_batch(TOPIC, 1)
    span = batch.start_record(FakeRecord(3))

    assert exporter.get_finished_spans() == ()  # classified, not committed yet
    span.end("duplicate")
    span.end("applied")  # a second end changes nothing
    batch.end()

    _, [record] = finished(exporter)
    assert (record.attributes or {})["loyalty_consumer.outcome"] == "duplicate"


def test_a_record_span_left_open_is_abandoned_when_its_batch_ends(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    batch = tracer.start_batch(TOPIC, 2)
    batch.start_record(FakeRecord(1)).end("applied")
    batch.start_record(FakeRecord(2))  # the batch was put back before this one committed
    batch.end()

    _, [applied, abandoned] = finished(exporter)

    assert applied.status.status_code is StatusCode.UNSET
    assert abandoned.status.status_code is StatusCode.ERROR
    assert (abandoned.attributes or {})["error.type"] == "abandoned"
    assert "loyalty_consumer.outcome" not in (abandoned.attributes or {})


def test_every_outcome_is_a_value_the_worker_reports() -> None:
    # The store's verdicts on an activation, and what happens to the other records.
    reported = {*typing.get_args(OutcomeKind), "skipped", "dead_lettered"}
    assert set(tracing.OUTCOMES) == reported
    assert set(typing.get_args(tracing.Outcome)) == reported


def test_the_asyncapi_document_describes_the_headers_a_notification_gets(tracer: Tracer) -> None:
    documented = asyncapi_document()["components"]["messages"]
    notification = documented["PendingPointsActivatedNotification"]["headers"]["properties"]
    batch = tracer.start_batch(TOPIC, 1)
    span = batch.start_record(FakeRecord(1, [("tracestate", b"a=1"), *TRACED]))

    for name, value in span.headers():
        assert re.fullmatch(notification[name].get("pattern", ".*"), value.decode()), name
    assert {name for name, _ in span.headers()} == {"traceparent", "tracestate"}
    webhook = documented["VoucherifyWebhook"]["headers"]["properties"]
    assert {"traceparent", "tracestate"} <= set(webhook)
    span.end("applied")
    batch.end()
