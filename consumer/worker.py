"""The worker: poll a batch, apply it in one database transaction, emit and commit in Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, InvalidProducerEpoch, KafkaError, ProducerFenced
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never
from tenacity.wait import wait_random_exponential

from consumer import kafka
from consumer.config import Settings
from consumer.deadletter import ReasonClass, dead_letter
from consumer.errors import (
    BrokerUnavailable,
    ConfigurationError,
    Fenced,
    StoreUnavailable,
)
from consumer.events import NATIVE_SHAPE_CHECKS, Apply, Invalid, Skip, classify
from consumer.metrics import Metrics
from consumer.store.base import BatchResult, CardState, LedgerEntry, SourceOffset, Store
from consumer.transform import notification_record, to_ledger_entry

log = structlog.get_logger("consumer.worker")

# How long a batch waits for records that reached the broker while the last one committed.
TOP_UP_WAIT_MS = 20
# Records classified between two turns of the event loop while the previous batch commits:
# each turn lets that batch's transactions handle their answers. Every answer (PostgreSQL
# statements, produce and transaction requests) waits for the slice in progress, so slices
# are short (~0.15 ms; 50 records took ~1.4 ms). Bench harness, events/s: 50 -> 12,000;
# 20 -> 12,200; 10 -> 13,500; 5 -> 14,200; 2 -> 14,100; 1 -> 12,400 (a turn per record).
DECIDE_SLICE = 5
# Cards named in one batch's drift log event (the metric counts them all).
MAX_DRIFT_LOGGED = 100


class Record(Protocol):
    """What we read of aiokafka's ConsumerRecord (aiokafka ships no type information)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


Hook = Callable[[], Awaitable[None]]


class Output(NamedTuple):
    """One record to produce inside a partition's Kafka transaction (a tuple: one a record,
    built in half the time of a frozen dataclass)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(slots=True)
class PartitionBatch:
    """The records of one input partition in a poll, and what they turned into."""

    tp: TopicPartition
    records: list[Record]
    outputs: list[Output] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    committed: bool = False  # its Kafka transaction committed
    lost: bool = False  # the partition moved to another replica; the new owner redoes it

    @property
    def next_offset(self) -> int:
        return int(self.records[-1].offset) + 1

    def count(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + n

    def reset(self) -> None:
        """Forget a failed attempt's outputs and counts before trying again."""
        self.outputs.clear()
        self.counts.clear()


@dataclass(slots=True)
class Hooks:
    """Test-only interception points; production leaves them empty."""

    after_store_commit: Hook | None = None


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


def _is_retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False))


def _as_consumer_error(exc: BaseException) -> BaseException:
    """Kafka's own errors carry `retriable`; give them our type so callers branch once."""
    if isinstance(exc, ProducerFenced | InvalidProducerEpoch):
        return Fenced(str(exc))
    if isinstance(exc, KafkaError) and exc.retriable:
        return BrokerUnavailable(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError):
        return BrokerUnavailable("timed out talking to Kafka")
    return exc


def _retrieve_quietly(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._on_assigned(assigned)


class Worker:
    """Owns the consume → apply → emit → commit loop of one replica."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        metrics: Metrics | None = None,
        hooks: Hooks | None = None,
        burst: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self.hooks = hooks or Hooks()
        self.burst = burst
        self.health = Health()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._plain_producer: AIOKafkaProducer | None = None
        self._batch_lock = asyncio.Lock()
        self._attempts: dict[tuple[TopicPartition, int], int] = {}
        self._progress: dict[TopicPartition, tuple[int, float]] = {}
        self._fenced: set[TopicPartition] = set()
        # Partitions whose last transaction ended without an answer: it may have committed.
        self._in_doubt: set[TopicPartition] = set()
        self._rebalances = 0  # counts revocations: positions restart from the committed offsets

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
            await consumer.stop()
            raise
        log.info(
            "worker.started",
            topic=self.settings.input_topic,
            group=self.settings.consumer_group,
            mode=self.settings.delivery_mode,
            native_shape_checks=NATIVE_SHAPE_CHECKS,
        )
        try:
            await self._loop(consumer)
        finally:
            await self._shutdown(consumer)

    async def _start(self, consumer: AIOKafkaConsumer) -> None:
        """Connect, check that our three topics exist, then join the group."""
        try:
            await consumer.start()
            existing = await consumer.topics()
        except KafkaError as exc:
            # Rejected credentials and TLS trouble say which setting to fix; the rest is
            # an unreachable broker.
            raise await kafka.connection_problem(self.settings, exc) from None
        missing = [
            f"{name} ({variable})"
            for variable, name in (
                ("INPUT_TOPIC", self.settings.input_topic),
                ("NOTIFICATION_TOPIC", self.settings.notification_topic),
                ("DEAD_LETTER_TOPIC", self.settings.dead_letter_topic),
            )
            if name not in existing
        ]
        if missing:
            raise ConfigurationError(
                f"topic(s) missing on {self.settings.kafka_bootstrap_servers}: "
                + ", ".join(missing)
                + ". Create them, or point the variable(s) at existing topics."
            )
        consumer.subscribe([self.settings.input_topic], listener=_Rebalance(self))
        if not self.settings.transactional:
            self._plain_producer = kafka.producer(self.settings)
            await self._plain_producer.start()

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        """Poll and classify the next batch while the previous one is applied and committed.

        Classifying is CPU work that touches nothing shared, and a batch's database and Kafka
        transactions mostly wait for answers, so the two run side by side. A batch is applied
        only after the one before it has committed. If that did not go cleanly (a partition
        lost or rewound, records isolated, a rebalance), the classified batch is put back:
        each of its partitions is fetched again from its committed offset.
        """
        committing: asyncio.Task[bool] | None = None
        look_ahead = False
        try:
            while not self._stopping.is_set():
                if committing is not None and not look_ahead:
                    # No backlog (the last batch was small): classifying ahead gains nothing,
                    # and polling after the commit keeps latency at low rates as it was.
                    await self._settled(consumer, committing)
                    committing = None
                self.health.alive_at = time.monotonic()
                rebalances = self._rebalances
                polled = await consumer.getmany(
                    timeout_ms=self.settings.batch_max_wait_ms,
                    max_records=self.settings.batch_max_records,
                )
                polled = await self._top_up(consumer, polled)
                batches = [
                    PartitionBatch(tp, list(records)) for tp, records in polled.items() if records
                ]
                pending = await self._classify(batches)
                if committing is not None:
                    clean = await self._settled(consumer, committing)
                    committing = None
                    if batches and (not clean or self._rebalances != rebalances):
                        await self._put_back(consumer, batches)
                        batches = []
                await self._observe(consumer)
                if batches and not self._stopping.is_set():
                    await self._batch_lock.acquire()  # released by _complete
                    committing = asyncio.create_task(self._complete(consumer, batches, pending))
                    size = sum(len(batch.records) for batch in batches)
                    look_ahead = 2 * size >= self.settings.batch_max_records
                elif not batches and self.burst and await self._drained(consumer):
                    log.info("worker.drained")
                    return
        except BaseException:
            if committing is not None:
                # Let the batch in flight end (its lock and transaction with it); an error of
                # its own is logged by it, the one raised here goes on.
                await asyncio.wait([committing])
            raise
        if committing is not None:
            await committing  # stopping: finish the batch in flight

    async def _top_up(
        self, consumer: AIOKafkaConsumer, polled: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, list[Record]]:
        """Add what reached the broker while the previous batch was committing.

        getmany hands out only what the fetcher had buffered, and the fetcher asks the broker
        for more only once that is taken; without a second look, records that arrived during
        a commit wait a whole extra batch (at 1,000 events/s: p90 a fifth lower, make bench).
        """
        size = sum(len(records) for records in polled.values())
        room = self.settings.batch_max_records - size
        wait_ms = min(TOP_UP_WAIT_MS, self.settings.batch_max_wait_ms)
        if not size or room <= 0 or not wait_ms:
            return polled
        rebalances = self._rebalances
        more = await consumer.getmany(timeout_ms=wait_ms, max_records=room)
        if self._rebalances != rebalances:
            # Positions restarted from the committed offsets: the first poll comes again.
            return dict(more)
        merged = {tp: list(records) for tp, records in polled.items()}
        for tp, records in more.items():
            merged.setdefault(tp, []).extend(records)
        return merged

    def _rejoin(self, consumer: AIOKafkaConsumer) -> None:
        """Fenced while the group still lists us (a zombie, or a transaction that timed out):
        leave and join again, so the group decides afresh who owns what."""
        log.warning("group.rejoin", fenced=sorted(tp.partition for tp in self._fenced))
        self._fenced.clear()
        consumer.unsubscribe()
        consumer.subscribe([self.settings.input_topic], listener=_Rebalance(self))

    async def _shutdown(self, consumer: AIOKafkaConsumer) -> None:
        async with self._batch_lock:
            await self._close_producers(list(self._producers))
            if self._plain_producer is not None:
                await self._plain_producer.stop()
        await consumer.stop()  # leaves the group so the partitions move at once
        # A rebalance that completed while we were leaving may have opened producers.
        await self._close_producers(list(self._producers))
        self.metrics.assigned_partitions.set(0)
        log.info("worker.stopped")

    # -- rebalancing -----------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Wait for the batch in flight: its transaction must end before another owner starts.
        async with self._batch_lock:
            self._rebalances += 1
            await self._close_producers(list(revoked))
            self._in_doubt.difference_update(revoked)  # the next owner's init settles them
            for tp in revoked:
                self._progress.pop(tp, None)
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            self._attempts.clear()
        self.health.assigned = 0
        self.health.unassigned_since = time.monotonic()
        self.metrics.assigned_partitions.set(0)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # Under the batch lock: a batch must not race us to open the same producer.
        async with self._batch_lock:
            self._fenced.clear()
            # Producers of partitions we no longer own (after a rejoin) are closed here.
            await self._close_producers([tp for tp in self._producers if tp not in assigned])
            if self.settings.transactional:
                await asyncio.gather(*(self._open_producer(tp) for tp in assigned))
        self.health.assigned = len(assigned)
        self.metrics.assigned_partitions.set(len(assigned))
        self.health.unassigned_since = None if assigned else time.monotonic()
        log.info("partitions.assigned", partitions=sorted(tp.partition for tp in assigned))

    def transactional_id(self, tp: TopicPartition) -> str:
        """One id per input partition: the next owner's init fences a zombie."""
        return f"{self.settings.transactional_id_prefix}.{tp.topic}.{tp.partition}"

    async def _open_producer(self, tp: TopicPartition) -> None:
        if tp in self._producers:
            return
        producer = kafka.producer(self.settings, transactional_id=self.transactional_id(tp))
        try:
            await producer.start()  # init_transactions: aborts and fences the previous owner
        except BaseException:
            await self._close_quietly(producer)
            raise
        self._producers[tp] = producer

    async def _close_producers(self, partitions: Iterable[TopicPartition]) -> None:
        producers = [self._producers.pop(tp) for tp in partitions if tp in self._producers]
        await asyncio.gather(*(self._close_quietly(p) for p in producers))

    @staticmethod
    async def _close_quietly(producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(KafkaError, OSError, asyncio.TimeoutError):
            await producer.stop()

    # -- one batch -------------------------------------------------------------------------

    async def _settled(self, consumer: AIOKafkaConsumer, committing: asyncio.Task[bool]) -> bool:
        """Wait for the batch in flight; True when it committed as a whole and nothing of
        ours was fenced (a fenced replica leaves and rejoins the group here)."""
        clean = await committing
        if self._fenced and not self._stopping.is_set():
            self._rejoin(consumer)
            return False
        return clean

    async def _complete(
        self,
        consumer: AIOKafkaConsumer,
        batches: list[PartitionBatch],
        pending: list[tuple[PartitionBatch, Record, Any]],
    ) -> bool:
        """Apply, emit and commit a classified batch, then release the batch lock (taken by
        the loop). True when every partition committed in one go."""
        try:
            with self._in_flight(batches):
                return await self._process(consumer, batches, pending)
        finally:
            self._batch_lock.release()

    async def _process(
        self,
        consumer: AIOKafkaConsumer,
        batches: list[PartitionBatch],
        pending: list[tuple[PartitionBatch, Record, Any]],
    ) -> bool:
        """True when the batch committed as a whole (no record isolated, no partition lost)."""
        started = time.perf_counter()
        size = sum(len(b.records) for b in batches)
        isolated = False
        try:
            await self._process_together(consumer, batches, pending)
        except Exception as exc:
            if _is_retriable(exc):
                raise
            log.warning("batch.isolating", error=str(exc), records=size)
            isolated = True
            for batch in batches:
                if not batch.committed and not batch.lost:
                    await self._process_one_by_one(consumer, batch)
        elapsed = time.perf_counter() - started
        self.metrics.batch_size.observe(size)
        self.metrics.batch_duration.observe(elapsed)
        totals: dict[str, int] = {}
        for batch in batches:
            for outcome, n in batch.counts.items():
                totals[outcome] = totals.get(outcome, 0) + n
        log.info(
            "batch.committed",
            records=size,
            partitions=len(batches),
            duration_ms=round(elapsed * 1000, 1),
            **totals,
        )
        return not isolated and all(batch.committed for batch in batches)

    async def _process_together(
        self,
        consumer: AIOKafkaConsumer,
        batches: list[PartitionBatch],
        pending: list[tuple[PartitionBatch, Record, Any]] | None = None,
    ) -> None:
        if pending is None:
            pending = await self._classify(batches)
        result = await self._apply_with_retry(pending)
        self._route_outcomes(batches, pending, result)
        if self.hooks.after_store_commit is not None:
            await self.hooks.after_store_commit()
        await self._commit_all(consumer, batches)

    async def _classify(
        self, batches: list[PartitionBatch]
    ) -> list[tuple[PartitionBatch, Record, Any]]:
        """Classify every record: queue dead letters now, return activations for the store.

        Gives the event loop a turn every DECIDE_SLICE records, so that a batch committing
        meanwhile (see _loop) handles its answers."""
        pending: list[tuple[PartitionBatch, Record, Any]] = []
        if not batches:
            return pending
        with self._log_context(batches):
            decided = 0
            for batch in batches:
                batch.reset()
                for record in batch.records:
                    self._decide_record(batch, record, pending)
                    decided += 1
                    if decided % DECIDE_SLICE == 0:
                        await asyncio.sleep(0)
        return pending

    async def _put_back(self, consumer: AIOKafkaConsumer, batches: list[PartitionBatch]) -> None:
        """Forget a classified batch: each of its partitions is fetched again from the
        committed offset, which is exactly where the unfinished work starts."""
        for batch in batches:
            await self._rewind(consumer, batch.tp)
        log.info(
            "batch.put_back",
            records=sum(len(b.records) for b in batches),
            partitions=sorted(b.tp.partition for b in batches),
        )

    async def _process_one_by_one(self, consumer: AIOKafkaConsumer, batch: PartitionBatch) -> None:
        """Find the record that fails: each record alone, dead-lettered after N attempts."""
        batch.reset()
        for record in batch.records:
            single = await self._process_single(consumer, batch.tp, record)
            for outcome, n in single.counts.items():
                batch.count(outcome, n)
            if single.lost:
                batch.lost = True
                return
        # The partition may have been rewound by a failed transaction; we are past it now.
        if batch.tp in consumer.assignment():
            consumer.seek(batch.tp, batch.next_offset)

    async def _process_single(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, record: Record
    ) -> PartitionBatch:
        key = (tp, int(record.offset))
        while True:
            single = PartitionBatch(tp, [record])
            try:
                await self._process_together(consumer, [single])
            except Exception as exc:
                if _is_retriable(exc):
                    raise
                attempts = self._attempts.get(key, 1) + 1
                self._attempts[key] = attempts
                if attempts >= self.settings.max_record_attempts:
                    log.warning(
                        "record.failing",
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=record.offset,
                        attempts=attempts,
                        error=str(exc),
                    )
                    return await self._dead_letter_alone(consumer, tp, record, exc, attempts)
                continue
            self._attempts.pop(key, None)
            return single

    def _decide_record(
        self,
        batch: PartitionBatch,
        record: Record,
        pending: list[tuple[PartitionBatch, Record, Any]],
    ) -> None:
        verdict = classify(record.value)
        if isinstance(verdict, Apply):
            pending.append((batch, record, verdict))
        elif isinstance(verdict, Skip):
            batch.count("skipped")
        elif isinstance(verdict, Invalid):
            self._queue_dead_letter(batch, record, verdict.reasons, "invalid", 1)

    def _queue_dead_letter(
        self,
        batch: PartitionBatch,
        record: Record,
        reasons: Sequence[str],
        reason_class: ReasonClass,
        attempts: int,
    ) -> None:
        letter = dead_letter(
            key=record.key,
            value=record.value,
            headers=list(record.headers or ()),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reasons=reasons,
            reason_class=reason_class,
            attempts=attempts,
        )
        batch.outputs.append(
            Output(self.settings.dead_letter_topic, letter.key, letter.value, letter.headers)
        )
        batch.count(f"dead_lettered_{reason_class}")
        log.warning(
            "record.dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason_class=reason_class,
            reason="; ".join(reasons),
        )

    async def _apply_with_retry(
        self, pending: list[tuple[PartitionBatch, Record, Any]]
    ) -> BatchResult:
        entries: list[LedgerEntry] = [
            to_ledger_entry(
                verdict.activation,
                SourceOffset(record.topic, record.partition, record.offset),
            )
            for _, record, verdict in pending
        ]
        result: BatchResult = await self._retrying("store", lambda: self.store.apply_batch(entries))
        return result

    def _route_outcomes(
        self,
        batches: list[PartitionBatch],
        pending: list[tuple[PartitionBatch, Record, Any]],
        result: BatchResult,
    ) -> None:
        for (batch, _record, verdict), outcome in zip(pending, result.outcomes, strict=True):
            batch.count(outcome.kind)
            if outcome.kind == "duplicate":
                continue
            key, value, headers = notification_record(
                verdict.activation, source=self.settings.cloudevents_source
            )
            batch.outputs.append(Output(self.settings.notification_topic, key, value, headers))
        self._report_drift(result.cards)

    def _report_drift(self, cards: Sequence[CardState]) -> None:
        """Count the cards left drifting, and name them in one log event for the batch.

        Voucherify's balance also moves for reasons we never see (redemptions, manual
        additions), so drift is common: a line per card cost about a twelfth of the worker's
        CPU on the bench's workload. The counter still counts every card.
        """
        if cards:
            self.metrics.balance_drift_points.set(abs(cards[-1].drift))
        drifting = {card.voucher_id: card.drift for card in cards if card.drift}
        if not drifting:
            return
        self.metrics.balance_drift.inc(len(drifting))
        shown = dict(itertools.islice(drifting.items(), MAX_DRIFT_LOGGED))
        log.info("card.balance_drift", cards=len(drifting), drift=shown)

    async def _dead_letter_alone(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        record: Record,
        error: BaseException,
        attempts: int,
    ) -> PartitionBatch:
        single = PartitionBatch(tp, [record])
        reason = f"{type(error).__name__}: {error}"
        self._queue_dead_letter(single, record, [reason], "persistent", attempts)
        await self._commit_all(consumer, [single])
        self._attempts.pop((tp, int(record.offset)), None)
        return single

    # -- emit and commit -------------------------------------------------------------------

    async def _commit_all(self, consumer: AIOKafkaConsumer, batches: list[PartitionBatch]) -> None:
        """Commit every partition's outputs and offsets; a lost partition is left to its owner."""
        if self.settings.transactional:
            results = await asyncio.gather(
                *(self._commit_partition(consumer, b) for b in batches), return_exceptions=True
            )
        else:
            await self._commit_at_least_once(consumer, batches)
            results = [None] * len(batches)
        committed_at = time.time()
        failure: BaseException | None = None
        for batch, result in zip(batches, results, strict=True):
            if result is None:
                batch.committed = True
                self._account_committed(batch, committed_at)
            elif isinstance(result, Fenced):
                batch.lost = True
                log.warning(
                    "partition.lost",
                    partition=batch.tp.partition,
                    records=len(batch.records),
                    reason=str(result),
                )
            else:
                failure = failure or result
        if failure is not None:
            raise failure

    def _account_committed(self, batch: PartitionBatch, committed_at: float) -> None:
        """Metrics move only once effects are committed, so they match what others see."""
        self.metrics.consumed.inc(len(batch.records))
        counters = {
            "applied": self.metrics.applied,
            "duplicate": self.metrics.duplicates,
            "replay": self.metrics.replays,
            "skipped": self.metrics.skipped,
        }
        for outcome, n in batch.counts.items():
            if outcome in counters:
                counters[outcome].inc(n)
            elif outcome.startswith("dead_lettered_"):
                self.metrics.dead_lettered.labels(outcome.removeprefix("dead_lettered_")).inc(n)
        for record in batch.records:
            if record.timestamp and record.timestamp > 0:
                self.metrics.end_to_end_latency.observe(
                    max(0.0, committed_at - record.timestamp / 1000)
                )
        self._progress[batch.tp] = (batch.next_offset, time.monotonic())

    async def _commit_partition(self, consumer: AIOKafkaConsumer, batch: PartitionBatch) -> None:
        """Outputs and the consumed offset in one Kafka transaction, retried while transient."""
        try:
            await self._retrying("broker", lambda: self._commit_partition_once(consumer, batch))
        except Exception:
            # Not ours any more, or not retriable: fetch the batch again from the committed
            # offset; the ledger then tells replays (re-emit) from duplicates.
            await self._rewind(consumer, batch.tp)
            raise

    async def _commit_partition_once(
        self, consumer: AIOKafkaConsumer, batch: PartitionBatch
    ) -> None:
        if batch.tp in self._in_doubt:
            await self._settle(consumer, batch.tp)
        producer = await self._producer_for(batch.tp)
        # In doubt until the transaction is known to have ended, one way or the other: a
        # timeout (here or in _retrying) may cancel us while the commit is on its way.
        self._in_doubt.add(batch.tp)
        try:
            async with asyncio.timeout(self.settings.retry_attempt_timeout_s):
                await self._transaction(producer, batch, self.settings.consumer_group)
        except (KafkaError, OSError, TimeoutError) as exc:
            error = _as_consumer_error(exc)
            if isinstance(error, Fenced):
                # Another replica owns the partition now; never re-init (that would fence it).
                log.warning(
                    "partition.fenced",
                    partition=batch.tp.partition,
                    transactional_id=self.transactional_id(batch.tp),
                )
                self._producers.pop(batch.tp, None)
                self._fenced.add(batch.tp)
                self._in_doubt.discard(batch.tp)  # the new owner's init settled it
                await self._close_quietly(producer)
            elif await self._abort(producer):
                self._in_doubt.discard(batch.tp)  # aborted for certain: a retry is safe
            raise error from exc
        self._in_doubt.discard(batch.tp)

    async def _settle(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Find out how a transaction that ended without an answer ended, then drop the batch.

        Its commit may have reached the broker after all (a timeout, a broker restart): sending
        the same outputs in a new transaction would commit them twice. A new producer's
        init_transactions completes or aborts it; the group's committed offset then says how
        far the input is done, and the batch is fetched again from there (its records come
        back as replays if the transaction was aborted, or not at all if it committed).
        """
        broken = self._producers.pop(tp, None)
        if broken is not None:
            await self._close_quietly(broken)
        await self._producer_for(tp)  # Fenced if the partition moved: its new owner settles it
        self._in_doubt.discard(tp)
        await self._rewind(consumer, tp)
        log.warning("transaction.in_doubt", partition=tp.partition, action="fetching again")
        raise Fenced(
            f"partition {tp.partition}: the previous transaction ended without an answer; "
            "fetching again from the committed offset"
        )

    @staticmethod
    async def _transaction(producer: AIOKafkaProducer, batch: PartitionBatch, group: str) -> None:
        await producer.begin_transaction()
        sent: list[asyncio.Future[Any]] = []
        try:
            await kafka.send_in_batches(producer, batch.outputs, sent)
            await asyncio.gather(*sent)
            # Offsets after the outputs are acknowledged: sent earlier, they often reach the
            # group coordinator before it has applied this producer's previous commit, and
            # Kafka 4 answers COORDINATOR_NOT_AVAILABLE, which aiokafka waits 100 ms out.
            await producer.send_offsets_to_transaction({batch.tp: batch.next_offset}, group)
        except BaseException:
            # The transaction is abandoned; its sends fail too and nobody else will look.
            for future in sent:
                future.add_done_callback(_retrieve_quietly)
            raise
        await producer.commit_transaction()

    @staticmethod
    async def _abort(producer: AIOKafkaProducer) -> bool:
        """Abort the open transaction; False when the producer cannot be trusted any more."""
        try:
            async with asyncio.timeout(10):
                await producer.abort_transaction()
        # aiokafka asserts its state machine: once the commit was requested, an abort is
        # refused that way, and the commit may still go through.
        except (KafkaError, OSError, TimeoutError, AssertionError):
            return False
        return True

    async def _producer_for(self, tp: TopicPartition) -> AIOKafkaProducer:
        producer = self._producers.get(tp)
        if producer is not None:
            return producer
        assigned = self._consumer is not None and tp in self._consumer.assignment()
        if tp in self._fenced or not assigned:
            raise Fenced(f"partition {tp.partition} is no longer owned by this replica")
        try:
            await self._open_producer(tp)
        except (KafkaError, OSError) as exc:
            raise BrokerUnavailable(f"cannot create the producer for {tp}: {exc}") from exc
        return self._producers[tp]

    async def _commit_at_least_once(
        self, consumer: AIOKafkaConsumer, batches: list[PartitionBatch]
    ) -> None:
        producer = self._plain_producer
        assert producer is not None
        sent = [
            await producer.send(o.topic, value=o.value, key=o.key, headers=o.headers)
            for batch in batches
            for o in batch.outputs
        ]
        await self._retrying("broker", lambda: asyncio.gather(*sent))
        offsets = {batch.tp: batch.next_offset for batch in batches}
        await self._retrying("broker", lambda: consumer.commit(offsets))

    async def _rewind(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Seek back to the committed offset so the batch is fetched again (replays re-emit)."""
        if tp not in consumer.assignment():
            return
        # Never guess: seeking before the committed offset would replay (re-emit) records
        # whose notifications are already committed.
        committed = await self._retrying("broker", lambda: consumer.committed(tp))
        # A rebalance may have taken the partition while we asked: its next owner starts from
        # the committed offset, and there is nothing left to rewind here.
        with contextlib.suppress(IllegalStateError):
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)

    # -- retries and health ----------------------------------------------------------------

    async def _retrying(self, cause: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Retry transient failures with exponential backoff and jitter, pausing the fetcher."""
        consumer = self._consumer

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self.metrics.retries.labels(cause).inc()
            self.health.alive_at = time.monotonic()  # waiting out an outage is not hanging
            self._degrade(f"{cause}: {error}")
            if consumer is not None and consumer.assignment():
                consumer.pause(*consumer.assignment())
            log.warning(f"{cause}.retry", attempt=state.attempt_number, error=str(error))

        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_retriable),
            wait=wait_random_exponential(
                multiplier=self.settings.retry_initial_s, max=self.settings.retry_max_s
            ),
            stop=stop_never,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        async with asyncio.timeout(self.settings.retry_attempt_timeout_s):
                            return await call()
                    except TimeoutError:
                        if cause == "store":
                            raise StoreUnavailable("the database did not answer in time") from None
                        raise BrokerUnavailable("Kafka did not answer in time") from None
                    except KafkaError as exc:
                        raise _as_consumer_error(exc) from exc
        finally:
            if consumer is not None and consumer.paused():
                consumer.resume(*consumer.paused())
            self._heal_if_ok()
        raise AssertionError("unreachable")  # pragma: no cover

    def _degrade(self, why: str) -> None:
        self.health.degraded = why
        self.metrics.ready.set(0)

    def _heal_if_ok(self) -> None:
        if self.health.degraded is not None:
            log.info("worker.recovered", was=self.health.degraded)
        self.health.degraded = None

    @contextlib.contextmanager
    def _in_flight(self, batches: list[PartitionBatch]) -> Iterator[None]:
        """While a batch runs: its partitions can stall, and every log event carries its offsets."""
        self.health.batch_since = time.monotonic()
        self.health.batch_partitions = [f"{b.tp.topic}[{b.tp.partition}]" for b in batches]
        try:
            with self._log_context(batches):
                yield
        finally:
            self.health.batch_since = None

    def _log_context(self, batches: list[PartitionBatch]) -> contextlib.AbstractContextManager[Any]:
        offsets = {
            str(b.tp.partition): [int(b.records[0].offset), int(b.records[-1].offset)]
            for b in batches
        }
        return structlog.contextvars.bound_contextvars(
            topic=self.settings.input_topic, offsets=offsets
        )

    async def _observe(self, consumer: AIOKafkaConsumer) -> None:
        """Lag per partition and stall detection, from what the last fetch told us."""
        now = time.monotonic()
        stalled = []
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp) if self.settings.transactional else None
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
            elif now - since > self.settings.stall_timeout_s:
                stalled.append(f"{tp.topic}[{tp.partition}]")
        self.health.stalled = stalled

    async def _drained(self, consumer: AIOKafkaConsumer) -> bool:
        """Burst mode: every assigned partition is read to its end (or none come at all)."""
        assignment = consumer.assignment()
        if not assignment:
            return self.health.unassigned_for() > self.settings.session_timeout_ms / 1000
        try:
            ends = await consumer.end_offsets(list(assignment))
            for tp in assignment:
                if await consumer.position(tp) < ends[tp]:
                    return False
        except IllegalStateError:
            return False  # a rebalance took a partition meanwhile; look again next turn
        return True
