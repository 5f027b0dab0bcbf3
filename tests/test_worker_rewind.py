"""Rewinding a partition to its committed offset races with rebalances; losing it is no error.

The worker rewinds when a transaction fails and when it puts back a batch classified ahead
(see Worker._loop). It asks the group for the committed offset first; a rebalance can take
the partition before the answer arrives, and seeking then raised IllegalStateError, which
stopped a replica during `make bench`'s two-replica run. Real broker, real consumer; only
the moment of the rebalance is chosen.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from consumer.store import open_store
from consumer.worker import Worker
from tests.kafkautil import produce
from tests.workers import Topics, settings_for

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "never-committed"])
async def test_a_partition_taken_while_rewinding_is_left_to_its_next_owner(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str, committed: bool
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    store = await open_store(sqlite_url, migrate=True)
    worker = Worker(settings, store)
    tp, other = TopicPartition(topics.input, 0), TopicPartition(topics.input, 1)
    await produce(kafka_bootstrap, topics.input, [b"a", b"b", b"c"], partition=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        if committed:
            await consumer.commit({tp: OffsetAndMetadata(2, "")})
        asked = consumer.committed

        async def taken_while_asking(partition: TopicPartition) -> Any:
            offset = await asked(partition)
            consumer.assign([other])  # the partition moves before the answer is used
            return offset

        consumer.committed = taken_while_asking
        await worker._rewind(consumer, tp)

        assert consumer.assignment() == {other}
        consumer.committed = asked
        assert await consumer.committed(tp) == (2 if committed else None)  # nothing moved
    finally:
        await consumer.stop()
        await store.close()
