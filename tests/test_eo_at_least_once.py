"""Issue #14, item 7: at-least-once mode (DELIVERY_MODE=at-least-once) survives a stalled
broker and a lost group membership without double counts or dead letters.

What at-least-once may repeat, and nothing else: the notifications of a batch whose offset
commit was lost (the process died, or its group membership ended, between sending them and
committing the offsets) are sent again by whichever replica processes that batch next, once
per lost commit. Balances are never applied twice (the ledger's unique key), and no record
is dead-lettered for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.audit import AuditReport, audit
from consumer.deadletter import REASON, REASON_CLASS, SOURCE_OFFSET, header
from consumer.metrics import Metrics
from consumer.store import open_store
from consumer.worker import Hooks, Worker
from tests import workload
from tests.conditions import eventually
from tests.conftest import TopicFactory
from tests.eo_support import WorkerProcess, notified_ids, private_broker, process_environment
from tests.kafkautil import group_caught_up, produce, read_committed
from tests.workers import Topics, settings_for

pytestmark = pytest.mark.kafka


def _discrepancies_but_repeated_notifications(report: AuditReport) -> dict[str, int]:
    """The audit's discrepancies, except the repeats at-least-once allows."""
    return {
        name: getattr(report, name)
        for name in AuditReport.DISCREPANCIES
        if name != "notified_twice" and getattr(report, name)
    }


async def _ledger_entries(url: str) -> int:
    store = await open_store(url)
    try:
        return (await store.counts()).ledger_entries
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_broker_stall_longer_than_the_attempt_timeout_does_not_end_the_process(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The worker process, sending a batch when its (private) broker freezes for longer than
    RETRY_ATTEMPT_TIMEOUT_S, keeps running through the stall, then processes every record;
    it exits only at SIGTERM, with status 0. Today the cancelled sends are gathered again,
    the CancelledError is swallowed, and the process exits with status 0 mid-stall."""
    async with private_broker(tmp_path) as broker:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            topics = Topics("in", "notify", "dlq")
            await admin.create_topics([NewTopic(name, 1, 1) for name in vars(topics).values()])
        finally:
            await admin.close()
        settings = settings_for(
            broker.bootstrap,
            topics,
            sqlite_url,
            delivery_mode="at-least-once",
            batch_max_records=10,
            retry_attempt_timeout_s=2,
        )
        ids = [f"vtx_stall{i:04d}" for i in range(600)]
        # Published before the worker starts: its fetcher buffers far more than a batch, so
        # batches keep coming (and sending) after the broker froze.
        await produce(
            broker.bootstrap,
            topics.input,
            [workload.encode(workload.activation(tx, voucher_id="v_stall")) for tx in ids],
        )
        worker = WorkerProcess(process_environment(settings))
        await worker.start()
        try:
            await worker.wait_for("batch.committed")
            broker.freeze()
            try:
                # The stall: until the worker has given up on three attempts (or has exited,
                # or 15 s have passed).
                with contextlib.suppress(TimeoutError, AssertionError):
                    await worker.wait_for("broker.retry", count=3, timeout=15)
                stalled_exit = worker.returncode
            finally:
                broker.thaw()
            assert stalled_exit is None, (
                f"the worker exited with status {stalled_exit} during the broker stall:\n"
                + worker.tail()
            )

            async def applied_or_exited() -> bool:
                return worker.exited or await _ledger_entries(sqlite_url) == len(ids)

            await eventually(
                applied_or_exited,
                timeout=90,
                what="every record to be applied after the stall",
            )
            assert not worker.exited, (
                f"the worker exited with status {worker.returncode} after the stall:\n"
                + worker.tail()
            )
            await eventually(
                lambda: group_caught_up(broker.bootstrap, settings.consumer_group, topics.input),
                what="the offsets to be committed",
            )
            code = await worker.stop()
        finally:
            await worker.kill()
        assert code == 0, worker.tail()
        assert worker.named("broker.retry"), "the stall was not seen: no broker.retry event"
        assert await _ledger_entries(sqlite_url) == len(ids)
        assert set(
            notified_ids(await read_committed(broker.bootstrap, topics.notifications))
        ) == set(ids)
        assert await read_committed(broker.bootstrap, topics.dead_letters) == []


async def test_a_membership_lost_during_the_offset_commit_repeats_only_that_batchs_notifications(
    kafka_bootstrap: str, new_topic: TopicFactory, sqlite_url: str
) -> None:
    """Replica A applies a batch, then is held (after its store commit) until replica B's
    join has evicted it and B has processed the whole input; then A goes on to send and
    commit. A's commit fails (no longer a member): A must neither dead-letter the records it
    already applied nor apply anything twice. Allowed and nothing more: the notifications
    of A's held batch may be sent twice (by A, and by B replaying it); every other record's
    notification is sent once."""
    topics = Topics(await new_topic("in"), await new_topic("notify"), await new_topic("dlq"))
    settings = settings_for(
        kafka_bootstrap,
        topics,
        sqlite_url,
        delivery_mode="at-least-once",
        batch_max_records=100,
        max_poll_interval_ms=3000,
    )
    held_ids = [f"vtx_held{i:03d}" for i in range(20)]
    later_ids = [f"vtx_later{i:03d}" for i in range(20)]

    def values(ids: list[str]) -> list[bytes]:
        return [workload.encode(workload.activation(tx, voucher_id="v_alo")) for tx in ids]

    await produce(kafka_bootstrap, topics.input, values(held_ids))
    stuck, release = asyncio.Event(), asyncio.Event()

    async def hold_the_first_batch() -> None:
        if not stuck.is_set():
            stuck.set()
            await release.wait()

    store_a = await open_store(sqlite_url, migrate=True)
    store_b = await open_store(sqlite_url)
    metrics_a, metrics_b = Metrics(), Metrics()
    worker_a = Worker(
        settings, store_a, metrics=metrics_a, hooks=Hooks(after_store_commit=hold_the_first_batch)
    )
    worker_b = Worker(settings, store_b, metrics=metrics_b)
    run_a = asyncio.create_task(worker_a.run())
    run_b: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(stuck.wait(), 60)
        await produce(kafka_bootstrap, topics.input, values(later_ids))
        run_b = asyncio.create_task(worker_b.run())
        await eventually(
            lambda: group_caught_up(kafka_bootstrap, settings.consumer_group, topics.input),
            what="replica B to take the partition over and finish the input",
        )
        release.set()
        worker_a.stop()  # after the batch in flight, which must end without harm
        outcome_a = (await asyncio.gather(asyncio.wait_for(run_a, 60), return_exceptions=True))[0]
    finally:
        release.set()
        worker_a.stop()
        worker_b.stop()
        await asyncio.gather(run_a, *([run_b] if run_b else []), return_exceptions=True)
        await store_a.close()
        await store_b.close()
    letters = await read_committed(kafka_bootstrap, topics.dead_letters)
    assert letters == [], "dead letters (source offset, class, reason) of applied records: " + str(
        [
            (
                header(r.headers, SOURCE_OFFSET),
                header(r.headers, REASON_CLASS),
                header(r.headers, REASON),
            )
            for r in letters
        ]
    )
    dead_lettered = sum(
        m.value("loyalty_consumer_dead_lettered_total", {"reason_class": c})
        for m in (metrics_a, metrics_b)
        for c in ("invalid", "persistent")
    )
    assert dead_lettered == 0
    store = await open_store(sqlite_url)
    try:
        assert (await store.counts()).ledger_entries == 40
        card = await store.card("v_alo")
        assert card is not None and card.activated_points == 40 * 23
    finally:
        await store.close()
    times = notified_ids(await read_committed(kafka_bootstrap, topics.notifications))
    assert set(times) == {*held_ids, *later_ids}
    assert {tx: n for tx, n in times.items() if tx in later_ids and n != 1} == {}
    assert {tx: n for tx, n in times.items() if n > 2} == {}, "sent more than twice"
    report = await audit(settings)
    assert _discrepancies_but_repeated_notifications(report) == {}, report.summary()
    assert outcome_a is None, f"replica A stopped with {outcome_a!r}"
