"""Contender `naive`: the loop a team writes on day one, one record at a time.

For each record: validate it (the project's own `classify`, so the comparison is about the
shape of the loop, not about validation code), one database transaction on its own simple
table, one awaited send; offsets auto-committed by the consumer. At-least-once at best:
this is the baseline, not a design to copy.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.contender import Progress, Spec, until_stopped
from bench.ours import settings_for
from consumer.events import Apply, Invalid, classify
from consumer.transform import notification_record

SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_ledger (
    transaction_id text PRIMARY KEY,
    voucher_id     text NOT NULL,
    points         bigint NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS naive_cards (
    voucher_id       text PRIMARY KEY,
    activated_points bigint NOT NULL,
    reported_balance bigint NOT NULL
);
"""
INSERT_ENTRY = """
INSERT INTO naive_ledger (transaction_id, voucher_id, points) VALUES ($1, $2, $3)
ON CONFLICT (transaction_id) DO NOTHING RETURNING true
"""
ADD_POINTS = """
INSERT INTO naive_cards (voucher_id, activated_points, reported_balance) VALUES ($1, $2, $3)
ON CONFLICT (voucher_id) DO UPDATE SET
    activated_points = naive_cards.activated_points + excluded.activated_points,
    reported_balance = excluded.reported_balance
"""


class NaiveLoop:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.settings = settings_for(spec)
        self.counts = {"applied": 0, "duplicates": 0, "skipped": 0, "dead_lettered": 0}
        self.done = 0
        self.stopping = asyncio.Event()
        self.progress = Progress(spec.target, self.stopping.set)
        self.consumer: AIOKafkaConsumer | None = None

    def processed(self) -> int:
        if self.consumer is not None and self.consumer.assignment():
            self.progress.ready()
        return self.done

    async def run(self) -> None:
        connection = await asyncpg.connect(self.spec.database_url)
        await connection.execute(SCHEMA)
        consumer = AIOKafkaConsumer(
            self.spec.input_topic,
            bootstrap_servers=self.spec.bootstrap,
            group_id=self.spec.group,
            enable_auto_commit=True,
            auto_offset_reset="earliest",
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=self.spec.bootstrap, enable_idempotence=True, acks="all"
        )
        self.consumer = consumer
        await consumer.start()
        await producer.start()
        try:
            async for record in consumer:
                await self.handle(connection, producer, record)
                self.done += 1
                if self.stopping.is_set() or self.done == self.spec.target:
                    break
        finally:
            await producer.stop()
            await consumer.stop()
            await connection.close()

    async def handle(self, connection: Any, producer: AIOKafkaProducer, record: Any) -> None:
        verdict = classify(record.value)
        if isinstance(verdict, Apply):
            activation = verdict.activation
            async with connection.transaction():
                inserted = await connection.fetchval(
                    INSERT_ENTRY,
                    activation.transaction_id,
                    activation.voucher_id,
                    activation.points,
                )
                if inserted:
                    await connection.execute(
                        ADD_POINTS, activation.voucher_id, activation.points, activation.balance
                    )
            if not inserted:
                self.counts["duplicates"] += 1
                return
            key, value, headers = notification_record(
                activation, source=self.settings.cloudevents_source
            )
            await producer.send_and_wait(
                self.settings.notification_topic, value=value, key=key, headers=headers
            )
            self.counts["applied"] += 1
        elif isinstance(verdict, Invalid):
            await producer.send_and_wait(
                self.settings.dead_letter_topic,
                value=record.value,
                key=record.key,
                headers=[("reason", verdict.reason.encode())],
            )
            self.counts["dead_lettered"] += 1
        else:
            self.counts["skipped"] += 1


async def run_naive(spec: Spec) -> dict[str, Any]:
    loop = NaiveLoop(spec)
    await until_stopped(loop.run(), loop.progress, loop.processed)
    return {"done": loop.done, "counts": loop.counts}
