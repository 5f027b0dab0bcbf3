"""The README's first command: the reference event flows through to a printed notification.

Run by `make demo` after the local broker is up. Publishes the reference payload, a
duplicate of it, a sibling event and a malformed record; runs the worker on SQLite until
the input is drained; then shows what a downstream consumer (read_committed) sees.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer import logs
from consumer.config import Settings
from consumer.deadletter import header
from consumer.metrics import Metrics
from consumer.ops import publish_records
from consumer.store import open_store
from consumer.worker import Worker

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT.parent / "shared" / "contracts" / "voucherify" / "examples"
SEED = EXAMPLES / "seed-voucher-loyalty-card-pending-points-activated.json"
SIBLING = EXAMPLES / "voucher-loyalty-card-points-added.json"


def _section(title: str) -> None:
    print(f"\n== {title}")


async def _create_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(settings.input_topic, num_partitions=3, replication_factor=1),
                NewTopic(settings.notification_topic, num_partitions=1, replication_factor=1),
                NewTopic(settings.dead_letter_topic, num_partitions=1, replication_factor=1),
            ]
        )
    finally:
        await admin.close()


async def _read_committed(settings: Settings, topic: str) -> list[object]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records: list[object] = []
        while await consumer.position(tp) < end:
            records.extend((await consumer.getmany(tp, timeout_ms=1000)).get(tp, []))
        return records
    finally:
        await consumer.stop()


async def main() -> int:
    run_id = uuid.uuid4().hex[:8]
    db_path = ROOT / ".run" / "demo" / f"loyalty-{run_id}.db"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        kafka_bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        database_url=f"sqlite:///{db_path}",
        input_topic=f"demo.voucherify.webhooks.{run_id}",
        notification_topic=f"demo.loyalty.notifications.{run_id}",
        dead_letter_topic=f"demo.voucherify.webhooks.dlq.{run_id}",
        consumer_group=f"demo-{run_id}",
        transactional_id_prefix=f"demo-{run_id}",
        http_port=0,
        log_format="console",
        log_level="WARNING",
    )
    logs.configure(settings.log_format, settings.log_level)
    await _create_topics(settings)

    _section(f"publishing 4 records to {settings.input_topic}")
    seed = SEED.read_bytes()
    payloads = [
        ("reference payload", seed),
        ("the same payload again (a Voucherify retry)", seed),
        ("a sibling event (points_added)", SIBLING.read_bytes()),
        ("a malformed record", b'{"transaction": {"id": "vtx_demo"}, "pending_points": '),
    ]
    placed = await publish_records(settings, settings.input_topic, payloads, key="demo")
    for (what, _), (partition, offset) in zip(payloads, placed, strict=True):
        print(f"  {what:45} -> partition {partition}, offset {offset}")

    _section("running the worker on SQLite until the input is drained")
    store = await open_store(settings.database_url, migrate=True)
    metrics = Metrics()
    try:
        await Worker(settings, store, metrics=metrics, burst=True).run()
        card = await store.card("v_bITntTcyfRHPvrOMgwdQVSlShsWRZu4v")
    finally:
        await store.close()
    print(f"  store: {db_path.relative_to(ROOT)}")

    _section(f"notification from {settings.notification_topic}, read as a consumer would")
    for record in await _read_committed(settings, settings.notification_topic):
        print("  key:    ", record.key.decode())  # type: ignore[attr-defined]
        print("  headers:", {k: v.decode() for k, v in record.headers})  # type: ignore[attr-defined]
        body = json.loads(record.value)  # type: ignore[attr-defined]
        print("  value:  ", json.dumps(body, indent=2).replace("\n", "\n           "))

    _section("card balance in the store")
    if card is not None:
        print(
            f"  voucher {card.voucher_id}: activated by us {card.activated_points}, "
            f"Voucherify balance {card.reported_balance}, still pending {card.reported_pending}"
        )

    _section(f"dead-lettered, from {settings.dead_letter_topic}")
    for record in await _read_committed(settings, settings.dead_letter_topic):
        headers = record.headers  # type: ignore[attr-defined]
        source, at, reason = (
            header(headers, f"dlq.{name}") for name in ("source.topic", "source.offset", "reason")
        )
        where = header(headers, "dlq.source.partition")
        print(f"  from {source}[{where}]@{at}: {reason}")

    _section("counts")
    for name in ("records_consumed", "applied", "duplicates", "replays", "skipped"):
        print(f"  {name:17} {int(metrics.value(f'loyalty_consumer_{name}_total'))}")
    dead = metrics.value("loyalty_consumer_dead_lettered_total", {"reason_class": "invalid"})
    print(f"  {'dead_lettered':17} {int(dead)}")
    applied = metrics.value("loyalty_consumer_applied_total")
    return 0 if applied == 1 and dead == 1 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
