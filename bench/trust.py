"""`python -m bench.trust`: the per-record cost of signature checks and tracing, beside classify.

A micro-benchmark of the calls the worker makes per record (issue #16), on seed-shaped
activations: no broker, no store. Each case runs `--records` records per round; rounds are
interleaved (every case once per round, in turn) so that a slow moment of the machine is
shared, and each figure is the median over rounds, in microseconds per record.

Tracing on is measured with the SDK's BatchSpanProcessor and an exporter that drops the
spans: the span work on the worker's thread, without the encoding and sending an OTLP
exporter then does in its background thread (which competes for the same interpreter).
The sampled case is OTEL_TRACES_SAMPLER=parentbased_traceidratio with
OTEL_TRACES_SAMPLER_ARG=0.1, on records that come without a trace.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from consumer.events import classify
from consumer.signature import SignatureVerifier, sign
from consumer.spans import BatchTrace, Tracer
from consumer.workload import activation_payload

SECRET = b"whsec-bench-5b1e"
PREVIOUS = b"whsec-bench-previous-90aa"
HEADER = "x-voucherify-signature"
BATCH = 500  # records per batch span, as a busy poll


@dataclass
class Record:
    """What the worker reads of an input record."""

    offset: int
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = "voucherify.webhooks"
    partition: int = 0


class Discard(SpanExporter):
    """Drops every span: what remains is the SDK's own work on the worker's thread."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def records(count: int, *, traced: bool, secret: bytes = SECRET) -> list[Record]:
    made = []
    for n in range(count):
        document = activation_payload(
            f"vtx_bench{n:08d}",
            voucher_id=f"v_bench{n % 97}",
            customer_id=f"cust_bench{n % 89}",
            points=1 + n % 50,
            balance=100 + n,
            pending=n % 7,
            created_at=datetime(2025, 1, 8, 14, 8, 34, tzinfo=UTC),
        )
        value = orjson.dumps(document)
        headers = [(HEADER, sign(value, secret).encode())]
        if traced:
            headers.append(("traceparent", f"00-{n + 1:032x}-{n + 1:016x}-01".encode()))
        made.append(Record(n, value, headers))
    return made


Case = Callable[[list[Record]], None]


def classify_all(batch: list[Record]) -> None:
    for record in batch:
        classify(record.value)


def verifier_case(verifier: SignatureVerifier) -> Case:
    def check_all(batch: list[Record]) -> None:
        check = verifier.check
        for record in batch:
            check(record.value, record.headers)

    return check_all


def switched_off(batch: list[Record]) -> None:
    """What the worker does per record with a feature off: test a None, nothing more."""
    trace: BatchTrace | None = None
    for record in batch:
        if trace is not None:
            trace.start_record(record)


def tracing_on(tracer: Tracer) -> Case:
    def trace_all(batch: list[Record]) -> None:
        for start in range(0, len(batch), BATCH):
            trace = tracer.start_batch("voucherify.webhooks", BATCH)
            for record in batch[start : start + BATCH]:
                span = trace.start_record(record)
                span.headers()  # every applied record's notification gets them
                span.end("applied")
            trace.end()

    return trace_all


def measure(cases: dict[str, tuple[Case, list[Record]]], rounds: int) -> dict[str, float]:
    """Median microseconds per record for each case, over interleaved rounds."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for case, batch in cases.values():  # warm-up: imports, caches, first allocations
        case(batch[:BATCH])
    for _ in range(rounds):
        for name, (case, batch) in cases.items():
            started = time.perf_counter_ns()
            case(batch)
            samples[name].append((time.perf_counter_ns() - started) / len(batch) / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trust", description=__doc__)
    parser.add_argument("--records", type=int, default=5_000, help="records per case and round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    plain = records(args.records, traced=False)
    traced = records(args.records, traced=True)
    rotated = records(args.records, traced=False, secret=PREVIOUS)
    tracer = Tracer.exporting_to([Discard()], consumer_group="bench", client_id="bench")
    # The SDK reads the sampler from the standard variables when the provider is made.
    os.environ.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1")
    sampled = Tracer.exporting_to([Discard()], consumer_group="bench", client_id="bench")
    del os.environ["OTEL_TRACES_SAMPLER"], os.environ["OTEL_TRACES_SAMPLER_ARG"]
    cases: dict[str, tuple[Case, list[Record]]] = {
        "classify (baseline)": (classify_all, plain),
        "signature: valid, one secret": (verifier_case(SignatureVerifier([SECRET])), plain),
        "signature: valid under the previous secret": (
            verifier_case(SignatureVerifier([SECRET, PREVIOUS])),
            rotated,
        ),
        "signature: refused, no match under two secrets": (
            verifier_case(SignatureVerifier([SECRET, PREVIOUS])),
            records(args.records, traced=False, secret=b"forged"),
        ),
        "either feature off (the worker's None test)": (switched_off, plain),
        "tracing: on, record without context": (tracing_on(tracer), plain),
        "tracing: on, record with traceparent": (tracing_on(tracer), traced),
        "tracing: on, 1 in 10 sampled, no context": (tracing_on(sampled), plain),
    }
    try:
        figures = measure(cases, args.rounds)
    finally:
        tracer.shutdown()
        sampled.shutdown()
    baseline = figures["classify (baseline)"]
    size = sum(len(r.value) for r in plain) / len(plain)
    out = sys.stdout
    out.write(
        f"{args.records} records of {size:,.0f} bytes a round, median of {args.rounds} "
        f"interleaved rounds; Python {sys.version.split()[0]}\n\n"
    )
    out.write(f"{'case':<48} {'us/record':>10} {'vs classify':>12}\n")
    for name, figure in figures.items():
        out.write(f"{name:<48} {figure:>10.2f} {figure / baseline:>11.1%}\n")


if __name__ == "__main__":
    main()
