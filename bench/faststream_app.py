"""Contender `faststream`: the job as a FastStream user writes it from FastStream's documentation.

One `@broker.subscriber` handler a message, in a consumer group, committed after the handler
returns (`AckPolicy.ACK`: the documentation's setting for at-least-once; its default,
`ACK_FIRST`, auto-commits before the work is done and is at most once). The handler
validates the value with the project's own `classify` (as the naive loop does, so the
comparison is about the framework's loop, not the validator). A custom decoder (a documented
FastStream hook) hands it the value's bytes: by default FastStream parses every JSON body
before the handler runs, which a real application would use instead of a second parse,
and which cost ~1 ms a 4.6 KB value here. The handler then writes the ledger row and the
card in one PostgreSQL transaction (`ON CONFLICT (transaction_id) DO NOTHING`, the card's
reported figures from its newest transaction, as our store keeps them), then publishes the
notification with the worker's bytes through `broker.publisher`, or the record to the
dead-letter topic. FastStream has no Kafka transactions: a crash between the database
commit and the publish leaves that notification unsent (the redelivery finds the row), so
this is at-least-once for the ledger and at-most-once for notifications, not exactly-once.
Everything else is FastStream's defaults, its per-message log lines included (sent to this
process's log file instead of the standard output, which carries the progress reports).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from aiokafka import ConsumerRebalanceListener, TopicPartition
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from bench.contender import Progress, Spec, until_stopped
from bench.ours import settings_for
from consumer.events import Apply, Invalid, classify
from consumer.transform import notification_record

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    transaction_id   text COLLATE "C" PRIMARY KEY,
    voucher_id       text NOT NULL,
    customer_id      text NOT NULL,
    campaign_id      text NOT NULL,
    points           bigint NOT NULL,
    reported_balance bigint NOT NULL,
    reported_pending bigint NOT NULL,
    occurred_at      timestamptz NOT NULL,
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    applied_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cards (
    voucher_id          text PRIMARY KEY,
    activated_points    bigint NOT NULL,
    reported_balance    bigint NOT NULL,
    reported_pending    bigint NOT NULL,
    last_transaction_id text COLLATE "C" NOT NULL,
    last_transaction_at timestamptz NOT NULL
);
"""
INSERT_ENTRY = """
INSERT INTO ledger (transaction_id, voucher_id, customer_id, campaign_id, points,
                    reported_balance, reported_pending, occurred_at,
                    source_topic, source_partition, source_offset)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (transaction_id) DO NOTHING RETURNING true
"""
ADD_POINTS = """
INSERT INTO cards AS card (voucher_id, activated_points, reported_balance, reported_pending,
                           last_transaction_id, last_transaction_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (voucher_id) DO UPDATE SET
    activated_points = card.activated_points + excluded.activated_points,
    reported_balance = CASE WHEN newer THEN excluded.reported_balance
                            ELSE card.reported_balance END,
    reported_pending = CASE WHEN newer THEN excluded.reported_pending
                            ELSE card.reported_pending END,
    last_transaction_id = CASE WHEN newer THEN excluded.last_transaction_id
                               ELSE card.last_transaction_id END,
    last_transaction_at = CASE WHEN newer THEN excluded.last_transaction_at
                               ELSE card.last_transaction_at END
"""
# PostgreSQL has no alias for a condition in DO UPDATE, so `newer` is spelled out once here.
ADD_POINTS = ADD_POINTS.replace(
    "newer",
    "(excluded.last_transaction_at, excluded.last_transaction_id)"
    " > (card.last_transaction_at, card.last_transaction_id)",
)
LEDGER_ROWS = "SELECT count(*) FROM ledger"


def access_logger() -> logging.Logger:
    """FastStream's own log lines, on the standard error (the harness's log file)."""
    logger = logging.getLogger("bench.faststream")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class _Ready(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            self._progress.ready()


class FastStreamJob:
    """The application: a broker, one subscriber, two publishers and a connection pool."""

    def __init__(self, spec: Spec) -> None:
        settings = settings_for(spec)
        self.spec = spec
        self.source = settings.cloudevents_source
        self.counts = {"applied": 0, "duplicates": 0, "skipped": 0, "dead_lettered": 0}
        self.handled = 0
        self.pool: Any = None
        self.broker = KafkaBroker(spec.bootstrap, logger=access_logger())
        self.app = FastStream(self.broker, logger=access_logger())
        self.app.on_startup(self.connect)
        self.app.after_shutdown(self.disconnect)
        self.progress = Progress(spec.target, self.app.exit)
        self.notifications = self.broker.publisher(spec.output_topic)
        self.dead_letters = self.broker.publisher(spec.dead_letter_topic)
        self.broker.subscriber(
            spec.input_topic,
            group_id=spec.group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
            listener=_Ready(self.progress),
            decoder=_value_bytes,
        )(self.handle)

    async def connect(self) -> None:
        self.pool = await asyncpg.create_pool(self.spec.database_url, min_size=1, max_size=2)
        async with self.pool.acquire() as connection:
            await connection.execute(SCHEMA)

    async def disconnect(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def handle(self, body: bytes, msg: KafkaMessage) -> None:
        verdict = classify(body)
        if isinstance(verdict, Apply):
            await self.apply(verdict, msg)
        elif isinstance(verdict, Invalid):
            record = _record(msg)
            await self.dead_letters.publish(
                record.value, key=record.key, headers={"reason": verdict.reason}
            )
            self.counts["dead_lettered"] += 1
        else:
            self.counts["skipped"] += 1
        self.handled += 1

    async def apply(self, verdict: Apply, msg: KafkaMessage) -> None:
        activation = verdict.activation
        record = _record(msg)
        async with self.pool.acquire() as connection, connection.transaction():
            inserted = await connection.fetchval(
                INSERT_ENTRY,
                activation.transaction_id,
                activation.voucher_id,
                activation.customer_id,
                activation.campaign_id,
                activation.points,
                activation.balance,
                activation.pending_points,
                activation.activated_at,
                record.topic,
                record.partition,
                record.offset,
            )
            if inserted:
                await connection.execute(
                    ADD_POINTS,
                    activation.voucher_id,
                    activation.points,
                    activation.balance,
                    activation.pending_points,
                    activation.transaction_id,
                    activation.activated_at,
                )
        if not inserted:
            self.counts["duplicates"] += 1
            return
        key, value, headers = notification_record(activation, source=self.source)
        await self.notifications.publish(
            value, key=key, headers={name: raw.decode() for name, raw in headers}
        )
        self.counts["applied"] += 1


async def _value_bytes(msg: KafkaMessage) -> bytes:
    """The decoder: the record's value as it is (`classify` parses it)."""
    return bytes(msg.body)


def _record(msg: KafkaMessage) -> Any:
    """The aiokafka record behind a message (a tuple only for batch subscribers)."""
    record = msg.raw_message
    assert not isinstance(record, tuple), "one message a call: not a batch subscriber"
    return record


async def run_faststream(spec: Spec) -> dict[str, Any]:
    job = FastStreamJob(spec)
    await until_stopped(job.app.run(), job.progress, lambda: job.handled)
    return {"done": job.handled, "counts": job.counts}
