"""Garbage through the real worker: arbitrary bytes and damaged reference payloads, mixed with
good records, on a real broker and SQLite. No crash, no stalled partition, every bad record in
the dead-letter topic with its reason, every good one applied once: the audit accounts for it.

`classify` is fuzzed on its own in test_events.py; here the whole path is (decode, validate,
store, notification, dead letter, transaction), a few batches of a few dozen records each.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from consumer import deadletter
from consumer.audit import audit
from consumer.events import Apply, classify, classify_exactly
from consumer.workload import activation_payload
from tests.damage import damaged, mutations
from tests.kafkautil import produce, read_committed
from tests.workers import Topics, drain, settings_for

pytestmark = pytest.mark.kafka

PARTITIONS = 2
DRAIN_TIMEOUT_S = 60

encodings = st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1", "bom", "cut"])


@dataclass(frozen=True)
class Recipe:
    """One record to build: a seed-shaped activation, damaged or not, or raw bytes."""

    raw: bytes | None
    envelope: bool
    points: int
    damage: tuple[tuple[str, tuple[str, ...], Any], ...]
    encoding: str


seed_shaped = st.builds(
    Recipe,
    raw=st.none(),
    envelope=st.booleans(),
    points=st.integers(1, 10**6),
    damage=st.lists(mutations, max_size=3).map(tuple),
    encoding=encodings,
)
raw_bytes = st.builds(
    Recipe,
    raw=st.binary(max_size=400) | st.sampled_from([b"", b"null", b"{}", b"[]", b'{"data":{}}']),
    envelope=st.just(False),
    points=st.just(0),
    damage=st.just(()),
    encoding=st.just("utf-8"),
)
recipes = st.one_of(seed_shaped, seed_shaped, seed_shaped, raw_bytes)  # mostly damaged payloads


def _encoded(text: str, encoding: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    if encoding == "utf-16":
        return text.encode("utf-16", "surrogatepass")
    if encoding == "latin-1":
        return text.encode("latin-1", "replace")
    if encoding == "bom":
        return b"\xef\xbb\xbf" + raw
    if encoding == "cut":
        return raw[: len(raw) // 2]
    return raw


def build(recipe: Recipe, serial: int) -> bytes | None:
    if recipe.raw is not None or recipe.points == 0:
        return recipe.raw
    moment = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=serial)
    document = activation_payload(
        f"vtx_fuzz{uuid.uuid4().hex[:14]}",
        voucher_id=f"v_fuzz{serial % 5}",
        customer_id=f"cust_fuzz{serial % 3}",
        points=recipe.points,
        balance=recipe.points,
        pending=0,
        created_at=moment,
        envelope=recipe.envelope,
    )
    for mutation in recipe.damage:
        damaged(document, mutation)
    return _encoded(json.dumps(document, ensure_ascii=serial % 2 == 0), recipe.encoding)


async def _topics(bootstrap: str) -> Topics:
    stem = uuid.uuid4().hex[:12]
    topics = Topics(f"fuzz-in-{stem}", f"fuzz-notify-{stem}", f"fuzz-dlq-{stem}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topics.input, PARTITIONS, 1),
                NewTopic(topics.notifications, 1, 1),
                NewTopic(topics.dead_letters, 1, 1),
            ]
        )
    finally:
        await admin.close()
    return topics


async def _through_the_worker(bootstrap: str, database: Path, values: list[bytes | None]) -> None:
    topics = await _topics(bootstrap)
    for partition in range(PARTITIONS):
        await produce(bootstrap, topics.input, values[partition::PARTITIONS], partition=partition)
    settings = settings_for(bootstrap, topics, f"sqlite:///{database}", batch_max_records=25)

    await asyncio.wait_for(drain(settings), DRAIN_TIMEOUT_S)  # no crash, no stall

    report = await audit(settings)
    assert report.ok, report.summary()
    assert report.records == len(values)
    good = sum(isinstance(classify(value), Apply) for value in values)
    assert report.applied + report.duplicates == good
    for letter in await read_committed(bootstrap, topics.dead_letters):
        headers = list(letter.headers)
        assert deadletter.header(headers, deadletter.REASON), "a dead letter without a reason"
        assert deadletter.header(headers, deadletter.REASON_CLASS) == "invalid"


@settings(
    max_examples=8,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # one example takes seconds: no shrink
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(recipes, min_size=20, max_size=70))
def test_garbage_among_good_records_is_dead_lettered_and_the_rest_applied_exactly_once(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, batch: list[Recipe]
) -> None:
    values = [build(recipe, serial) for serial, recipe in enumerate(batch)]
    # Some good records always sit between the bad ones: the partition must move past them.
    values += [build(Recipe(None, True, 7, (), "utf-8"), len(values) + n) for n in range(4)]
    database = tmp_path_factory.mktemp("fuzz") / "loyalty.db"

    asyncio.run(_through_the_worker(kafka_bootstrap, database, values))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipe=recipes, serial=st.integers(0, 1000))
def test_damaged_payloads_get_the_exact_verdict(recipe: Recipe, serial: int) -> None:
    """The worker's fast `classify` against the standard library's reference, no broker needed."""
    value = build(recipe, serial)
    assert classify(value) == classify_exactly(value)
