"""Epochs and positions: work of an ended epoch is refused, and records from before where
an epoch's work starts are never admitted (they were fetched from a stale position)."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.intake import Intake
from consumer.ownership import Ownership
from tests.kafkautil import produce
from tests.workers import Topics, settings_for

A, B = TopicPartition("in", 0), TopicPartition("in", 1)


def test_an_epoch_holds_until_it_ends_and_accepts_no_new_work_while_revoking() -> None:
    ownership = Ownership()
    epoch = ownership.begin(None, {A, B})

    assert ownership.holds(epoch) and ownership.accepts(epoch)
    ownership.revoking = True
    assert ownership.holds(epoch) and not ownership.accepts(epoch)
    ownership.end()
    assert not ownership.holds(epoch)
    later = ownership.begin(None, {A})
    assert not ownership.holds(epoch) and ownership.holds(later)


def test_positions_read_for_an_ended_epoch_are_ignored() -> None:
    ownership = Ownership()
    first = ownership.begin(None, {A, B})
    second = ownership.begin(None, {B})  # a rebalance while the first epoch's read was out

    assert not ownership.established(first, {A: 5, B: 7})
    assert ownership.position(A) is None and ownership.position(B) is None
    assert ownership.pending == {B}
    assert ownership.established(second, {A: 5, B: 7})
    assert ownership.position(A) is None  # not ours in this epoch
    assert ownership.position(B) == 7 and not ownership.pending


def test_commits_advance_positions_only_within_their_epoch() -> None:
    ownership = Ownership()
    epoch = ownership.begin(None, {A})
    ownership.established(epoch, {A: 3})

    ownership.advance(epoch, {A: 10})
    assert ownership.position(A) == 10
    later = ownership.begin(None, {A})
    ownership.established(later, {A: 10})
    ownership.advance(epoch, {A: 99})  # a late commit of the old epoch: it moved nothing here
    assert ownership.position(A) == 10


@pytest.mark.kafka
async def test_intake_admits_only_records_from_the_established_position_on(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url, batch_max_wait_ms=200)
    tp, other = TopicPartition(topics.input, 0), TopicPartition(topics.input, 1)
    await produce(kafka_bootstrap, topics.input, [b"a", b"b", b"c", b"d"], partition=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ownership = Ownership()
        intake = Intake(consumer, settings, ownership)
        consumer.assign([tp, other])
        epoch = ownership.begin(None, {tp, other})
        consumer.seek(tp, 0)  # the fetcher starts from a stale position, before the work
        ownership.established(epoch, {tp: 2})
        intake._next[tp] = 2  # as start_at would, without the seek that corrects it

        polled = None
        for _ in range(20):
            polled = await intake.poll()
            if polled:
                break
        assert polled is not None
        assert polled[0] is epoch
        [(where, records)] = polled[1]
        assert where == tp
        assert [r.value for r in records] == [b"c", b"d"]
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_a_position_for_a_partition_taken_meanwhile_is_left_to_its_next_owner(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    tp, other = TopicPartition(topics.input, 0), TopicPartition(topics.input, 1)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([other])  # tp moved away before its position was applied
        intake = Intake(consumer, settings, Ownership())

        intake.start_at({tp: 3})  # no error

        assert consumer.assignment() == {other}
        assert tp not in intake._next
        await consumer.getmany(timeout_ms=100)  # aiokafka: a stop right after assign() races
    finally:
        await consumer.stop()
