"""Committing a batch's outputs and offsets to Kafka: in one transaction (exactly-once), or
outputs first and offsets after (at-least-once), behind one small interface."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
)

from consumer import kafka
from consumer.config import Settings
from consumer.errors import (
    BatchRefused,
    BrokerUnavailable,
    ConfigurationError,
    EpochEnded,
    Fenced,
)
from consumer.kip447 import GroupFenced, GroupFencedProducer, StableOffsets
from consumer.ownership import Ownership
from consumer.planning import Output, Plan
from consumer.retrier import Retrier, is_retriable

__all__ = ["AtLeastOnceCommitter", "Committer", "TransactionalCommitter"]

log = structlog.get_logger("consumer.committer")

_INSTANCES = itertools.count()  # workers in this process, for their transactional ids
# Fenced by our own transactional id this many times in a row: another live process uses it.
MAX_PRODUCER_FENCINGS = 3


class Committer(Protocol):
    """Makes a batch's outputs and consumed offsets visible, or raises: Fenced (the batch's
    epoch is over; drop it), BatchRefused (Kafka will never take these outputs; bisect)."""

    async def start(self) -> None: ...

    async def commit(self, plan: Plan, outputs: list[Output]) -> None: ...

    async def stop(self) -> None: ...


def _retrieve_quietly(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _refused(exc: BaseException) -> BatchRefused:
    return BatchRefused(f"Kafka refused the batch: {type(exc).__name__}: {exc}")


class TransactionalCommitter:
    """One transactional producer for every partition this replica owns (KIP-447).

    Each batch is one Kafka transaction: its notifications and dead letters, then its
    offsets, which name the batch's group generation so that the group coordinator refuses
    them once the group has moved on. A transaction that ended without an answer is in
    doubt: a new producer of the same transactional id settles it (init_transactions
    completes or aborts it), and the stable committed offsets then say which.
    """

    def __init__(
        self,
        settings: Settings,
        retrier: Retrier,
        ownership: Ownership,
        offsets: StableOffsets,
    ) -> None:
        self.transactional_id = settings.replica_transactional_id(next(_INSTANCES))
        self._settings = settings
        self._retrier = retrier
        self._ownership = ownership
        self._offsets = offsets
        self._producer: GroupFencedProducer | None = None
        self._in_doubt: dict[TopicPartition, int] | None = None  # offsets of that transaction
        self._fencings = 0

    async def start(self) -> None:
        await self._retrier.call("broker", self._open)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.discard()

    async def commit(self, plan: Plan, outputs: list[Output]) -> None:
        offsets = plan.offsets()
        member = plan.epoch.member
        assert member is not None, "exactly-once epochs carry the group generation"

        async def attempt() -> None:
            if not self._ownership.holds(plan.epoch):
                raise EpochEnded("its epoch ended before its transaction began")
            if self._in_doubt is not None and await self._settled_as_committed():
                return
            await self._transaction(outputs, offsets, member)

        await self._retrier.call("broker", attempt, bounded=False)
        self._fencings = 0

    async def _transaction(
        self, outputs: list[Output], offsets: dict[TopicPartition, int], member: Any
    ) -> None:
        producer = self._producer or await self._open()
        sent: list[asyncio.Future[Any]] = []
        committing = False
        began = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.retry_attempt_timeout_s):
                await producer.begin_transaction()
                try:
                    await kafka.send_in_batches(producer, outputs, sent)
                    await asyncio.gather(*sent)
                    # Offsets after the outputs are acknowledged: sent earlier, they often
                    # reach the group coordinator before it has applied this producer's
                    # previous commit, and Kafka 4 answers COORDINATOR_NOT_AVAILABLE, which
                    # aiokafka waits 100 ms out.
                    await producer.send_offsets_to_transaction(offsets, member)
                except BaseException:
                    # The transaction is abandoned; its sends fail too and nobody else looks.
                    for future in sent:
                        future.add_done_callback(_retrieve_quietly)
                    raise
                committing = True
                await producer.commit_transaction()
        except GroupFenced as exc:
            await self._replace()  # aiokafka's abort would leave the transaction open
            raise Fenced(str(exc)) from exc
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            # Our epoch was bumped: the broker aborted a transaction that outlived
            # KAFKA_TRANSACTION_TIMEOUT_MS, or another process took our transactional id.
            await self._replace()
            timeout_s = self._settings.kafka_transaction_timeout_ms / 1000
            if time.monotonic() - began < 0.8 * timeout_s:  # not our transaction timing out
                self._fencings += 1
            if self._fencings >= MAX_PRODUCER_FENCINGS:
                raise ConfigurationError(
                    f"the transactional id {self.transactional_id} was fenced "
                    f"{self._fencings} times in a row: another live process uses it. Give "
                    "each replica its own (TRANSACTIONAL_ID, or leave it unset to derive one "
                    "from TRANSACTIONAL_ID_PREFIX, the host name and the process id)"
                ) from exc
            raise BrokerUnavailable(f"the transaction was aborted ({exc})") from exc
        except (KafkaError, OSError, TimeoutError, ValueError, AssertionError) as exc:
            if committing or not await self._replaced():
                self._in_doubt = offsets
                log.warning("transaction.in_doubt", error=f"{type(exc).__name__}: {exc}")
                raise BrokerUnavailable(f"the transaction ended without an answer ({exc})") from exc
            if (isinstance(exc, KafkaError) and exc.retriable) or isinstance(
                exc, OSError | TimeoutError
            ):
                raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
            raise _refused(exc) from exc

    async def _settled_as_committed(self) -> bool:
        """Whether the transaction in doubt committed; afterwards it is no longer in doubt."""
        offsets = self._in_doubt
        assert offsets is not None
        await self._replace()  # init_transactions completes or aborts it
        found = await self._offsets.read(offsets, timeout_s=self._settings.retry_attempt_timeout_s)
        self._in_doubt = None
        committed = all(found.get(tp) == offset for tp, offset in offsets.items())
        log.info("transaction.settled", committed=committed, partitions=len(offsets))
        if not committed and any((found.get(tp) or 0) > offset for tp, offset in offsets.items()):
            raise Fenced("another replica committed these partitions further meanwhile")
        return committed

    async def _replaced(self) -> bool:
        """End a failed transaction for certain: a new producer's init_transactions aborts
        it. An abort would not do: after an abortable error aiokafka forgets what the
        transaction holds (see GroupFencedProducer.must_be_replaced), and after a batch the
        broker refused its sequence numbers are out of step (OutOfOrderSequenceNumber)."""
        try:
            await self._replace()
        except BrokerUnavailable:
            return False
        return True

    async def _replace(self) -> None:
        """A new producer of the same id: its init_transactions ends whatever the old one
        left open (and fences the old one, should it still be talking)."""
        old, self._producer = self._producer, None
        if old is not None:
            await old.discard()
        await self._open()

    async def _open(self) -> GroupFencedProducer:
        producer = kafka.transactional_producer(self._settings, self.transactional_id)
        try:
            async with asyncio.timeout(self._settings.retry_attempt_timeout_s):
                await producer.start()  # init_transactions
        except BaseException as exc:
            await producer.discard()
            if isinstance(exc, KafkaError | OSError | TimeoutError):
                raise BrokerUnavailable(
                    f"cannot start the transactional producer {self.transactional_id}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            raise
        self._producer = producer
        return producer


class AtLeastOnceCommitter:
    """Outputs first, acknowledged one by one, then the offsets through the consumer's own
    group commit: a crash in between repeats the batch's outputs, never loses them."""

    def __init__(
        self,
        settings: Settings,
        retrier: Retrier,
        ownership: Ownership,
        consumer: AIOKafkaConsumer,
    ) -> None:
        self._settings = settings
        self._retrier = retrier
        self._ownership = ownership
        self._consumer = consumer
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = kafka.producer(self._settings)
        await self._retrier.call("broker", producer.start)
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await producer.stop()

    async def commit(self, plan: Plan, outputs: list[Output]) -> None:
        await self._deliver(outputs)
        offsets = plan.offsets()

        async def commit_offsets() -> None:
            if not self._ownership.holds(plan.epoch):
                raise EpochEnded("its epoch ended before its offsets were committed")
            try:
                await self._consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                raise Fenced(
                    f"the group moved on before the offsets were committed: {exc}"
                ) from exc

        await self._retrier.call("broker", commit_offsets)

    async def _deliver(self, outputs: list[Output]) -> None:
        """Every output acknowledged. One not acknowledged within an attempt is sent again
        (it may then arrive twice: at-least-once); never awaited again once abandoned."""
        remaining = list(outputs)

        async def attempt() -> None:
            nonlocal remaining
            sent = await self._send(remaining)
            failed, refusal = _unacknowledged(sent)
            remaining = failed + remaining[len(sent) :]
            if refusal is not None:
                raise _refused(refusal)
            if remaining:
                raise BrokerUnavailable(f"{len(remaining)} output(s) not acknowledged in time")

        await self._retrier.call("broker", attempt, bounded=False)

    async def _send(self, outputs: list[Output]) -> list[tuple[Output, asyncio.Future[Any]]]:
        """Send and wait for the acknowledgements, for one attempt's time at most."""
        producer = self._producer
        assert producer is not None
        sent: list[tuple[Output, asyncio.Future[Any]]] = []
        if not outputs:
            return sent
        try:
            async with asyncio.timeout(self._settings.retry_attempt_timeout_s):
                for o in outputs:
                    future = await producer.send(
                        o.topic, value=o.value, key=o.key, headers=o.headers
                    )
                    sent.append((o, future))
                await asyncio.wait([future for _, future in sent])
        except TimeoutError:
            pass  # what is not acknowledged by now is sent again
        except KafkaError as exc:  # refused at send(): too large for max_request_size
            if not exc.retriable:
                raise _refused(exc) from exc
        return sent


def _unacknowledged(
    sent: list[tuple[Output, asyncio.Future[Any]]],
) -> tuple[list[Output], BaseException | None]:
    """The outputs to send again, and the first refusal for good among the failures."""
    failed: list[Output] = []
    refusal: BaseException | None = None
    for output, future in sent:
        if not future.done():
            future.add_done_callback(_retrieve_quietly)
            failed.append(output)
            continue
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            failed.append(output)
            if error is not None and not is_retriable(error) and refusal is None:
                refusal = error
    return failed, refusal
