"""The fetch buffer is shared out among the assigned partitions (aiokafka internals: the
Fetcher's `_max_partition_fetch_bytes`, read for every fetch request)."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from consumer import kafka
from consumer.intake import Intake
from consumer.ownership import Ownership
from tests.workers import Topics, settings_for

pytestmark = pytest.mark.kafka

RECORD = b"x" * 1000


def test_many_partitions_share_the_buffer_and_few_keep_the_full_limit() -> None:
    assert kafka.fetch_bytes_per_partition(6) == kafka.FETCH_BYTES_PER_PARTITION
    assert kafka.fetch_bytes_per_partition(96) * 96 <= kafka.FETCH_BUFFER_BYTES
    assert kafka.fetch_bytes_per_partition(10_000) == kafka.MIN_FETCH_BYTES_PER_PARTITION


async def first_fetch(bootstrap: str, settings: object, tp: TopicPartition, partitions: int) -> int:
    consumer = kafka.input_consumer(settings, group_id=None)  # type: ignore[arg-type]
    await consumer.start()
    try:
        Intake(consumer, settings, Ownership()).size_fetches(partitions)  # type: ignore[arg-type]
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        polled = await consumer.getmany(tp, timeout_ms=5_000, max_records=100_000)
        return len(polled.get(tp, []))
    finally:
        await consumer.stop()


async def test_a_partition_fetches_no_more_than_its_share(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    tp = TopicPartition(topics.input, 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=50)
    await producer.start()
    try:
        for _ in range(3_000):  # 3 MB in 16 KiB batches
            await producer.send(tp.topic, RECORD, partition=0)
        await producer.flush()
    finally:
        await producer.stop()

    alone = await first_fetch(kafka_bootstrap, settings, tp, partitions=1)
    shared = await first_fetch(kafka_bootstrap, settings, tp, partitions=10_000)

    share = kafka.MIN_FETCH_BYTES_PER_PARTITION // len(RECORD)
    assert shared <= share + 40  # a share, and at most the record batch that crosses it
    assert alone > 2 * share
