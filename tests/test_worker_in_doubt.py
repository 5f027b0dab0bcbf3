"""A Kafka transaction whose outcome is unknown must never be sent a second time.

Found by the chaos run (make chaos, seed 5150): during a broker restart the commit of a
transaction was still on its way when the attempt timed out; the commit then went through in
the background, the worker retried with a new transaction holding the same notifications and
offsets, and 60 customers were notified twice. Here the late answer is injected: the commit
happens, its acknowledgement comes after the attempt's deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumer import kafka
from consumer.audit import audit
from consumer.kip447 import GroupFencedProducer
from consumer.workload import Workload, publish
from tests.kafkautil import read_committed
from tests.workers import Topics, drain, settings_for


class SlowCommit(GroupFencedProducer):
    """The first commit stalls past the attempt's deadline: after reaching the broker (its
    answer is late) or before (it never left)."""

    stalled: list[str] = []  # noqa: RUF012  shared by the producers of one test
    after_broker: bool = True

    async def commit_transaction(self) -> None:
        first = not SlowCommit.stalled
        if first:
            SlowCommit.stalled.append(self._txn_manager.transactional_id)
        if first and not SlowCommit.after_broker:
            await asyncio.sleep(30)  # the injected fault: past any attempt deadline
        await super().commit_transaction()
        if first and SlowCommit.after_broker:
            await asyncio.sleep(30)


@pytest.fixture(params=["answer late", "never sent"])
def stalled_first_commit(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    made = kafka.transactional_producer

    def producer(*args: Any, **kwargs: Any) -> GroupFencedProducer:
        real = made(*args, **kwargs)
        real.__class__ = SlowCommit
        return real

    SlowCommit.stalled = []
    SlowCommit.after_broker = request.param == "answer late"
    monkeypatch.setattr(kafka, "transactional_producer", producer)
    return str(request.param)


async def test_a_commit_that_times_out_is_neither_lost_nor_committed_twice(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str, stalled_first_commit: str
) -> None:
    settings = settings_for(
        kafka_bootstrap, topics, sqlite_url, retry_attempt_timeout_s=2, batch_max_records=500
    )
    workload = Workload(seed=8, events=40, partitions=1, sibling_share=0, malformed_share=0)
    await publish(workload.records(), topics.input, bootstrap_servers=kafka_bootstrap)

    await asyncio.wait_for(drain(settings), 90)

    assert SlowCommit.stalled, "the fault was not injected"
    notes = await read_committed(kafka_bootstrap, topics.notifications)
    assert len(notes) == workload.expectation().distinct
    report = await audit(settings)
    assert report.ok, report.summary()
