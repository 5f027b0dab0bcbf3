"""Issue #14, item 3: nothing of an older ownership epoch touches the store or Kafka.

Found by reading: a batch classified while a rebalance revokes its partitions could still
be applied and committed (the loop compares rebalance counts only when a batch is in
flight), and an evicted replica that wakes with a batch in flight can re-initialise a
partition's producer (aiokafka's assignment stays stale until SyncGroup) and so fence the
partition's real owner. Both are tried here against the real broker and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import pytest

from consumer.audit import audit
from consumer.metrics import Metrics
from consumer.store import open_store
from consumer.worker import Hooks, Worker
from tests import workload
from tests.conditions import eventually
from tests.conftest import TopicFactory
from tests.eo_support import WorkerProcess, notified_ids, process_environment
from tests.kafkautil import committed_offsets, end_offsets, group_caught_up, produce, read_committed
from tests.workers import Topics, settings_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

PARTITIONS = 6


async def _partitions_done(bootstrap: str, group: str, topic: str) -> int:
    """Input partitions whose committed offset is at their (non-zero) end."""
    ends = await end_offsets(bootstrap, topic)
    committed = await committed_offsets(bootstrap, group, topic)
    return sum(1 for p, end in ends.items() if end and committed.get(p) == end)


async def test_a_batch_classified_before_a_rebalance_is_not_applied_after_it(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    """Replica A classifies its first batch (all six partitions) and is held there, with no
    lock, while replica B joins, takes its share of the partitions and commits them; then A
    is released. A's batch belongs to the generation before the rebalance: applying or
    committing any of it re-does work (B's partitions) or commits offsets A's new position
    does not know about (its own). So: every notification exactly once, a clean audit, and
    no replays anywhere (no transaction was ever aborted, so a replay is re-done work)."""
    topics = Topics(
        await new_topic("in", partitions=PARTITIONS),
        await new_topic("notify"),
        await new_topic("dlq"),
    )
    settings = settings_for(kafka_bootstrap, topics, postgres_url, batch_max_records=1000)
    ids = [f"vtx_epoch{i:03d}" for i in range(10 * PARTITIONS)]
    markers = [f"vtx_epoch_after{p}" for p in range(PARTITIONS)]
    for partition in range(PARTITIONS):
        await produce(
            kafka_bootstrap,
            topics.input,
            [workload.encode(workload.activation(tx)) for tx in ids[partition::PARTITIONS]],
            partition=partition,
        )
    stuck, release = asyncio.Event(), asyncio.Event()

    async def hold_the_first_batch() -> None:
        if not stuck.is_set():
            stuck.set()
            await release.wait()

    store_a = await open_store(postgres_url, migrate=True)
    store_b = await open_store(postgres_url)
    metrics_a, metrics_b = Metrics(), Metrics()
    worker_a = Worker(
        settings, store_a, metrics=metrics_a, hooks=Hooks(after_classify=hold_the_first_batch)
    )
    worker_b = Worker(settings, store_b, metrics=metrics_b)
    run_a = asyncio.create_task(worker_a.run())
    run_b: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(stuck.wait(), 60)
        run_b = asyncio.create_task(worker_b.run())

        async def b_committed_its_share() -> bool:
            share = int(metrics_b.value("loyalty_consumer_assigned_partitions"))
            done = await _partitions_done(kafka_bootstrap, settings.consumer_group, topics.input)
            return 0 < share < PARTITIONS and done == share

        await eventually(b_committed_its_share, what="B to take its share over and commit it")
        release.set()
        await eventually(
            lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
            what="the whole input to be committed",
        )
        # One more record a partition: each owner then reads on from its own position, so
        # whatever a stale commit skipped over is read (and notified) before it.
        for partition, tx in enumerate(markers):
            await produce(
                kafka_bootstrap,
                topics.input,
                [workload.encode(workload.activation(tx))],
                partition=partition,
            )
        await eventually(
            lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
            what="the records after the rebalance to be committed",
        )
    finally:
        release.set()
        worker_a.stop()
        worker_b.stop()
        outcomes = await asyncio.gather(run_a, *([run_b] if run_b else []), return_exceptions=True)
        await store_a.close()
        await store_b.close()
    times = notified_ids(await read_committed(kafka_bootstrap, topics.notifications))
    repeated = {tx: n for tx, n in times.items() if n != 1}
    assert repeated == {}, f"{len(repeated)} ids notified more than once"
    assert set(times) == {*ids, *markers}
    replays = {
        "A": metrics_a.value("loyalty_consumer_replays_total"),
        "B": metrics_b.value("loyalty_consumer_replays_total"),
    }
    assert replays == {"A": 0, "B": 0}, f"work re-done after the rebalance: {replays}"
    applied = metrics_a.value("loyalty_consumer_applied_total") + metrics_b.value(
        "loyalty_consumer_applied_total"
    )
    assert applied == len(ids) + len(markers)
    report = await audit(settings)
    assert report.ok, report.summary()
    assert outcomes == [None, None]


# When to freeze the replica, after it logged a batch's commit: its next batch is then
# applied to the store, then committed in Kafka; the Kafka transaction is where an old epoch
# can hurt, and where each phase falls depends on the machine, so each cycle tries another
# moment. Part of the fault, not a synchronisation.
FREEZE_DELAYS_S = (0.02, 0.05, 0.08, 0.12)


@pytest.mark.slow
async def test_an_evicted_replica_waking_with_a_batch_in_flight_never_fences_the_owner(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    """A worker process is frozen (SIGSTOP) while it works through a steady stream, for
    longer than its session and its RETRY_ATTEMPT_TIMEOUT_S, so its batch in flight times
    out as it wakes. Meanwhile a second process took every partition over. The woken
    replica belongs to an older epoch: it must not initialise a partition's producer again
    (that fences the real owner, whose transaction then fails). Repeated a few times: the
    owner never logs `partition.fenced`, and the run ends exactly once (clean audit)."""
    topics = Topics(
        await new_topic("in", partitions=PARTITIONS),
        await new_topic("notify"),
        await new_topic("dlq"),
    )
    settings = settings_for(
        kafka_bootstrap,
        topics,
        postgres_url,
        batch_max_records=200,
        session_timeout_ms=3000,
        heartbeat_interval_ms=1000,
        retry_attempt_timeout_s=2,
    )
    store = await open_store(postgres_url, migrate=True)
    await store.close()
    env = process_environment(settings, SHUTDOWN_TIMEOUT_S="20")
    zombie, owner = WorkerProcess(dict(env)), WorkerProcess(dict(env))
    published = 0
    streaming = True

    async def stream() -> None:
        nonlocal published
        while streaming:
            batch = [
                workload.encode(workload.activation(f"vtx_evict{published + i:05d}"))
                for i in range(60)
            ]
            await produce(kafka_bootstrap, topics.input, batch)
            published += len(batch)
            await asyncio.sleep(0.05)  # the stream's pace, not a synchronisation

    streamer = asyncio.create_task(stream())
    try:
        await zombie.start()
        await zombie.wait_for("batch.committed", count=3)
        await owner.start()
        # Both members of the group, each with its share, before the first freeze.
        await owner.wait_for("partitions.assigned")
        await zombie.wait_for("partitions.assigned", count=2)
        for cycle, delay in enumerate(FREEZE_DELAYS_S):
            await zombie.wait_for("batch.committed", count=len(zombie.named("batch.committed")) + 1)
            await asyncio.sleep(delay)
            zombie.signal(signal.SIGSTOP)
            owned = len(owner.named("partitions.assigned"))
            await owner.wait_for("partitions.assigned", count=owned + 1)
            assert owner.named("partitions.assigned")[-1]["partitions"] == list(range(PARTITIONS))
            await owner.wait_for("batch.committed", count=len(owner.named("batch.committed")) + 3)
            zombie.signal(signal.SIGCONT)
            # Back: it rejoins, and the owner hands part of the work back.
            await owner.wait_for("partitions.assigned", count=owned + 2, timeout=90)
            await owner.wait_for("batch.committed", count=len(owner.named("batch.committed")) + 3)
            assert not owner.named("partition.fenced"), (
                f"cycle {cycle}: the woken replica fenced the owner:\n"
                + "\n".join(json.dumps(e) for e in owner.named("partition.fenced"))
            )
        streaming = False
        await streamer
        await eventually(
            lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
            timeout=90,
            what="the two replicas to finish the input",
        )
        codes = [await zombie.stop(), await owner.stop()]
    finally:
        streaming = False
        with contextlib.suppress(Exception):
            await streamer
        await zombie.kill()
        await owner.kill()
    assert codes == [0, 0]
    times = notified_ids(await read_committed(kafka_bootstrap, topics.notifications))
    assert {tx: n for tx, n in times.items() if n != 1} == {}
    assert len(times) == published
    report = await audit(settings)
    assert report.ok, report.summary()
