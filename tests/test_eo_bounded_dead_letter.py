"""Issue #14, item 4: a dead letter that Kafka refuses must not block its partition.

An invalid value larger than the dead-letter topic's max.message.bytes, or than the
producer's max_request_size, fails every attempt, the dead letter included: today the
worker stops, and meets the same record again on restart. The fix writes a bounded dead
letter instead (reason, coordinates, original size and SHA-256, a prefix of the value).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.audit import audit
from consumer.deadletter import (
    REASON,
    REASON_CLASS,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    header,
)
from consumer.store import open_store
from tests import workload
from tests.conftest import TopicFactory
from tests.kafkautil import group_caught_up, read_committed
from tests.workers import Topics, drain, settings_for

pytestmark = pytest.mark.kafka

TRUNCATED = "dlq.truncated"
ORIGINAL_SIZE = "dlq.original_size"
ORIGINAL_SHA256 = "dlq.original_sha256"
MAX_PREFIX = 1024
LARGE_TOPIC = str(4 * 1024 * 1024)  # max.message.bytes of the topics that must not refuse


async def _topic(admin: AIOKafkaAdminClient, stem: str, max_message_bytes: str) -> str:
    name = f"{stem}-{uuid.uuid4().hex[:12]}"
    await admin.create_topics(
        [NewTopic(name, 1, 1, topic_configs={"max.message.bytes": max_message_bytes})]
    )
    return name


@pytest.mark.parametrize(
    ("refused_by", "size"),
    [
        ("dead-letter topic max.message.bytes", 20_000),
        ("producer max_request_size", 1_200_000),  # aiokafka's default limit is 1 MiB
    ],
)
async def test_a_dead_letter_too_large_for_kafka_is_written_bounded_and_the_partition_moves_on(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    new_topic: TopicFactory,
    sqlite_url: str,
    refused_by: str,
    size: int,
) -> None:
    """An invalid record that Kafka refuses to take as a full dead letter is dead-lettered in
    bounded form: `dlq.truncated: true`, its size and SHA-256, the usual reason and source
    coordinates, and at most 1024 bytes of its value as a prefix. The three activations
    after it are applied and the group's committed offset reaches the end."""
    dead_letter_limit = "4096" if refused_by.startswith("dead-letter") else LARGE_TOPIC
    topics = Topics(
        await _topic(kafka_admin, "in", LARGE_TOPIC),
        await new_topic("notify"),
        await _topic(kafka_admin, "dlq", dead_letter_limit),
    )
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    garbage = (b"not json, and large: " + bytes(range(32, 127)) * (size // 95 + 1))[:size]
    ids = [f"vtx_after_large{i}" for i in range(3)]
    await _publish(
        kafka_bootstrap,
        topics.input,
        [garbage, *(workload.encode(workload.activation(tx)) for tx in ids)],
    )

    stopped = await asyncio.wait_for(asyncio.gather(drain(settings), return_exceptions=True), 120)

    assert not isinstance(stopped[0], BaseException), f"the worker stopped: {stopped[0]!r}"
    [letter] = await read_committed(kafka_bootstrap, topics.dead_letters)
    headers = list(letter.headers)
    assert header(headers, TRUNCATED) == "true"
    assert header(headers, ORIGINAL_SIZE) == str(size)
    assert header(headers, ORIGINAL_SHA256) == hashlib.sha256(garbage).hexdigest()
    assert header(headers, REASON)
    assert header(headers, REASON_CLASS) == "invalid"
    assert header(headers, SOURCE_TOPIC) == topics.input
    assert header(headers, SOURCE_PARTITION) == "0"
    assert header(headers, SOURCE_OFFSET) == "0"
    assert letter.value is not None and len(letter.value) <= MAX_PREFIX
    assert garbage.startswith(letter.value)
    assert await group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input)
    store = await open_store(sqlite_url)
    try:
        assert (await store.counts()).ledger_entries == 3
    finally:
        await store.close()
    assert len(await read_committed(kafka_bootstrap, topics.notifications)) == 3
    report = await audit(settings)
    assert report.ok, report.summary()


async def _publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """In order, with room for a value above the 1 MiB default request size."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        for value in values:
            await (await producer.send(topic, value=value, partition=0))
    finally:
        await producer.stop()
