"""KIP-447 on the real broker: what aiokafka lacks and consumer/kip447.py adds.

These tests exercise the aiokafka internals that module relies on (its producer's sender
step, its consumer's coordinator state), so an aiokafka upgrade that moves them fails here.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ProducerFenced

from consumer.kip447 import (
    GroupFenced,
    GroupFencedProducer,
    GroupMember,
    StableOffsets,
    member_of,
)
from tests.conditions import eventually
from tests.kafkautil import produce, read_committed

pytestmark = pytest.mark.kafka


async def _member(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    await eventually(lambda: bool(consumer.assignment()), what="an assignment")
    return consumer


def _producer(bootstrap: str) -> GroupFencedProducer:
    return GroupFencedProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"kip447-{uuid.uuid4().hex}",
        enable_idempotence=True,
    )


async def test_offsets_of_the_current_generation_commit_with_the_transaction(
    kafka_bootstrap: str, new_topic: object
) -> None:
    topic = await new_topic("kip447-in")  # type: ignore[operator]
    out = await new_topic("kip447-out")  # type: ignore[operator]
    group = f"kip447-{uuid.uuid4().hex[:8]}"
    consumer = await _member(kafka_bootstrap, topic, group)
    producer = _producer(kafka_bootstrap)
    await producer.start()
    tp = TopicPartition(topic, 0)
    try:
        member = member_of(consumer, group)
        assert member.generation_id > 0 and member.member_id
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"note")
        await producer.send_offsets_to_transaction({tp: 7}, member)
        await producer.commit_transaction()

        found = await StableOffsets(consumer._client, group).read([tp], timeout_s=10)
    finally:
        await producer.stop()
        await consumer.stop()
    assert found == {tp: 7}
    assert [r.value for r in await read_committed(kafka_bootstrap, out)] == [b"note"]


async def _two_generations(
    bootstrap: str, topic: str, group: str
) -> tuple[AIOKafkaConsumer, AIOKafkaConsumer, GroupMember]:
    """A member of generation n, then a second member: both are in generation n + 1."""
    old = await _member(bootstrap, topic, group)
    stale = member_of(old, group)
    newcomer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await newcomer.start()
    await eventually(
        lambda: (
            member_of(old, group).generation_id > stale.generation_id
            and bool(newcomer.assignment())
        ),
        what="the next generation",
    )
    return old, newcomer, stale


async def test_a_member_the_group_moved_on_from_cannot_commit_its_transaction(
    kafka_bootstrap: str, new_topic: object
) -> None:
    topic = await new_topic("kip447-in", partitions=2)  # type: ignore[operator]
    out = await new_topic("kip447-out")  # type: ignore[operator]
    group = f"kip447-{uuid.uuid4().hex[:8]}"
    old, newcomer, stale = await _two_generations(kafka_bootstrap, topic, group)
    transactional_id = f"kip447-{uuid.uuid4().hex}"
    producer = GroupFencedProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=transactional_id
    )
    await producer.start()
    tp = TopicPartition(topic, 0)
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"from a stale member")
        with pytest.raises(GroupFenced):
            await producer.send_offsets_to_transaction({tp: 5}, stale)
        assert producer.must_be_replaced
        await producer.discard()
        # A new producer of the same id aborts what the broker still holds open.
        producer = GroupFencedProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=transactional_id
        )
        await producer.start()
        await producer.begin_transaction()
        await producer.send_offsets_to_transaction({tp: 3}, member_of(old, group))
        await producer.commit_transaction()
        found = await StableOffsets(old._client, group).read([tp], timeout_s=10)
    finally:
        await producer.stop()
        await newcomer.stop()
        await old.stop()
    assert found == {tp: 3}
    assert await read_committed(kafka_bootstrap, out) == []


async def test_aiokafka_forgets_what_an_abortable_transaction_holds_so_its_producer_is_replaced(
    kafka_bootstrap: str, new_topic: object
) -> None:
    """Why `must_be_replaced` exists: aiokafka's TransactionManager.error_transaction clears
    the partitions added so far, so its abort_transaction then sends no EndTxn(ABORT), and
    the broker's transaction stays open until the next commit commits it, stale records and
    all. If an aiokafka upgrade fixes this, this test fails and the workaround can go."""
    topic = await new_topic("kip447-in", partitions=2)  # type: ignore[operator]
    out = await new_topic("kip447-out")  # type: ignore[operator]
    group = f"kip447-{uuid.uuid4().hex[:8]}"
    old, newcomer, stale = await _two_generations(kafka_bootstrap, topic, group)
    producer = _producer(kafka_bootstrap)
    await producer.start()
    tp = TopicPartition(topic, 0)
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"from a stale member")
        with pytest.raises(GroupFenced):
            await producer.send_offsets_to_transaction({tp: 5}, stale)
        await producer.abort_transaction()
        await producer.begin_transaction()
        await producer.send_offsets_to_transaction({tp: 3}, member_of(old, group))
        await producer.commit_transaction()
    finally:
        await producer.stop()
        await newcomer.stop()
        await old.stop()
    assert [r.value for r in await read_committed(kafka_bootstrap, out)] == [b"from a stale member"]


async def test_right_after_a_commit_the_plain_read_may_be_stale_and_the_stable_read_never_is(
    kafka_bootstrap: str, new_topic: object
) -> None:
    """Kafka answers EndTxn before the markers land, and until its marker lands the group
    coordinator serves the previous offset: aiokafka's committed() (OffsetFetch without
    require_stable) reads it. The stable read waits for the markers instead."""
    topic = await new_topic("kip447-in")  # type: ignore[operator]
    group = f"kip447-{uuid.uuid4().hex[:8]}"
    consumer = await _member(kafka_bootstrap, topic, group)
    producer = _producer(kafka_bootstrap)
    await producer.start()
    tp = TopicPartition(topic, 0)
    reader = StableOffsets(consumer._client, group)
    stale = tries = 0
    try:
        member = member_of(consumer, group)
        while tries < 300 and not stale:
            tries += 1
            await producer.begin_transaction()
            await producer.send_offsets_to_transaction({tp: tries}, member)
            await producer.commit_transaction()
            stale += (await consumer.committed(tp)) != tries
            assert await reader.read([tp], timeout_s=10) == {tp: tries}
    finally:
        await producer.stop()
        await consumer.stop()
    assert stale, f"no stale plain read in {tries} tries"


async def test_a_partition_with_no_commit_reads_as_none(
    kafka_bootstrap: str, new_topic: object
) -> None:
    topic = await new_topic("kip447-in")  # type: ignore[operator]
    group = f"kip447-{uuid.uuid4().hex[:8]}"
    await produce(kafka_bootstrap, topic, [b"x"])
    consumer = await _member(kafka_bootstrap, topic, group)
    try:
        found = await StableOffsets(consumer._client, group).read(
            [TopicPartition(topic, 0)], timeout_s=10
        )
    finally:
        await consumer.stop()
    assert found == {TopicPartition(topic, 0): None}


async def test_a_fenced_producer_epoch_still_surfaces_as_producer_fenced(
    kafka_bootstrap: str, new_topic: object
) -> None:
    topic = await new_topic("kip447-in")  # type: ignore[operator]
    group = f"kip447-{uuid.uuid4().hex[:8]}"
    consumer = await _member(kafka_bootstrap, topic, group)
    transactional_id = f"kip447-{uuid.uuid4().hex}"
    first = GroupFencedProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=transactional_id
    )
    second = GroupFencedProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=transactional_id
    )
    await first.start()
    try:
        await first.begin_transaction()
        await second.start()  # init_transactions: a newer epoch of the same id
        with pytest.raises(ProducerFenced):
            await asyncio.wait_for(
                first.send_offsets_to_transaction(
                    {TopicPartition(topic, 0): 1}, member_of(consumer, group)
                ),
                30,
            )
    finally:
        await second.stop()
        await first.stop()
        await consumer.stop()
