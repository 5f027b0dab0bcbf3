"""What the worker tells the outside: health for the probes, metrics, and its log events."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumer.config import Settings
from consumer.metrics import Metrics
from consumer.planning import Plan
from consumer.store.base import CardState

__all__ = ["Health", "Telemetry"]

log = structlog.get_logger("consumer.worker")

# Cards named in one batch's drift log event (the metric counts them all).
MAX_DRIFT_LOGGED = 100


@dataclass(slots=True)
class Health:
    """What /healthz and /readyz report: written by the worker, read by the HTTP handlers."""

    alive_at: float = field(default_factory=time.monotonic)
    degraded: str | None = None  # why, while retrying infrastructure
    assigned: int = 0
    unassigned_since: float | None = field(default_factory=time.monotonic)
    stalled: list[str] = field(default_factory=list)  # lag without progress, as the loop saw it
    batch_since: float | None = None  # when the batch in flight started
    batch_partitions: list[str] = field(default_factory=list)

    def stalled_after(self, timeout_s: float) -> list[str]:
        """Partitions whose work has not moved for `timeout_s`, as of now.

        The loop's view goes stale while a batch hangs, so a batch in flight for longer than
        the timeout stalls its partitions too.
        """
        stalled = list(self.stalled)
        if self.batch_since is not None and time.monotonic() - self.batch_since > timeout_s:
            stalled += [p for p in self.batch_partitions if p not in stalled]
        return stalled

    def unassigned_for(self) -> float:
        """Seconds without partitions: 0 while some are assigned."""
        since = self.unassigned_since
        return 0.0 if since is None else time.monotonic() - since


class Telemetry:
    """Health, metrics and log events, moved only by what has been committed."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self.metrics = metrics
        self.health = Health()
        self._progress: dict[TopicPartition, tuple[int, float]] = {}
        m = metrics
        self._counters = {
            "applied": m.applied,
            "duplicate": m.duplicates,
            "replay": m.replays,
            "owed": m.owed_paid,
            "skipped": m.skipped,
        }

    # -- ownership and infrastructure ---------------------------------------------------------

    def assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.health.assigned = len(partitions)
        self.health.unassigned_since = None if partitions else time.monotonic()
        self.metrics.assigned_partitions.set(len(partitions))
        log.info("partitions.assigned", partitions=sorted(tp.partition for tp in partitions))

    def revoked(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            self._progress.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self.health.assigned = 0
        self.health.unassigned_since = time.monotonic()
        self.metrics.assigned_partitions.set(0)

    def retrying(self, cause: str, error: BaseException) -> None:
        self.metrics.retries.labels(cause).inc()
        self.health.alive_at = time.monotonic()  # waiting out an outage is not hanging
        self.health.degraded = f"{cause}: {error}"
        self.metrics.ready.set(0)

    def recovered(self) -> None:
        if self.health.degraded is not None:
            log.info("worker.recovered", was=self.health.degraded)
        self.health.degraded = None

    # -- batches ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def in_flight(self, plan: Plan) -> Iterator[None]:
        """While a batch runs: its partitions can stall, and every log event carries its
        offsets."""
        offsets: dict[str, list[int]] = {}
        for record in plan.records():
            span = offsets.setdefault(str(record.partition), [record.offset, record.offset])
            span[1] = record.offset
        self.health.batch_since = time.monotonic()
        self.health.batch_partitions = [
            f"{self._settings.input_topic}[{partition}]" for partition in offsets
        ]
        try:
            with structlog.contextvars.bound_contextvars(
                topic=self._settings.input_topic, offsets=offsets
            ):
                yield
        finally:
            self.health.batch_since = None

    def committed(self, plan: Plan) -> None:
        """A plan's effects are committed: count them, as others now see them."""
        committed_at = time.time()
        m = self.metrics
        m.consumed.inc(len(plan))
        for outcome, n in plan.counts.items():
            if outcome in self._counters:
                self._counters[outcome].inc(n)
            elif outcome.startswith("dead_lettered_"):
                m.dead_lettered.labels(outcome.removeprefix("dead_lettered_")).inc(n)
        now = time.monotonic()
        for step in plan.steps:
            record = step.record
            if record.timestamp and record.timestamp > 0:
                m.end_to_end_latency.observe(max(0.0, committed_at - record.timestamp / 1000))
            if step.dead_letter is not None:
                log.warning(
                    "record.dead_lettered",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    reason_class=step.reason_class,
                    reason="; ".join(step.reasons),
                )
        for tp, offset in plan.offsets().items():
            self._progress[tp] = (offset, now)
        if plan.stored is not None:
            self._report_drift(plan.stored.cards)

    def finished(self, plans: Sequence[Plan], elapsed_s: float, **extra: Any) -> None:
        """One event per batch taken from the input, however it was split to commit."""
        size = sum(len(plan) for plan in plans)
        self.metrics.batch_size.observe(size)
        self.metrics.batch_duration.observe(elapsed_s)
        totals: dict[str, int] = {}
        for plan in plans:
            for outcome, n in plan.counts.items():
                totals[outcome] = totals.get(outcome, 0) + n
        log.info(
            "batch.committed",
            records=size,
            partitions=len({(r.topic, r.partition) for p in plans for r in p.records()}),
            duration_ms=round(elapsed_s * 1000, 1),
            **totals,
            **extra,
        )

    def _report_drift(self, cards: Sequence[CardState]) -> None:
        """Count the cards left drifting, and name them in one log event for the batch.

        Voucherify's balance also moves for reasons we never see (redemptions, manual
        additions), so drift is common: a line per card cost about a twelfth of the worker's
        CPU on the bench's workload. The counter still counts every card.
        """
        self.metrics.observe_card_drift(cards)
        drifting = {card.voucher_id: card.drift for card in cards if card.drift}
        if not drifting:
            return
        shown = dict(itertools.islice(drifting.items(), MAX_DRIFT_LOGGED))
        log.info("card.balance_drift", cards=len(drifting), drift=shown)

    # -- lag and stalls ---------------------------------------------------------------------

    async def observe(
        self, consumer: AIOKafkaConsumer, pending: Collection[TopicPartition]
    ) -> None:
        """Lag per partition and stall detection, from what the last fetch told us.
        `pending` partitions have no position yet (asking would wait for one)."""
        now = time.monotonic()
        stalled = []
        for tp in consumer.assignment():
            if tp in pending:
                continue
            end = consumer.last_stable_offset(tp) if self._settings.transactional else None
            if end is None:
                end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await consumer.position(tp)
            except KafkaError:
                continue
            lag = max(0, end - position)
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            last_offset, since = self._progress.get(tp, (position, now))
            if position != last_offset or lag == 0:
                self._progress[tp] = (position, now)
            elif now - since > self._settings.stall_timeout_s:
                stalled.append(f"{tp.topic}[{tp.partition}]")
        self.health.stalled = stalled
