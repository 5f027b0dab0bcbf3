"""Each replica's broker link crosses its own proxy, and a failing link reads as a retriable
outage (or a fence), never as a refusal: real faults through Toxiproxy on a private broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotCoordinatorForGroupError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownMemberIdError,
)

from consumer.config import Settings
from consumer.errors import BrokerUnavailable, Fenced
from consumer.kafka import as_consumer_error, input_consumer, producer
from consumer.kip447 import GroupFenced
from tests.conditions import eventually
from tests.netfaults import Network, ReplicaLinks
from tests.toxiproxy import blackhole, reset_peer

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

SESSION_TIMEOUT_MS = 3_000
REQUEST_TIMEOUT_MS = 3_000  # how long a client waits for one answer before it gives up


async def create_topic(bootstrap: str, partitions: int = 2) -> str:
    name = f"links-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


def settings(link: ReplicaLinks, topic: str, group: str) -> Settings:
    return Settings(
        kafka_bootstrap_servers=link.bootstrap_servers,
        input_topic=topic,
        consumer_group=group,
        client_id=f"replica-{link.index}",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=500,
    )


@dataclass
class Replica:
    """A worker's Kafka half: a group consumer that keeps polling, a transactional producer."""

    link: ReplicaLinks
    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    received: list[tuple[int, bytes]] = field(default_factory=list)
    poller: asyncio.Task[None] | None = None

    def partitions(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}

    async def poll(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                self.received += [(tp.partition, r.value or b"") for r in records]

    async def publish(self, topic: str, partition: int, value: bytes) -> None:
        """One record in one transaction, as the worker commits its outputs."""
        await self.producer.begin_transaction()
        try:
            await self.producer.send_and_wait(topic, value, partition=partition)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.abort_transaction(), 5)
            raise
        await self.producer.commit_transaction()


@contextlib.asynccontextmanager
async def replica(link: ReplicaLinks, topic: str, group: str) -> AsyncIterator[Replica]:
    config = settings(link, topic, group)
    consumer = input_consumer(config, request_timeout_ms=REQUEST_TIMEOUT_MS)
    out = producer(config, transactional_id=f"{group}-{link.index}")
    await consumer.start()
    await out.start()
    consumer.subscribe([topic])
    worker = Replica(link, consumer, out)
    worker.poller = asyncio.create_task(worker.poll())
    try:
        yield worker
    finally:
        worker.poller.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker.poller
        # Bounded: a client whose link is still cut must not hang the test's teardown.
        for client in (out, consumer):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.stop(), 15)


async def test_a_replica_behind_a_blackholed_proxy_is_cut_off_while_another_keeps_working(
    network: Network,
) -> None:
    topic = await create_topic(network.direct_bootstrap, partitions=2)
    group = f"links-{uuid.uuid4().hex[:8]}"
    first, second = network.replicas
    async with replica(first, topic, group) as cut, replica(second, topic, group) as kept:
        await eventually(
            lambda: bool(cut.partitions() and kept.partitions()),
            timeout=30,
            what="one partition each",
        )
        # The broker told each client to come back through its own proxy, so every one of
        # its connections crosses it (to the group and transaction coordinators too).
        assert {b.port for b in cut.producer.client.cluster.brokers()} == {first.broker.port}
        assert {b.port for b in cut.consumer._client.cluster.brokers()} == {first.broker.port}
        assert {b.port for b in kept.producer.client.cluster.brokers()} == {second.broker.port}

        async with first.broker.fault(blackhole()):
            with pytest.raises(TimeoutError) as caught:
                async with asyncio.timeout(REQUEST_TIMEOUT_MS / 1000 * 2):
                    await cut.publish(topic, 0, b"from the cut-off replica")
            error = as_consumer_error(caught.value)
            assert isinstance(error, BrokerUnavailable) and error.retriable

            await kept.publish(topic, 0, b"while the other is cut off")
            await kept.publish(topic, 1, b"on the partition that moves")
            await eventually(
                lambda: kept.partitions() == {0, 1},
                timeout=SESSION_TIMEOUT_MS / 1000 * 10,
                what="the group to move the cut-off replica's partition",
            )
            await eventually(
                lambda: {p for p, _ in kept.received} == {0, 1},
                timeout=30,
                what="the kept replica to read both partitions",
            )
            assert b"from the cut-off replica" not in [v for _, v in kept.received]

        await eventually(
            lambda: bool(cut.partitions()) and kept.partitions() != {0, 1},
            timeout=60,
            what="the healed replica to rejoin the group",
        )


async def test_a_reset_link_surfaces_as_unavailable_at_bootstrap(network: Network) -> None:
    link = network.replicas[0]
    client = AIOKafkaProducer(
        bootstrap_servers=link.bootstrap_servers, request_timeout_ms=REQUEST_TIMEOUT_MS
    )
    async with link.broker.fault(reset_peer()):
        with pytest.raises(KafkaConnectionError) as caught:
            await client.start()
    with contextlib.suppress(Exception):
        await client.stop()

    error = as_consumer_error(caught.value)
    assert isinstance(error, BrokerUnavailable) and error.retriable


@pytest.mark.parametrize("fault", ["reset", "blackhole"])
async def test_an_offset_lookup_over_a_failing_link_is_unavailable_not_refused(
    network: Network, fault: str
) -> None:
    # aiokafka gives up with KafkaTimeoutError, which it does not flag retriable.
    topic = await create_topic(network.direct_bootstrap, partitions=1)
    link = network.replicas[0]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=link.bootstrap_servers,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        # Metadata of every topic (it subscribes to none); no fetcher runs meanwhile.
        await consumer._client.force_metadata_update()
        assert await consumer.end_offsets([partition]) == {partition: 0}
        toxic = reset_peer() if fault == "reset" else blackhole()
        async with link.broker.fault(toxic):
            with pytest.raises(KafkaTimeoutError) as caught:
                await consumer.end_offsets([partition])
        assert await consumer.end_offsets([partition]) == {partition: 0}  # healed
    finally:
        await asyncio.wait_for(consumer.stop(), 15)

    error = as_consumer_error(caught.value)
    assert isinstance(error, BrokerUnavailable), repr(error)
    assert error.retriable


async def test_a_stopped_proxy_refuses_connections_as_unavailable(network: Network) -> None:
    link = network.replicas[0]
    await link.broker.disable()
    try:
        with pytest.raises(ConnectionRefusedError) as caught:
            await create_conn(link.broker.host, link.broker.port, request_timeout_ms=5_000)
    finally:
        await link.broker.enable()

    error = as_consumer_error(caught.value)
    assert isinstance(error, BrokerUnavailable), repr(error)
    assert error.retriable


async def test_a_newer_producer_of_the_same_transactional_id_fences_the_older(
    network: Network,
) -> None:
    topic = await create_topic(network.direct_bootstrap, partitions=1)
    transactional_id = f"fence-{uuid.uuid4().hex[:8]}"
    bootstrap = network.replicas[0].bootstrap_servers
    older = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    newer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)

    async def commit_as_the_older() -> None:
        await older.begin_transaction()
        await older.send_and_wait(topic, b"zombie")
        await older.commit_transaction()

    await older.start()
    try:
        await newer.start()  # init_transactions bumps the epoch
        try:
            with pytest.raises(KafkaError) as caught:
                await commit_as_the_older()
        finally:
            await newer.stop()
    finally:
        with contextlib.suppress(Exception):
            await older.stop()

    error = as_consumer_error(caught.value)
    assert isinstance(error, Fenced), repr(caught.value)
    assert not error.retriable


@pytest.mark.parametrize(
    "exc",
    [
        GroupFenced("generation 3 is over"),
        IllegalGenerationError(),
        UnknownMemberIdError(),
        CommitFailedError(),
    ],
)
def test_a_group_that_moved_on_is_a_fence(exc: Exception) -> None:
    error = as_consumer_error(exc)
    assert isinstance(error, Fenced) and not error.retriable


@pytest.mark.parametrize(
    "exc", [NodeNotReadyError(), RequestTimedOutError(), NotCoordinatorForGroupError()]
)
def test_kafka_errors_flagged_retriable_are_unavailable(exc: Exception) -> None:
    error = as_consumer_error(exc)
    assert isinstance(error, BrokerUnavailable) and error.retriable


@pytest.mark.parametrize("exc", [RecordTooLargeError(), TopicAuthorizationFailedError()])
def test_refusals_stay_themselves(exc: Exception) -> None:
    assert as_consumer_error(exc) is exc
    assert not getattr(exc, "retriable", False)
