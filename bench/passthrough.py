"""Contender `limit`: the worker itself, with parsing, validation and the store taken out.

The real `Worker`: the same intake (poll, top-up, admission), the same look-ahead and event
loop turns, the same one transactional producer and one Kafka transaction a batch (offsets
fenced by generation), the same retries and telemetry, the same garbage-collector tuning.
Only its two steps that parse and store are replaced: each input record becomes one output
the size of our notification (its key, the first bytes of its value, the headers a
notification carries), with no decoding, no validation and no database. What is left is
everything ours does except what is ours to do: the ceiling for this job on this machine.

The two steps are the worker's private methods, overridden on purpose: this is a bench
contender, not an extension point (tests/test_bench.py runs it against the real broker).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson

from bench.contender import Progress, Spec, until_stopped
from bench.ours import COMMITTED, settings_for
from consumer.config import Settings
from consumer.errors import EpochEnded
from consumer.events import Apply, classify
from consumer.metrics import Metrics
from consumer.planning import Output, Plan, Step
from consumer.runtime import tune_garbage_collector
from consumer.store import Store, open_store
from consumer.transform import notification_record
from consumer.worker import DECIDE_SLICE, Worker
from consumer.workload import activation_payload


def _notification_shape() -> tuple[int, list[tuple[str, bytes]]]:
    """The size of a notification's value, and its headers, for a typical activation."""
    document = activation_payload(
        "vtx_0ff34b9df109a39357",
        voucher_id="v_bITntTcyfRHPvrOMgwdQVSlShsWRZu4v",
        customer_id="cust_KiZa6C6R30sgqqpU76o6B7u0",
        points=23,
        balance=23,
        pending=46,
        created_at=datetime(2025, 1, 8, 14, 8, 34, tzinfo=UTC),
    )
    verdict = classify(orjson.dumps(document))
    assert isinstance(verdict, Apply)
    _key, value, headers = notification_record(verdict.activation)
    return len(value), headers


class PassthroughWorker(Worker):
    """Our loop and transactions; each record copied, cut to a notification's size."""

    def __init__(self, settings: Settings, store: Store, *, metrics: Metrics) -> None:
        super().__init__(settings, store, metrics=metrics)
        self._size, self._headers = _notification_shape()

    async def _next_plan(self) -> Plan | None:
        assert self._intake is not None
        polled = await self._intake.poll()
        if polled is None:
            return None
        epoch, partitions = polled
        steps = []
        for _tp, records in partitions:
            for record in records:
                steps.append(Step(record))
                if len(steps) % DECIDE_SLICE == 0:
                    await asyncio.sleep(0)  # the same turns as ours gives a committing batch
        return Plan(epoch, steps)

    async def _apply(self, plan: Plan) -> None:
        assert self._committer is not None
        if not self.ownership.holds(plan.epoch):
            raise EpochEnded("its epoch ended before it was applied")
        topic, size, headers = self.settings.notification_topic, self._size, self._headers
        outputs = [Output(topic, r.key, (r.value or b"")[:size], headers) for r in plan.records()]
        await self._committer.commit(plan, outputs)
        plan.counts["passed"] = len(plan)


async def run_passthrough(spec: Spec) -> dict[str, Any]:
    settings = settings_for(spec)
    store = await open_store("sqlite:///:memory:", migrate=True)  # never written
    metrics = Metrics()
    worker = PassthroughWorker(settings, store, metrics=metrics)
    progress = Progress(spec.target, worker.stop)
    tune_garbage_collector(settings.gc_gen0_threshold)  # the same process tuning as ours

    def done() -> int:
        if worker.health.assigned:
            progress.ready()
        return int(metrics.value(COMMITTED))

    try:
        await until_stopped(asyncio.ensure_future(worker.run()), progress, done)
    finally:
        await store.close()
    return {"done": done(), "counts": {"passed": done()}}
