"""End-to-end latency at a fixed input rate, as a downstream consumer sees it.

A paced producer publishes the workload at `rate` records a second, stamping each record
with the time it is sent; a read_committed consumer of the output topic matches every
notification to its input (by the `ce_subject` transaction id, or by the `bench-seq`
header the passthrough copies) and takes the difference to the moment it became visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.workload import GeneratedRecord

SEQ_HEADER = "bench-seq"


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles of the records sent after warm-up."""

    samples: int
    expected: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    sent_per_s: float

    @property
    def complete(self) -> bool:
        return self.samples >= self.expected


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, round(q / 100 * len(values) + 0.5) - 1))
    return values[rank]


class Tracker:
    """What was sent when, and when its output became visible."""

    def __init__(self, by_seq: bool) -> None:
        # The passthrough copies the input's headers; the worker writes CloudEvents headers.
        self.header = SEQ_HEADER if by_seq else "ce_subject"
        self.sent: dict[str, float] = {}
        self.measured: set[str] = set()
        self.seen: set[str] = set()
        self.latencies: list[float] = []
        self.sending_done = False
        self.all_seen = asyncio.Event()

    def finished_sending(self) -> None:
        self.sending_done = True
        self._check()

    def _check(self) -> None:
        if self.sending_done and len(self.latencies) >= len(self.measured):
            self.all_seen.set()

    def sending(self, key: str, at: float, measured: bool) -> None:
        self.sent.setdefault(key, at)  # a duplicate's output is its original's
        if measured:
            self.measured.add(key)

    def observe(self, headers: Iterable[tuple[str, bytes]], now: float) -> None:
        for name, value in headers:
            if name == self.header:
                key = value.decode()
                if key in self.sent and key not in self.seen:
                    self.seen.add(key)
                    if key in self.measured:
                        self.latencies.append(now - self.sent[key])
                        self._check()
                return

    def unseen(self, now: float) -> list[float]:
        """Lower bounds for the measured records whose output never became visible."""
        return [now - self.sent[key] for key in self.measured - self.seen]


async def _read(bootstrap: str, topic: str, tracker: Tracker, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while not stop.is_set():
            polled = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in polled.values():
                for record in records:
                    tracker.observe(record.headers, now)
    finally:
        await consumer.stop()


async def measure(
    bootstrap: str,
    input_topic: str,
    output_topic: str,
    records: list[GeneratedRecord],
    *,
    rate: float,
    warm_up_s: float,
    by_seq: bool,
    drain_s: float = 20.0,
) -> Latency:
    """Publish `records` at `rate` a second and measure until their outputs are visible."""
    tracker = Tracker(by_seq)
    stop = asyncio.Event()
    reader = asyncio.create_task(_read(bootstrap, output_topic, tracker, stop))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=0
    )
    await producer.start()
    try:
        started = time.time()
        warm_until = started + warm_up_s
        for index, record in enumerate(records):
            delay = started + index / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            timestamp_ms = int(time.time() * 1000)
            await producer.send(
                input_topic,
                value=record.value,
                key=record.key,
                partition=record.partition,
                timestamp_ms=timestamp_ms,
                headers=[(SEQ_HEADER, str(index).encode())],
            )
            sent, measured = timestamp_ms / 1000, timestamp_ms / 1000 >= warm_until
            if by_seq:
                tracker.sending(str(index), sent, measured)
            elif record.kind in ("new", "duplicate") and record.transaction_id is not None:
                tracker.sending(record.transaction_id, sent, measured and record.kind == "new")
        await producer.flush()
        sent_per_s = len(records) / max(1e-9, time.time() - started)
        tracker.finished_sending()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                await tracker.all_seen.wait()
    finally:
        stop.set()
        await producer.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    samples = len(tracker.latencies)
    values = sorted(tracker.latencies + tracker.unseen(time.time()))
    return Latency(
        samples=samples,
        expected=len(tracker.measured),
        p50_ms=percentile(values, 50) * 1000,
        p90_ms=percentile(values, 90) * 1000,
        p99_ms=percentile(values, 99) * 1000,
        max_ms=(values[-1] if values else float("nan")) * 1000,
        sent_per_s=sent_per_s,
    )
