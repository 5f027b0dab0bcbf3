"""Contender `limit`: consume → transactional produce with nothing in between.

The same consumer and producer settings as the worker (built by `consumer.kafka` from the
same `Settings`), the same `getmany` batching, one transactional producer per input
partition, offsets in each partition's transaction, outputs queued as record batches as the
worker queues them (`consumer.kafka.send_in_batches`), the same garbage-collector tuning
(`consumer.runtime`). No decoding, no validation, no database:
the ceiling that aiokafka allows for exactly-once Kafka to Kafka on this machine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from bench.contender import Progress, Spec, until_stopped
from bench.ours import settings_for
from consumer import kafka
from consumer.config import Settings
from consumer.planning import Output
from consumer.runtime import tune_garbage_collector


class Passthrough:
    """Copies every input record (key, value, headers) to the output topic."""

    def __init__(self, settings: Settings, target: int | None) -> None:
        self.settings = settings
        self.done = 0
        self.stopping = asyncio.Event()
        self.progress = Progress(target, self.stopping.set)
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self.opening: dict[TopicPartition, asyncio.Future[AIOKafkaProducer]] = {}

    async def open(self, partitions: set[TopicPartition]) -> None:
        await asyncio.gather(*(self.producer_for(tp) for tp in partitions))
        self.progress.ready()

    async def producer_for(self, tp: TopicPartition) -> AIOKafkaProducer:
        # getmany may hand out records before the assignment callback has opened them all;
        # whoever asks first starts it, the other waits for the same start.
        if tp not in self.opening:
            self.opening[tp] = asyncio.ensure_future(self._start(tp))
        return await asyncio.shield(self.opening[tp])

    async def _start(self, tp: TopicPartition) -> AIOKafkaProducer:
        transactional_id = f"{self.settings.transactional_id_prefix}.{tp.topic}.{tp.partition}"
        producer = kafka.producer(self.settings, transactional_id=transactional_id)
        await producer.start()
        self.producers[tp] = producer
        return producer

    async def close(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.opening.pop(tp, None)
        closing = [self.producers.pop(tp) for tp in partitions if tp in self.producers]
        await asyncio.gather(*(p.stop() for p in closing))

    async def run(self) -> None:
        consumer = kafka.input_consumer(self.settings)
        consumer.subscribe([self.settings.input_topic], listener=_Listener(self))
        await consumer.start()
        try:
            while not self.stopping.is_set():
                polled = await consumer.getmany(
                    timeout_ms=self.settings.batch_max_wait_ms,
                    max_records=self.settings.batch_max_records,
                )
                batches = [(tp, records) for tp, records in polled.items() if records]
                await asyncio.gather(*(self.commit(tp, records) for tp, records in batches))
                self.done += sum(len(records) for _, records in batches)
        finally:
            await self.close(set(self.producers))
            await consumer.stop()

    async def commit(self, tp: TopicPartition, records: list[Any]) -> None:
        producer = await self.producer_for(tp)
        topic = self.settings.notification_topic
        await producer.begin_transaction()
        # The worker's way of producing: one record batch per output partition.
        sent: list[asyncio.Future[Any]] = []
        outputs = [Output(topic, r.key, r.value, list(r.headers)) for r in records]
        await kafka.send_in_batches(producer, outputs, sent)
        # The worker's order: offsets once the outputs are acknowledged (see its _transaction).
        await asyncio.gather(*sent)
        await producer.send_offsets_to_transaction(
            {tp: records[-1].offset + 1}, self.settings.consumer_group
        )
        await producer.commit_transaction()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, passthrough: Passthrough) -> None:
        self._passthrough = passthrough

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._passthrough.close(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._passthrough.open(assigned)


async def run_passthrough(spec: Spec) -> dict[str, Any]:
    settings = settings_for(spec)
    passthrough = Passthrough(settings, spec.target)
    tune_garbage_collector(settings.gc_gen0_threshold)  # the same process tuning as ours
    await until_stopped(passthrough.run(), passthrough.progress, lambda: passthrough.done)
    return {"done": passthrough.done, "counts": {"passed": passthrough.done}}
