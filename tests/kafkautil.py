"""Reading and writing topics in tests, always as a downstream consumer would (read_committed)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | None],
    *,
    key: bytes | None = None,
    partition: int | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
) -> list[int]:
    """Send values in order; return their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, value=v, key=key, partition=partition, headers=list(headers or [])
            )
            for v in values
        ]
        return [int((await f).offset) for f in futures]
    finally:
        await producer.stop()


async def read_committed(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every committed record of every partition, up to the last stable offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not partitions:
            await consumer._client.force_metadata_update()  # a topic created moments ago
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await _settled_ends(bootstrap, consumer, partitions)
        records: list[ConsumerRecord] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


async def _settled_ends(
    bootstrap: str, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The last stable offsets, once they have caught up with the high watermarks.

    A committed transaction's markers are written just after commit_transaction returns;
    until then its records are invisible to read_committed. With no transaction left open,
    waiting for the two ends to meet makes "everything committed so far" well defined.
    """
    raw = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    await raw.start()
    try:
        # A process killed mid-transaction leaves it open until the broker aborts it: the
        # default KAFKA_TRANSACTION_TIMEOUT_MS, plus the test broker's 5 s cleanup interval.
        deadline = asyncio.get_running_loop().time() + 45
        while True:
            stable = await consumer.end_offsets(partitions)
            high = await raw.end_offsets(partitions)
            if stable == high or asyncio.get_running_loop().time() > deadline:
                return dict(stable)
            await asyncio.sleep(0.05)
    finally:
        await raw.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # a topic created moments ago
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def group_caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """True when the group's committed offset is at the end of every non-empty partition."""
    ends = await end_offsets(bootstrap, topic)
    committed = await committed_offsets(bootstrap, group, topic)
    return all(committed.get(partition) == end for partition, end in ends.items() if end > 0)
