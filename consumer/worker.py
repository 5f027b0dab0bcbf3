"""The worker: poll a batch, apply it in one database transaction, emit and commit in Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumer import kafka
from consumer.committer import AtLeastOnceCommitter, Committer, TransactionalCommitter
from consumer.config import Settings
from consumer.errors import BatchRefused, EpochEnded, Fenced
from consumer.events import NATIVE_SHAPE_CHECKS
from consumer.intake import Intake, Polled
from consumer.isolation import Isolation
from consumer.kip447 import StableOffsets, member_of
from consumer.metrics import Metrics
from consumer.ownership import Ownership
from consumer.planning import Plan, classify_record
from consumer.retrier import Cause, Retrier
from consumer.signature import from_settings as signature_verifier
from consumer.store.base import BatchResult, Store
from consumer.telemetry import Health, Telemetry

if TYPE_CHECKING:  # only imported when tracing is on (consumer.tracing decides)
    from consumer.spans import Tracer

__all__ = ["Health", "Hooks", "Worker"]

log = structlog.get_logger("consumer.worker")

# Records classified between two turns of the event loop while the previous batch commits:
# each turn lets that batch's transactions handle their answers. Every answer (PostgreSQL
# statements, produce and transaction requests) waits for the slice in progress, so slices
# are short (~0.15 ms; 50 records took ~1.4 ms). Bench harness, events/s: 50 -> 12,000;
# 20 -> 12,200; 10 -> 13,500; 5 -> 14,200; 2 -> 14,100; 1 -> 12,400 (a turn per record).
DECIDE_SLICE = 5
EMPTY_RESULT = BatchResult((), ())

Hook = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Hooks:
    """Test-only interception points; production leaves them empty."""

    after_classify: Hook | None = None  # a polled batch is classified, not yet applied
    after_store_commit: Hook | None = None  # its database transaction committed


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker._on_assigned(assigned)


class Worker:
    """Owns the consume → apply → emit → commit loop of one replica.

    Around the loop: `Ownership` (epochs and positions), `Intake` (fetching), a `Committer`
    (one Kafka transaction a batch, or at-least-once), `Isolation` (bisecting refusals),
    a `Retrier` (transient failures) and `Telemetry` (health, metrics, logs).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        metrics: Metrics | None = None,
        hooks: Hooks | None = None,
        burst: bool = False,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self.hooks = hooks or Hooks()
        self.burst = burst
        self.telemetry = Telemetry(settings, self.metrics)
        self._tracer = tracer
        self._verifier = signature_verifier(settings)  # None: signatures are not checked
        self.ownership = Ownership()
        self.retrier = Retrier(settings, on_retry=self._retrying, on_recovered=self._recovered)
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._intake: Intake | None = None
        self._committer: Committer | None = None
        self._isolation: Isolation | None = None
        self._committing: asyncio.Task[None] | None = None

    @property
    def health(self) -> Health:
        return self.telemetry.health

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight and leave; safe to call many times."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Consume until stopped (or, in burst mode, until the input is drained)."""
        consumer = kafka.input_consumer(self.settings)
        self._consumer = consumer
        try:
            await self._start(consumer)
        except BaseException:
            await self._close(consumer)
            raise
        log.info(
            "worker.started",
            topic=self.settings.input_topic,
            group=self.settings.consumer_group,
            mode=self.settings.delivery_mode,
            transactional_id=getattr(self._committer, "transactional_id", None),
            native_shape_checks=NATIVE_SHAPE_CHECKS,
        )
        try:
            await self._loop()
        finally:
            await self._close(consumer)
            log.info("worker.stopped")

    async def _start(self, consumer: AIOKafkaConsumer) -> None:
        """Connect, check that our three topics exist, start the committer, join the group."""
        try:
            await consumer.start()
            existing = await consumer.topics()
        except KafkaError as exc:
            # Rejected credentials and TLS trouble say which setting to fix; the rest is
            # an unreachable broker.
            raise await kafka.connection_problem(self.settings, exc) from None
        kafka.require_topics(self.settings, existing)
        self._intake = Intake(consumer, self.settings, self.ownership, self.retrier)
        committer: Committer
        if self.settings.transactional:
            # aiokafka internals: the consumer's client reaches the group coordinator.
            offsets = StableOffsets(consumer._client, self.settings.consumer_group)
            committer = TransactionalCommitter(self.settings, self.retrier, self.ownership, offsets)
        else:
            committer = AtLeastOnceCommitter(self.settings, self.retrier, self.ownership, consumer)
        await committer.start()
        self._committer = committer
        self._isolation = Isolation(
            self.settings, self.store, committer, self.retrier, self._apply, self._committed
        )
        consumer.subscribe([self.settings.input_topic], listener=_Rebalance(self))

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        if self._intake is not None:
            await self._intake.close()
        if self._committer is not None:
            await self._committer.stop()
        await consumer.stop()  # leaves the group so the partitions move at once
        self.metrics.assigned_partitions.set(0)

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        """Poll and classify the next batch while the previous one is applied and committed.

        Classifying is CPU work that touches nothing shared, and a batch's database and Kafka
        transactions mostly wait for answers, so the two run side by side. A batch is applied
        only after the one before it has committed, and only if its epoch is still the
        current one: after a rebalance, the new epoch starts from the stable committed
        offsets, and what was classified ahead is dropped.
        """
        look_ahead = False
        try:
            while not self._stopping.is_set():
                if self._committing is not None and not look_ahead:
                    # No backlog (the last batch was small): classifying ahead gains nothing,
                    # and polling after the commit keeps latency at low rates as it was.
                    await self._settled()
                self.health.alive_at = time.monotonic()
                assert self._intake is not None
                self._intake.raise_if_positioning_failed()
                plan = await self._next_plan()
                if plan is not None and self.hooks.after_classify is not None:
                    await self.hooks.after_classify()
                await self._settled()
                assert self._consumer is not None
                await self.telemetry.observe(self._consumer, self.ownership.pending)
                if plan is not None and self._startable(plan):
                    self._committing = asyncio.create_task(self._complete(plan))
                    look_ahead = 2 * len(plan) >= self.settings.batch_max_records
                elif plan is None and self.burst and await self._drained():
                    log.info("worker.drained")
                    return
        except BaseException:
            if self._committing is not None:
                # Let the batch in flight end; an error of its own is logged by it, the one
                # raised here goes on.
                await asyncio.wait([self._committing])
            raise
        await self._settled()  # stopping: finish the batch in flight

    async def _next_plan(self) -> Plan | None:
        """The next polled batch, classified. Gives the event loop a turn every DECIDE_SLICE
        records, so that a batch committing meanwhile handles its answers."""
        assert self._intake is not None
        polled: Polled | None = await self._intake.poll()
        if polled is None:
            return None
        epoch, partitions = polled
        topic, verifier = self.settings.dead_letter_topic, self._verifier
        trace = None
        if self._tracer is not None:
            size = sum(len(records) for _, records in partitions)
            trace = self._tracer.start_batch(self.settings.input_topic, size)
        steps = []
        for _tp, records in partitions:
            for record in records:
                span = None if trace is None else trace.start_record(record)
                step = classify_record(record, topic, verifier)
                step.span = span
                steps.append(step)
                if len(steps) % DECIDE_SLICE == 0:
                    await asyncio.sleep(0)
        return Plan(epoch, steps, trace=trace)

    def _startable(self, plan: Plan) -> bool:
        startable = not self._stopping.is_set()
        if startable and not self.ownership.accepts(plan.epoch):
            log.info("batch.dropped", records=len(plan), reason="its epoch ended")
            startable = False
        if not startable and plan.trace is not None:
            plan.trace.end()
        return startable

    async def _settled(self) -> None:
        """Wait for the batch in flight, if any."""
        if self._committing is not None:
            await self._committing
            self._committing = None

    async def _drained(self) -> bool:
        assert self._intake is not None
        return await self._intake.drained(self.health.unassigned_for())

    # -- one batch -------------------------------------------------------------------------

    async def _complete(self, plan: Plan) -> None:
        """Apply, emit and commit a classified batch, isolating what is refused."""
        assert self._isolation is not None
        started = time.perf_counter()
        with self.telemetry.in_flight(plan):
            try:
                pieces = await self._isolation.process(plan)
            except EpochEnded as exc:
                log.info("batch.dropped", records=len(plan), reason=str(exc))
                return
            except Fenced as exc:
                self._fenced(plan, exc)
                return
            finally:
                if plan.trace is not None:
                    plan.trace.end()  # abandons the spans of records not committed
            elapsed = time.perf_counter() - started
            self.telemetry.finished(pieces, elapsed, isolated=pieces != [plan])

    async def _apply(self, plan: Plan) -> None:
        """One database transaction for the plan, then one Kafka transaction."""
        assert self._committer is not None
        if not self.ownership.holds(plan.epoch):
            raise EpochEnded("its epoch ended before it was applied")
        entries = plan.entries()
        result = (
            await self.retrier.call("store", lambda: self.store.apply_batch(entries))
            if entries
            else EMPTY_RESULT
        )
        plan.stored = result
        if self.hooks.after_store_commit is not None:
            await self.hooks.after_store_commit()
        try:
            outputs = plan.outputs(
                result,
                notification_topic=self.settings.notification_topic,
                source=self.settings.cloudevents_source,
            )
        except Exception as exc:
            raise BatchRefused(f"building the outputs failed: {type(exc).__name__}: {exc}") from exc
        await self._committer.commit(plan, outputs)

    def _committed(self, plan: Plan) -> None:
        self.ownership.advance(plan.epoch, plan.offsets())
        self.telemetry.committed(plan)
        if self._tracer is not None:
            plan.end_spans()

    def _fenced(self, plan: Plan, error: Fenced) -> None:
        """The group moved on from the batch's epoch: drop it, and everything of its epoch;
        the partitions' next owners redo it from the committed offsets (as replays)."""
        log.warning(
            "partition.fenced",
            partitions=sorted({r.partition for r in plan.records()}),
            records=len(plan),
            reason=str(error),
        )
        if not self.ownership.holds(plan.epoch):
            return
        self._end_epoch()
        if not self._stopping.is_set() and self._consumer is not None:
            # Leave and join again, so the group decides afresh who owns what.
            log.warning("group.rejoin")
            self._consumer.unsubscribe()
            self._consumer.subscribe([self.settings.input_topic], listener=_Rebalance(self))

    # -- ownership ---------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # The batch in flight may finish within its epoch (the group waits for us, up to
        # the rebalance timeout); nothing new starts meanwhile.
        self.ownership.revoking = True
        while self._committing is not None and not self._committing.done():
            await asyncio.wait([self._committing])
        self._end_epoch()
        self.telemetry.revoked(revoked)

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # Quick, and no waiting: aiokafka sends no heartbeats during this callback.
        member = None
        if self.settings.transactional and self._consumer is not None:
            member = member_of(self._consumer, self.settings.consumer_group)
        epoch = self.ownership.begin(member, assigned)
        assert self._intake is not None
        self._intake.assigned(epoch, assigned)
        self.telemetry.assigned(assigned)

    def _end_epoch(self) -> None:
        assigned = self.ownership.assigned
        self.ownership.end()
        if self._intake is not None:
            self._intake.revoked(assigned)

    # -- infrastructure ----------------------------------------------------------------------

    def _retrying(self, cause: Cause, error: BaseException) -> None:
        self.telemetry.retrying(cause, error)
        if self._intake is not None:
            self._intake.hold()

    def _recovered(self) -> None:
        if self._intake is not None:
            self._intake.release()
        self.telemetry.recovered()
