"""Issue #14, item 2: a dead-lettered activation leaves no half-effect that cannot be repaired.

When a batch's Kafka transaction fails for a non-retriable reason after its database commit
(here: a notification larger than the topic's max.message.bytes), the records are dead-
lettered while their ledger entries and points stay. The fix keeps them and records that
the notification is owed, so that replaying the dead letters, once the topic is fixed, emits
each notification exactly once and changes no points.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import datetime

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumer.audit import audit
from consumer.config import Settings
from consumer.store import open_store
from tests import workload
from tests.conftest import TopicFactory
from tests.eo_support import notified_ids
from tests.kafkautil import produce, read_committed
from tests.workers import Topics, drain, settings_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

TOO_SMALL = "300"  # bytes: smaller than any notification
KAFKA_DEFAULT = "1048588"


def replay_dead_letters(settings: Settings) -> subprocess.CompletedProcess[str]:
    """`loyalty-consumer dlq replay`, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        DATABASE_URL=settings.database_url,
        INPUT_TOPIC=settings.input_topic,
        NOTIFICATION_TOPIC=settings.notification_topic,
        DEAD_LETTER_TOPIC=settings.dead_letter_topic,
        CONSUMER_GROUP=settings.consumer_group,
        TRANSACTIONAL_ID_PREFIX=settings.transactional_id_prefix,
    )
    return subprocess.run(
        [sys.executable, "-m", "consumer", "dlq", "replay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_dead_letters_of_a_refused_notification_emit_it_once_when_replayed(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    new_topic: TopicFactory,
    postgres_url: str,
) -> None:
    """3 activations whose notifications the topic refuses (max.message.bytes=300) are
    dead-lettered; after the limit is raised and the dead letters replayed, each has exactly
    one committed notification, and the ledger entries and card points are those of the
    first run, untouched by the replay."""
    refusing = f"notify-{uuid.uuid4().hex[:12]}"
    await kafka_admin.create_topics(
        [NewTopic(refusing, 1, 1, topic_configs={"max.message.bytes": TOO_SMALL})]
    )
    topics = Topics(await new_topic("in"), refusing, await new_topic("dlq"))
    settings = settings_for(kafka_bootstrap, topics, postgres_url)
    ids = [f"vtx_owed{i}" for i in range(3)]
    await _publish(kafka_bootstrap, topics.input, ids)

    await asyncio.wait_for(drain(settings), 90)

    assert len(await read_committed(kafka_bootstrap, topics.dead_letters)) == 3
    assert await read_committed(kafka_bootstrap, topics.notifications) == []
    entries, points = await _ledger(postgres_url, ids)
    assert sorted(entries) == ids  # kept: the points stay, the notification is owed

    await kafka_admin.alter_configs(
        [
            ConfigResource(
                ConfigResourceType.TOPIC, refusing, configs={"max.message.bytes": KAFKA_DEFAULT}
            )
        ]
    )
    replayed = await asyncio.to_thread(replay_dead_letters, settings)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    await asyncio.wait_for(drain(settings), 90)

    notes = await read_committed(kafka_bootstrap, topics.notifications)
    times = notified_ids(notes)
    assert times == dict.fromkeys(ids, 1), f"committed notifications per id: {dict(times)}"
    assert await _ledger(postgres_url, ids) == (entries, points)
    report = await audit(settings)
    assert report.ok, report.summary()


async def _publish(bootstrap: str, topic: str, ids: list[str]) -> None:
    await produce(
        bootstrap,
        topic,
        [workload.encode(workload.activation(tx, voucher_id="v_owed")) for tx in ids],
    )


Applied = tuple[str, int, datetime]  # card, points, applied at


async def _ledger(url: str, ids: list[str]) -> tuple[dict[str, Applied], int | None]:
    """What the ledger applied for `ids`, and the card's activated points. Not the entries'
    source or whether a notification is still owed: the replay that pays the notification
    may move both (the replayed record then owns it)."""
    store = await open_store(url)
    try:
        entries = {
            tx: (e.voucher_id, e.points, e.applied_at)
            for tx in ids
            if (e := await store.ledger_entry(tx)) is not None
        }
        card = await store.card("v_owed")
        assert (await store.counts()).ledger_entries == len(entries)
    finally:
        await store.close()
    return entries, None if card is None else card.activated_points
