"""Replicas in one group, and a database outage: slower, never lossy, never double."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from consumer.http import readiness
from consumer.metrics import Metrics
from consumer.store import open_store
from consumer.worker import Hooks, Worker
from tests import services, workload
from tests.conditions import eventually
from tests.conftest import TopicFactory
from tests.kafkautil import group_caught_up, produce, read_committed
from tests.workers import Topics, settings_for


async def test_two_replicas_split_the_work_and_one_takes_over_when_the_other_stops(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    topics = Topics(
        await new_topic("in", partitions=4), await new_topic("notify"), await new_topic("dlq")
    )
    settings = settings_for(kafka_bootstrap, topics, postgres_url, batch_max_records=10)
    events = [
        workload.encode(workload.activation(f"vtx_group{i:05d}", voucher_id=f"v_g{i % 7}"))
        for i in range(400)
    ]
    for partition in range(4):
        await produce(kafka_bootstrap, topics.input, events[partition::4], partition=partition)
    store_a = await open_store(postgres_url, migrate=True)
    store_b = await open_store(postgres_url)
    first, second = Metrics(), Metrics()
    worker_a = Worker(settings, store_a, metrics=first)
    worker_b = Worker(settings, store_b, metrics=second)
    run_a = asyncio.create_task(worker_a.run())
    run_b = asyncio.create_task(worker_b.run())
    try:
        await eventually(
            lambda: (
                first.value("loyalty_consumer_applied_total") > 0
                and second.value("loyalty_consumer_applied_total") > 0
            ),
            what="both replicas applying",
        )
        worker_a.stop()
        await asyncio.wait_for(run_a, 60)
        await eventually(
            lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
            what="the remaining replica to finish the input",
        )
    finally:
        worker_a.stop()
        worker_b.stop()
        await asyncio.gather(run_a, run_b, return_exceptions=True)
        await store_a.close()
    try:
        assert (await store_b.counts()).ledger_entries == 400
        for card in range(7):
            state = await store_b.card(f"v_g{card}")
            assert state is not None
            assert state.activated_points == 23 * len(range(card, 400, 7))
    finally:
        await store_b.close()
    notes = await read_committed(kafka_bootstrap, topics.notifications)
    ids = [json.loads(n.value)["voucherify"]["transaction_id"] for n in notes]
    assert sorted(ids) == sorted(f"vtx_group{i:05d}" for i in range(400))
    applied = first.value("loyalty_consumer_applied_total") + second.value(
        "loyalty_consumer_applied_total"
    )
    assert applied == 400


def _pg(action: str) -> None:
    subprocess.run(
        ["bash", str(services.ROOT / "scripts" / "pg.sh"), action],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def controllable_postgres(postgres_url: str) -> str:
    if not (services.ROOT / ".run" / "pg" / "port").exists():
        message = "this test stops and starts the project's own PostgreSQL (scripts/pg.sh)"
        if services.in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return postgres_url


async def test_database_outage_delays_but_loses_and_duplicates_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, controllable_postgres: str
) -> None:
    topics = Topics(
        await new_topic("in", partitions=2), await new_topic("notify"), await new_topic("dlq")
    )
    settings = settings_for(
        kafka_bootstrap, topics, controllable_postgres, retry_attempt_timeout_s=5
    )
    store = await open_store(controllable_postgres, migrate=True)
    metrics = Metrics()
    worker = Worker(settings, store, metrics=metrics)
    running = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: worker.health.assigned > 0, what="partitions assigned")
        await asyncio.to_thread(_pg, "stop")
        try:
            events = [workload.encode(workload.activation(f"vtx_outage{i:04d}")) for i in range(50)]
            await produce(kafka_bootstrap, topics.input, events)
            await eventually(
                lambda: metrics.value("loyalty_consumer_retries_total", {"cause": "store"}) >= 2,
                what="the worker retrying the store",
            )
            assert not (await readiness(worker, store)).ready
        finally:
            await asyncio.to_thread(_pg, "start")
        await eventually(
            lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
            what="processing to resume after the database came back",
        )
        assert (await readiness(worker, store)).ready
    finally:
        worker.stop()
        await asyncio.wait_for(running, 60)
    try:
        assert (await store.counts()).ledger_entries == 50
        card = await store.card(workload.SEED_VOUCHER_ID)
        assert card is not None and card.activated_points == 50 * 23
    finally:
        await store.close()
    assert len(await read_committed(kafka_bootstrap, topics.notifications)) == 50
    assert await read_committed(kafka_bootstrap, topics.dead_letters) == []
    assert metrics.value("loyalty_consumer_dead_lettered_total", {"reason_class": "invalid"}) == 0


async def test_a_zombie_that_wakes_after_losing_its_partition_is_fenced(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    """The replica stuck between its database commit and its Kafka commit loses the
    partition; the new owner re-emits (replays); the zombie's late transaction must fail."""
    topics = Topics(await new_topic("in"), await new_topic("notify"), await new_topic("dlq"))
    settings = settings_for(
        kafka_bootstrap, topics, postgres_url, max_poll_interval_ms=6000, session_timeout_ms=6000
    )
    ids = [f"vtx_zombie{i}" for i in range(5)]
    await produce(
        kafka_bootstrap, topics.input, [workload.encode(workload.activation(tx)) for tx in ids]
    )
    stuck, release = asyncio.Event(), asyncio.Event()

    async def hang_after_database_commit() -> None:
        stuck.set()
        await release.wait()

    zombie_store = await open_store(postgres_url, migrate=True)
    owner_store = await open_store(postgres_url)
    zombie_metrics, owner_metrics = Metrics(), Metrics()
    zombie = Worker(
        settings,
        zombie_store,
        metrics=zombie_metrics,
        hooks=Hooks(after_store_commit=hang_after_database_commit),
    )
    owner = Worker(settings, owner_store, metrics=owner_metrics)
    zombie_run = asyncio.create_task(zombie.run())
    owner_run: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(stuck.wait(), 60)
        owner_run = asyncio.create_task(owner.run())
        await eventually(
            lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
            what="the new owner to take the partition over and commit",
        )
        release.set()  # the zombie wakes up and tries to commit its stale transaction
    finally:
        release.set()
        zombie.stop()
        owner.stop()
        outcomes = await asyncio.gather(
            zombie_run, *([owner_run] if owner_run else []), return_exceptions=True
        )
        await zombie_store.close()
    assert outcomes == [None, None]  # both replicas ran to a clean stop
    try:
        assert (await owner_store.counts()).ledger_entries == 5
        card = await owner_store.card(workload.SEED_VOUCHER_ID)
        assert card is not None and card.activated_points == 5 * 23
    finally:
        await owner_store.close()
    notes = await read_committed(kafka_bootstrap, topics.notifications)
    assert sorted(json.loads(n.value)["voucherify"]["transaction_id"] for n in notes) == ids
    assert owner_metrics.value("loyalty_consumer_replays_total") == 5
    assert zombie_metrics.value("loyalty_consumer_applied_total") == 0
