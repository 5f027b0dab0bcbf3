"""Signatures and trace context through the real worker, over the real broker (issue #16).

Expects the wiring described beside consumer.signature and consumer.tracing: the worker
checks `signature.from_settings(settings)` on each record before parsing, and takes the
`tracer` that `tracing.from_environment` builds (here one exporting to memory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer.config import Settings
from consumer.deadletter import header
from consumer.metrics import Metrics
from consumer.signature import sign
from consumer.spans import Tracer
from consumer.store import open_store
from consumer.worker import Worker
from tests import workload
from tests.kafkautil import produce, read_committed
from tests.workers import Topics, drain, settings_for

SECRET = "whsec-current-4d1f"
PREVIOUS = "whsec-previous-a07c"
SIGNATURE_HEADER = "x-voucherify-signature"


def activation(transaction_id: str) -> bytes:
    return workload.encode(workload.activation(transaction_id))


def signed_by(value: bytes, secret: str) -> list[tuple[str, bytes]]:
    return [(SIGNATURE_HEADER, sign(value, secret.encode()).encode())]


async def ledger_ids(store_url: str, transaction_ids: list[str]) -> list[str]:
    store = await open_store(store_url)
    try:
        return [t for t in transaction_ids if await store.ledger_entry(t) is not None]
    finally:
        await store.close()


async def notified_ids(bootstrap: str, topic: str) -> list[str]:
    notes = await read_committed(bootstrap, topic)
    return sorted(json.loads(n.value)["voucherify"]["transaction_id"] for n in notes)


# -- signatures ----------------------------------------------------------------------------


async def test_a_signed_record_is_applied(
    kafka_bootstrap: str, topics: Topics, store_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, store_url, voucherify_webhook_secret=SECRET)
    value = activation("vtx_signed")
    await produce(
        kafka_bootstrap, topics.input, [value], partition=0, headers=signed_by(value, SECRET)
    )

    metrics = await drain(settings)

    assert await notified_ids(kafka_bootstrap, topics.notifications) == ["vtx_signed"]
    assert await ledger_ids(store_url, ["vtx_signed"]) == ["vtx_signed"]
    assert await read_committed(kafka_bootstrap, topics.dead_letters) == []
    assert metrics.value("loyalty_consumer_applied_total") == 1


async def test_wrongly_signed_and_unsigned_records_are_dead_lettered_and_not_applied(
    kafka_bootstrap: str, topics: Topics, store_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, store_url, voucherify_webhook_secret=SECRET)
    forged = activation("vtx_forged")
    unsigned = activation("vtx_unsigned")
    [forged_at] = await produce(
        kafka_bootstrap, topics.input, [forged], partition=0, headers=signed_by(forged, "guess")
    )
    [unsigned_at] = await produce(kafka_bootstrap, topics.input, [unsigned], partition=0)
    # Signed correctly, then changed on the way: the points doubled.
    original = activation("vtx_tampered")
    tampered = workload.encode(workload.activation("vtx_tampered", points=46))
    [tampered_at] = await produce(
        kafka_bootstrap, topics.input, [tampered], partition=0, headers=signed_by(original, SECRET)
    )

    metrics = await drain(settings)

    letters = {
        int(header(letter.headers, "dlq.source.offset") or -1): letter
        for letter in await read_committed(kafka_bootstrap, topics.dead_letters)
    }
    assert sorted(letters) == sorted([forged_at, unsigned_at, tampered_at])
    assert {header(letter.headers, "dlq.reason_class") for letter in letters.values()} == {
        "invalid"
    }
    assert header(letters[forged_at].headers, "dlq.reason") == (
        "header x-voucherify-signature: does not match the record value under the webhook secret"
    )
    assert header(letters[tampered_at].headers, "dlq.reason") == (
        "header x-voucherify-signature: does not match the record value under the webhook secret"
    )
    assert (header(letters[unsigned_at].headers, "dlq.reason") or "").startswith(
        "header x-voucherify-signature: missing"
    )
    # The dead letters keep the record byte for byte, signature header included, for replay.
    assert letters[forged_at].value == forged
    assert letters[forged_at].headers[0] == signed_by(forged, "guess")[0]
    reasons = [header(letter.headers, "dlq.reason") or "" for letter in letters.values()]
    assert all(SECRET not in reason for reason in reasons)
    assert await notified_ids(kafka_bootstrap, topics.notifications) == []
    assert await ledger_ids(store_url, ["vtx_forged", "vtx_unsigned", "vtx_tampered"]) == []
    assert metrics.value("loyalty_consumer_dead_lettered_total", {"reason_class": "invalid"}) == 3
    assert metrics.value("loyalty_consumer_applied_total") == 0


async def test_during_a_rotation_the_previous_secret_is_accepted_too(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(
        kafka_bootstrap,
        topics,
        sqlite_url,
        voucherify_webhook_secret=SECRET,
        voucherify_webhook_secret_previous=PREVIOUS,
    )
    old, new, neither = activation("vtx_old"), activation("vtx_new"), activation("vtx_neither")
    await produce(
        kafka_bootstrap, topics.input, [old], partition=1, headers=signed_by(old, PREVIOUS)
    )
    await produce(kafka_bootstrap, topics.input, [new], partition=1, headers=signed_by(new, SECRET))
    await produce(
        kafka_bootstrap, topics.input, [neither], partition=1, headers=signed_by(neither, "x")
    )

    await drain(settings)

    assert await notified_ids(kafka_bootstrap, topics.notifications) == ["vtx_new", "vtx_old"]
    [letter] = await read_committed(kafka_bootstrap, topics.dead_letters)
    assert letter.value == neither
    assert header(letter.headers, "dlq.reason") == (
        "header x-voucherify-signature: does not match the record value under the current "
        "or previous secret"
    )


async def test_without_a_secret_unsigned_records_are_applied_as_before(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    value = activation("vtx_plain")
    await produce(kafka_bootstrap, topics.input, [value], partition=2)

    await drain(settings)

    assert await notified_ids(kafka_bootstrap, topics.notifications) == ["vtx_plain"]


# -- trace context -------------------------------------------------------------------------

# Four traces the bridge started, and the bridge's span in each.
BRIDGE_TRACES = [f"4bf92f3577b34da6a3ce929d0e0e473{n}" for n in range(4)]
BRIDGE_SPAN = "00f067aa0ba902b7"


def traceparent(trace_id: str) -> list[tuple[str, bytes]]:
    return [("traceparent", f"00-{trace_id}-{BRIDGE_SPAN}-01".encode())]


@dataclass
class Traced:
    metrics: Metrics
    spans: tuple[ReadableSpan, ...]


async def drain_traced(settings: Settings) -> Traced:
    exporter = InMemorySpanExporter()
    tracer = Tracer.exporting_to(
        [exporter],
        consumer_group=settings.consumer_group,
        client_id=settings.client_id,
        in_background=False,  # each span is exported as it ends: nothing to wait for
    )
    store = await open_store(settings.database_url, migrate=True)
    metrics = Metrics()
    try:
        worker = Worker(settings, store, metrics=metrics, burst=True, tracer=tracer)
        await worker.run()
    finally:
        await store.close()
        tracer.shutdown()
    return Traced(metrics, exporter.get_finished_spans())


def record_spans(spans: tuple[ReadableSpan, ...]) -> dict[int, ReadableSpan]:
    """The span of each input record by offset; an attempt abandoned (put back after a
    rebalance) is left out, its record has a span of the attempt that committed it."""
    found: dict[int, ReadableSpan] = {}
    for span in spans:
        attributes = span.attributes or {}
        if "messaging.kafka.offset" not in attributes or "error.type" in attributes:
            continue
        offset = attributes["messaging.kafka.offset"]
        assert isinstance(offset, int)
        assert offset not in found, f"two spans ended with an outcome for offset {offset}"
        found[offset] = span
    return found


def trace_of(value: bytes) -> tuple[str, str]:
    _, trace_id, parent_id, _ = value.decode().split("-")
    return trace_id, parent_id


async def test_each_record_gets_one_span_continuing_its_trace_with_its_outcome(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    sibling = workload.sibling_files()[0].read_bytes()
    values = [activation("vtx_traced"), activation("vtx_traced"), sibling, b"not json"]
    offsets = []
    for value, trace_id in zip(values, BRIDGE_TRACES, strict=True):
        offsets += await produce(
            kafka_bootstrap, topics.input, [value], partition=0, headers=traceparent(trace_id)
        )
    offsets += await produce(
        kafka_bootstrap, topics.input, [activation("vtx_untraced")], partition=0
    )

    traced = await drain_traced(settings)

    spans = record_spans(traced.spans)
    assert sorted(spans) == offsets
    outcomes = [(spans[o].attributes or {})["loyalty_consumer.outcome"] for o in offsets]
    assert outcomes == ["applied", "duplicate", "skipped", "dead_lettered", "applied"]
    for offset, trace_id in zip(offsets, BRIDGE_TRACES, strict=False):
        span = spans[offset]
        assert span.context is not None and span.parent is not None
        assert f"{span.context.trace_id:032x}" == trace_id
        assert f"{span.parent.span_id:016x}" == BRIDGE_SPAN
    untraced = spans[offsets[-1]]
    assert untraced.parent is None
    assert untraced.context is not None
    assert f"{untraced.context.trace_id:032x}" not in BRIDGE_TRACES
    attributes = spans[offsets[0]].attributes or {}
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.destination.name"] == topics.input
    assert attributes["messaging.destination.partition.id"] == "0"
    assert attributes["messaging.consumer.group.name"] == settings.consumer_group
    assert (spans[offsets[3]].attributes or {})["loyalty_consumer.dead_letter.reason_class"] == (
        "invalid"
    )
    # Every record span links to a batch span that links back to the record's context.
    batches = {
        span.context.span_id: span
        for span in traced.spans
        if span.context is not None and "messaging.batch.message_count" in (span.attributes or {})
    }
    for span in spans.values():
        [link] = span.links
        batch = batches[link.context.span_id]
        assert span.context is not None
        linked = {(other.context.trace_id, other.context.span_id) for other in batch.links}
        expected = (span.parent or span.context).trace_id, (span.parent or span.context).span_id
        assert expected in linked


async def test_a_notification_carries_the_traceparent_of_its_record_span(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    [traced_at] = await produce(
        kafka_bootstrap,
        topics.input,
        [activation("vtx_traced")],
        partition=0,
        headers=[*traceparent(BRIDGE_TRACES[0]), ("tracestate", b"bridge=1")],
    )
    [untraced_at] = await produce(
        kafka_bootstrap, topics.input, [activation("vtx_untraced")], partition=0
    )

    traced = await drain_traced(settings)

    spans = record_spans(traced.spans)
    notes = {
        json.loads(n.value)["voucherify"]["transaction_id"]: dict(n.headers)
        for n in await read_committed(kafka_bootstrap, topics.notifications)
    }
    trace_id, parent_id = trace_of(notes["vtx_traced"]["traceparent"])
    assert trace_id == BRIDGE_TRACES[0]  # the input's trace goes on
    span = spans[traced_at]
    assert span.context is not None
    assert parent_id == f"{span.context.span_id:016x}"  # under the record's span
    assert notes["vtx_traced"]["tracestate"] == b"bridge=1"
    trace_id, parent_id = trace_of(notes["vtx_untraced"]["traceparent"])
    untraced = spans[untraced_at]
    assert untraced.context is not None
    assert (trace_id, parent_id) == (
        f"{untraced.context.trace_id:032x}",
        f"{untraced.context.span_id:016x}",
    )
    assert "tracestate" not in notes["vtx_untraced"]
    # The CloudEvents headers are still all there.
    assert notes["vtx_traced"]["ce_specversion"] == b"1.0"


async def test_signature_and_trace_together_a_forged_record_is_traced_as_dead_lettered(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url, voucherify_webhook_secret=SECRET)
    value = activation("vtx_forged")
    [offset] = await produce(
        kafka_bootstrap,
        topics.input,
        [value],
        partition=0,
        headers=[*traceparent(BRIDGE_TRACES[1]), *signed_by(value, "guess")],
    )

    traced = await drain_traced(settings)

    span = record_spans(traced.spans)[offset]
    assert span.context is not None
    assert f"{span.context.trace_id:032x}" == BRIDGE_TRACES[1]
    assert (span.attributes or {})["loyalty_consumer.outcome"] == "dead_lettered"
    assert await read_committed(kafka_bootstrap, topics.notifications) == []
