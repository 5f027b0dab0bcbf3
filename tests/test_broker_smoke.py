"""The broker the tests use is real and complete: idempotence, transactions, read_committed."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.conditions import eventually


async def _read_all(bootstrap: str, topic: str, isolation_level: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
        group_id=None,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            values.extend(record.value for record in batch.get(tp, []) if record.value)
        return values
    finally:
        await consumer.stop()


async def test_read_committed_sees_only_committed_transactions(
    kafka_bootstrap: str, topic: str
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        enable_idempotence=True,
        transactional_id=f"smoke-{uuid.uuid4().hex}",
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed")
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted")
        await producer.abort_transaction()
    finally:
        await producer.stop()

    assert await _read_all(kafka_bootstrap, topic, "read_committed") == [b"committed"]
    assert await _read_all(kafka_bootstrap, topic, "read_uncommitted") == [
        b"committed",
        b"aborted",
    ]


async def test_send_offsets_to_transaction_moves_the_group_offset(
    kafka_bootstrap: str, topic: str
) -> None:
    group = f"smoke-group-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"smoke-{uuid.uuid4().hex}"
    )
    await producer.start()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        async with producer.transaction():
            for value in (b"a", b"b", b"c"):
                await producer.send(topic, value)
        assert await consumer.committed(tp) is None

        async with producer.transaction():
            await producer.send_offsets_to_transaction({tp: 3}, group)

        # The offset commit becomes visible once the coordinator has written the
        # transaction's markers, which happens just after commit_transaction returns.
        async def committed_is_three() -> bool:
            return bool(await consumer.committed(tp) == 3)

        await eventually(committed_is_three, timeout=30, what="the transactional offset commit")
    finally:
        await consumer.stop()
        await producer.stop()
