"""The worker end to end against the real broker and both stores: exactly-once effects."""

from __future__ import annotations

import json

from aiokafka.partitioner import murmur2

from consumer.deadletter import header
from consumer.store import open_store
from tests import workload
from tests.conditions import eventually
from tests.conftest import TopicFactory
from tests.kafkautil import group_caught_up, produce, read_committed
from tests.workers import Topics, drain, settings_for


def java_partition(key: bytes, partitions: int) -> int:
    """Where Kafka's default partitioner (Java and librdkafka's murmur2) puts a keyed record."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


async def test_reference_payload_yields_one_entry_one_card_update_one_notification(
    kafka_bootstrap: str, topics: Topics, store_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, store_url)
    await produce(kafka_bootstrap, topics.input, [workload.seed_bytes()], partition=0)

    metrics = await drain(settings)

    store = await open_store(store_url)
    try:
        counts = await store.counts()
        card = await store.card(workload.SEED_VOUCHER_ID)
        entry = await store.ledger_entry(workload.SEED_TRANSACTION_ID)
    finally:
        await store.close()
    assert counts.ledger_entries == 1
    assert card is not None
    assert (card.activated_points, card.reported_balance, card.reported_pending) == (23, 23, 46)
    assert card.last_transaction_id == workload.SEED_TRANSACTION_ID
    assert entry is not None
    assert (entry.source.topic, entry.source.partition, entry.source.offset) == (
        topics.input,
        0,
        0,
    )
    notes = await read_committed(kafka_bootstrap, topics.notifications)
    assert len(notes) == 1
    body = json.loads(notes[0].value)
    assert notes[0].key == workload.SEED_CUSTOMER_ID.encode()
    assert body["points_activated"] == 23
    assert body["balance_after"] == 23
    assert body["points_pending"] == 46
    assert body["card"]["code"] == "67028386"
    assert metrics.value("loyalty_consumer_applied_total") == 1


async def test_the_same_event_published_again_yields_nothing_more(
    kafka_bootstrap: str, topics: Topics, store_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, store_url)
    await produce(kafka_bootstrap, topics.input, [workload.seed_bytes()], partition=0)
    await drain(settings)
    wrapped = workload.encode(workload.activation(workload.SEED_TRANSACTION_ID))
    # Later, in the same partition and in another one, bare and wrapped in an envelope.
    await produce(kafka_bootstrap, topics.input, [workload.seed_bytes(), wrapped], partition=0)
    await produce(kafka_bootstrap, topics.input, [workload.seed_bytes()], partition=2)

    metrics = await drain(settings)

    assert metrics.value("loyalty_consumer_duplicates_total") == 3
    assert metrics.value("loyalty_consumer_applied_total") == 0
    assert len(await read_committed(kafka_bootstrap, topics.notifications)) == 1
    store = await open_store(store_url)
    try:
        card = await store.card(workload.SEED_VOUCHER_ID)
        assert (await store.counts()).ledger_entries == 1
    finally:
        await store.close()
    assert card is not None and card.activated_points == 23


async def test_mixed_batch_is_accounted_exactly(
    kafka_bootstrap: str, topics: Topics, store_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, store_url)
    valid = [
        workload.encode(
            workload.activation(f"vtx_mixed{i:04d}", voucher_id=f"v_card{i % 4}", points=i + 1)
        )
        for i in range(40)
    ]
    siblings = [path.read_bytes() for path in workload.sibling_files()]
    garbage: list[bytes | None] = [b"not json", b"\xff\xfe", b"[]", b"{}"]
    duplicates = valid[:10]
    await produce(kafka_bootstrap, topics.input, valid[:20] + garbage[:2], partition=0)
    await produce(kafka_bootstrap, topics.input, siblings + valid[20:], partition=1)
    await produce(kafka_bootstrap, topics.input, duplicates + garbage[2:], partition=2)
    await produce(kafka_bootstrap, topics.input, [None], key=b"tombstone", partition=2)
    garbage.append(None)

    metrics = await drain(settings)

    notes = await read_committed(kafka_bootstrap, topics.notifications)
    letters = await read_committed(kafka_bootstrap, topics.dead_letters)
    assert sorted(json.loads(n.value)["voucherify"]["transaction_id"] for n in notes) == sorted(
        f"vtx_mixed{i:04d}" for i in range(40)
    )
    assert len(letters) == len(garbage)
    assert {header(letter.headers, "dlq.reason_class") for letter in letters} == {"invalid"}
    assert sorted((r.value or b"") for r in letters) == sorted((g or b"") for g in garbage)
    assert all(header(letter.headers, "dlq.reason") for letter in letters)
    assert metrics.value("loyalty_consumer_skipped_total") == len(siblings)
    assert metrics.value("loyalty_consumer_duplicates_total") == len(duplicates)
    assert metrics.value("loyalty_consumer_records_consumed_total") == (
        len(valid) + len(siblings) + len(garbage) + len(duplicates)
    )
    store = await open_store(store_url)
    try:
        assert (await store.counts()).ledger_entries == 40
        totals = {f"v_card{c}": 0 for c in range(4)}
        for i in range(40):
            totals[f"v_card{i % 4}"] += i + 1
        for voucher_id, expected in totals.items():
            card = await store.card(voucher_id)
            assert card is not None and card.activated_points == expected
    finally:
        await store.close()
    await eventually(
        lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
        timeout=30,
        what="the group's committed offsets to reach the end of the input",
    )


async def test_dead_letter_keeps_the_original_record_byte_for_byte(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    broken = workload.activation("vtx_broken")
    broken["data"]["pending_points"]["points"] = -5
    value = workload.encode(broken)
    headers = [("traceparent", b"00-abc-def-01"), ("x-voucherify-signature", b"\x00\x01sig")]
    [offset] = await produce(
        kafka_bootstrap, topics.input, [value], key=b"bridge-key", partition=1, headers=headers
    )

    await drain(settings)

    [letter] = await read_committed(kafka_bootstrap, topics.dead_letters)
    assert letter.key == b"bridge-key"
    assert letter.value == value
    assert list(letter.headers)[: len(headers)] == headers
    assert header(letter.headers, "dlq.source.topic") == topics.input
    assert header(letter.headers, "dlq.source.partition") == "1"
    assert header(letter.headers, "dlq.source.offset") == str(offset)
    assert header(letter.headers, "dlq.attempts") == "1"
    reason = header(letter.headers, "dlq.reason") or ""
    assert "data.pending_points.points" in reason
    assert header(letter.headers, "dlq.time")


async def test_a_record_that_keeps_failing_is_dead_lettered_after_its_attempts(
    kafka_bootstrap: str, topics: Topics, store_url: str
) -> None:
    # The second activation would push the card's total past a 64-bit integer: the store
    # refuses it every time (not an infrastructure failure), so it must not block the rest.
    settings = settings_for(kafka_bootstrap, topics, store_url, max_record_attempts=3)
    huge = workload.activation("vtx_huge", voucher_id="v_full", points=2**63 - 1)
    overflow = workload.activation("vtx_overflow", voucher_id="v_full", points=1)
    others = [workload.activation(f"vtx_ok{i}", voucher_id="v_other") for i in range(3)]
    values = [workload.encode(p) for p in (others[0], huge, overflow, others[1], others[2])]
    offsets = await produce(kafka_bootstrap, topics.input, values, partition=0)

    metrics = await drain(settings)

    [letter] = await read_committed(kafka_bootstrap, topics.dead_letters)
    assert letter.value == values[2]
    assert header(letter.headers, "dlq.reason_class") == "persistent"
    assert header(letter.headers, "dlq.attempts") == "3"
    assert header(letter.headers, "dlq.source.offset") == str(offsets[2])
    assert header(letter.headers, "dlq.reason")
    notes = await read_committed(kafka_bootstrap, topics.notifications)
    assert sorted(json.loads(n.value)["voucherify"]["transaction_id"] for n in notes) == [
        "vtx_huge",
        "vtx_ok0",
        "vtx_ok1",
        "vtx_ok2",
    ]
    assert (
        metrics.value("loyalty_consumer_dead_lettered_total", {"reason_class": "persistent"}) == 1
    )
    store = await open_store(store_url)
    try:
        full = await store.card("v_full")
        assert full is not None and full.activated_points == 2**63 - 1
        assert await store.ledger_entry("vtx_overflow") is None
    finally:
        await store.close()
    await eventually(
        lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
        timeout=30,
        what="the group's committed offsets to reach the end of the input",
    )


async def test_at_least_once_mode_applies_once_and_commits_offsets(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    settings = settings_for(kafka_bootstrap, topics, sqlite_url, delivery_mode="at-least-once")
    values = [workload.encode(workload.activation(f"vtx_alo{i}")) for i in range(5)]
    await produce(kafka_bootstrap, topics.input, values + values[:2] + [b"junk"], partition=1)

    metrics = await drain(settings)

    assert metrics.value("loyalty_consumer_applied_total") == 5
    assert metrics.value("loyalty_consumer_duplicates_total") == 2
    assert len(await read_committed(kafka_bootstrap, topics.notifications)) == 5
    assert len(await read_committed(kafka_bootstrap, topics.dead_letters)) == 1
    await eventually(
        lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
        timeout=30,
        what="the group's committed offsets to reach the end of the input",
    )


async def test_outputs_go_to_the_key_partition_in_input_order(
    kafka_bootstrap: str, new_topic: TopicFactory, sqlite_url: str
) -> None:
    """Notifications and dead letters are queued as one record batch per output partition:
    each must still land where Kafka's default partitioner puts its key, in input order,
    and a dead letter too large for a batch still arrives whole."""
    topics = Topics(
        input=await new_topic("in", partitions=2),
        notifications=await new_topic("notify", partitions=5),
        dead_letters=await new_topic("dlq", partitions=3),
    )
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    customers = [f"cust_part{c:02d}" for c in range(17)]
    valid = [
        workload.encode(
            workload.activation(
                f"vtx_part{i:04d}", voucher_id=f"v_part{i % 9}", customer_id=customers[i % 17]
            )
        )
        for i in range(300)
    ]
    large = b'{"padding": "' + b"x" * 300_000 + b'"'  # not JSON: dead-lettered whole
    await produce(kafka_bootstrap, topics.input, valid[:150], partition=0)
    await produce(kafka_bootstrap, topics.input, [*valid[150:], large], partition=1)
    await produce(kafka_bootstrap, topics.input, [b"not json"], key=b"bridge-key", partition=0)

    await drain(settings)

    notes = await read_committed(kafka_bootstrap, topics.notifications)
    assert len(notes) == len(valid)
    for note in notes:
        assert note.key is not None
        assert note.partition == java_partition(note.key, 5), note.key
    for partition in range(5):
        numbers = [
            int(json.loads(n.value)["voucherify"]["transaction_id"].removeprefix("vtx_part"))
            for n in notes
            if n.partition == partition
        ]
        # Within an output partition, each input partition's records keep their order.
        assert [n for n in numbers if n < 150] == sorted(n for n in numbers if n < 150)
        assert [n for n in numbers if n >= 150] == sorted(n for n in numbers if n >= 150)
    letters = await read_committed(kafka_bootstrap, topics.dead_letters)
    assert sorted(len(letter.value or b"") for letter in letters) == [8, len(large)]
    keyed = next(letter for letter in letters if letter.key == b"bridge-key")
    assert keyed.partition == java_partition(b"bridge-key", 3)
