"""KIP-447 for aiokafka: offsets committed in a transaction name the group generation, and
committed offsets are read only once they are stable.

aiokafka 0.14 sends TxnOffsetCommit v0 (group id only) and OffsetFetch v1-v3 (no
`require_stable`). Without the first, a replica that lost its partitions can still commit a
transaction for them; without the second, an offset read right after a transaction's commit
may be the one before it (the broker answers EndTxn before the markers land). Kafka Streams
fixed both in its second exactly-once mode; this module defines the two newer request
versions (their wire schemas are Kafka's TxnOffsetCommitRequest v3 and OffsetFetchRequest v7,
both flexible) on aiokafka's protocol layer, and plugs the first into its producer.

Reliance on aiokafka internals, all in this module and covered by tests/test_kip447.py
against the real broker:
- `AIOKafkaProducer._sender` and its `_do_txn_offset_commit(offsets, group_id)` step, which
  `Sender._maybe_do_transactional_request` calls once the group was added to the
  transaction; `Sender._find_coordinator`, `Sender._coordinator_dead`, `Sender.client`,
  `Sender._txn_manager` and the `aiokafka.producer.sender.BaseHandler` request loop;
- the transaction manager's `offset_committed` and `error_transaction` transitions, its
  `state` and `_transaction_waiter` (see `GroupFencedProducer.must_be_replaced` and
  `discard` for why they are read);
- `AIOKafkaConsumer._coordinator.generation` / `.member_id` (read by the caller, see
  `member_of`) and `AIOKafkaConsumer._client`, to reach the group coordinator.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import aiokafka.errors as kafka_errors
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.producer.sender import BaseHandler
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

from consumer.errors import BrokerUnavailable, ConfigurationError

__all__ = [
    "GroupFenced",
    "GroupFencedProducer",
    "GroupMember",
    "StableOffsets",
    "member_of",
]

UNSTABLE_OFFSET_COMMIT = 88  # OffsetFetch with require_stable: a transaction holds offsets
FENCED_INSTANCE_ID = 82
# TxnOffsetCommit answers that say "you are not the member of this generation any more".
_NOT_A_MEMBER = {
    kafka_errors.IllegalGenerationError.errno,  # 22
    kafka_errors.UnknownMemberIdError.errno,  # 25
    kafka_errors.RebalanceInProgressError.errno,  # 27
    FENCED_INSTANCE_ID,
}
_RETRY_LATER = {
    kafka_errors.CoordinatorLoadInProgressError.errno,  # 14
    kafka_errors.UnknownTopicOrPartitionError.errno,  # 3
    UNSTABLE_OFFSET_COMMIT,
}
_COORDINATOR_MOVED = {
    kafka_errors.CoordinatorNotAvailableError.errno,  # 15
    kafka_errors.NotCoordinatorError.errno,  # 16
    kafka_errors.RequestTimedOutError.errno,  # 7
}
CLOSE_TIMEOUT_S = 10.0
STABLE_READ_BACKOFF_S = 0.02  # markers land within milliseconds of EndTxn's answer


@dataclass(frozen=True, slots=True)
class GroupMember:
    """Who commits: the group, and this replica's place in one generation of it."""

    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None = None


class GroupFenced(kafka_errors.KafkaError):  # type: ignore[misc]
    """The group coordinator refused a transactional offset commit: the generation it names
    is over (or this member left it). The transaction can only be aborted."""

    retriable = False


def member_of(consumer: AIOKafkaConsumer, group_id: str) -> GroupMember:
    """The consumer's current generation and member id (aiokafka internals, see above)."""
    coordinator = consumer._coordinator
    return GroupMember(group_id, int(coordinator.generation), str(coordinator.member_id))


# --------------------------------------------------------------------------- TxnOffsetCommit v3


class _TxnOffsetCommitResponseV3(Response):  # type: ignore[misc]
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32), ("error_code", Int16), ("tags", TaggedFields)
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommitRequestV3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = _TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


_TxnOffsetCommitStruct: TypeAlias = _TxnOffsetCommitRequestV3


class _TxnOffsetCommitRequest(Request[_TxnOffsetCommitStruct]):  # type: ignore[misc]
    API_KEY = 28

    def __init__(self, fields: tuple[Any, ...]) -> None:
        self._fields = fields

    def build(self, request_struct_class: type[_TxnOffsetCommitStruct]) -> _TxnOffsetCommitStruct:
        return request_struct_class(*self._fields)


class _TxnOffsetCommitHandler(BaseHandler):  # type: ignore[misc]
    """aiokafka's handler for the same step, sending v3 with the member's generation."""

    group = ConnectionGroup.COORDINATION

    def __init__(self, sender: Any, offsets: Mapping[TopicPartition, Any], member: GroupMember):
        super().__init__(sender)
        self._offsets = offsets
        self._member = member

    def create_request(self) -> _TxnOffsetCommitRequest:
        manager = self._sender._txn_manager
        by_topic: dict[str, list[tuple[int, int, int, str, dict[int, bytes]]]] = (
            collections.defaultdict(list)
        )
        for tp, offset in sorted(self._offsets.items()):
            by_topic[tp.topic].append((tp.partition, offset.offset, -1, offset.metadata, {}))
        member = self._member
        return _TxnOffsetCommitRequest(
            (
                manager.transactional_id,
                member.group_id,
                manager.producer_id,
                manager.producer_epoch,
                member.generation_id,
                member.member_id,
                member.group_instance_id,
                [(topic, partitions, {}) for topic, partitions in by_topic.items()],
                {},
            )
        )

    def handle_response(self, response: Any) -> float | None:
        manager = self._sender._txn_manager
        for topic, partitions, _ in response.topics:
            for partition, code, _ in partitions:
                tp = TopicPartition(topic, partition)
                if code == 0:
                    manager.offset_committed(tp, self._offsets[tp].offset, self._member.group_id)
                elif code in _COORDINATOR_MOVED:
                    self._sender._coordinator_dead(CoordinationType.GROUP)
                    return float(self._default_backoff)
                elif code in _RETRY_LATER:
                    return float(self._default_backoff)
                elif code == kafka_errors.InvalidProducerEpoch.errno:
                    raise kafka_errors.ProducerFenced()
                elif code in _NOT_A_MEMBER:
                    # Abortable, as in the Java client (CommitFailedException): the caller
                    # aborts, and the partitions' next owner redoes the work.
                    error_type = kafka_errors.for_code(code)
                    manager.error_transaction(
                        GroupFenced(
                            f"the group coordinator refused the offsets of generation "
                            f"{self._member.generation_id} ({error_type.__name__})"
                        )
                    )
                    return None
                else:
                    manager.error_transaction(kafka_errors.for_code(code)())
                    return None
        return None

    def handle_error(self) -> float:
        self._sender._coordinator_dead(CoordinationType.GROUP)
        return float(self._default_backoff)


class GroupFencedProducer(AIOKafkaProducer):  # type: ignore[misc]
    """A transactional producer whose offset commits carry the group generation (KIP-447).

    The group coordinator then refuses the offsets of a member that the group has moved on
    from, and the whole transaction is aborted: one producer serves every input partition.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._member: GroupMember | None = None
        # The one step replaced: the request the sender builds once the group was added.
        self._sender._do_txn_offset_commit = self._commit_offsets_of_member

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], member: GroupMember
    ) -> None:
        self._member = member
        await super().send_offsets_to_transaction(dict(offsets), member.group_id)

    @property
    def must_be_replaced(self) -> bool:
        """True once the transaction hit an abortable error that aiokafka recorded with
        `TransactionManager.error_transaction` (group fenced, authorization refused).

        That call forgets the partitions the transaction holds on the broker, so
        abort_transaction sends no EndTxn(ABORT) and the broker keeps the transaction open:
        the next commit would commit its records. A new producer of the same transactional
        id aborts it for certain (init_transactions). See tests/test_kip447.py.
        """
        state = self._txn_manager.state if self._txn_manager is not None else None
        return state in (TransactionState.ABORTABLE_ERROR, TransactionState.FATAL_ERROR)

    async def discard(self) -> None:
        """Stop a producer that is being replaced, quietly.

        aiokafka sets the transaction's error on a future that only commit or abort would
        await; unretrieved, asyncio logs it as "Future exception was never retrieved" when
        it is collected (what operators saw at every fencing).
        """
        manager = self._txn_manager
        waiter = None if manager is None else manager._transaction_waiter
        if waiter is not None and waiter.done() and not waiter.cancelled():
            waiter.exception()
        with contextlib.suppress(kafka_errors.KafkaError, OSError, TimeoutError):
            await asyncio.wait_for(self.stop(), CLOSE_TIMEOUT_S)

    async def _commit_offsets_of_member(
        self, offsets: Mapping[TopicPartition, Any], _: str
    ) -> None:
        if not offsets:
            return
        member = self._member
        assert member is not None, "send_offsets_to_transaction sets the member first"
        sender = self._sender
        try:
            node_id = await sender._find_coordinator(CoordinationType.GROUP, member.group_id)
        except kafka_errors.GroupAuthorizationFailedError as exc:
            sender._txn_manager.error_transaction(exc)
            return
        try:
            await _TxnOffsetCommitHandler(sender, offsets, member).do(node_id)
        except NotImplementedError:
            # Request.prepare found no version we define: a broker before Kafka 2.5.
            sender._txn_manager.error_transaction(
                ConfigurationError(
                    "the Kafka brokers do not support TxnOffsetCommit v3 (KIP-447, Kafka 2.5+), "
                    "which exactly-once mode needs; upgrade the brokers or set "
                    "DELIVERY_MODE=at-least-once"
                )
            )


# --------------------------------------------------------------------------- OffsetFetch v7


class _OffsetFetchResponseV7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class _OffsetFetchRequestV7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = _OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


_OffsetFetchStruct: TypeAlias = _OffsetFetchRequestV7


class _StableOffsetFetchRequest(Request[_OffsetFetchStruct]):  # type: ignore[misc]
    API_KEY = 9

    def __init__(self, group_id: str, partitions: Iterable[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = collections.defaultdict(list)
        for tp in sorted(partitions):
            by_topic[tp.topic].append(tp.partition)
        self._fields: tuple[Any, ...] = (
            group_id,
            [(t, p, {}) for t, p in by_topic.items()],
            True,
            {},
        )

    def build(self, request_struct_class: type[_OffsetFetchStruct]) -> _OffsetFetchStruct:
        return request_struct_class(*self._fields)


class StableOffsets:
    """Reads a group's committed offsets once they are stable (OffsetFetch v7)."""

    def __init__(self, client: AIOKafkaClient, group_id: str) -> None:
        self._client = client
        self._group_id = group_id
        self._coordinator: int | None = None  # a FindCoordinator took ~0.5 s here: kept

    async def read(
        self, partitions: Iterable[TopicPartition], *, timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        """The committed offset of each partition once no transaction holds one back (None:
        nothing committed). Waits out pending transactions (UNSTABLE_OFFSET_COMMIT) and
        coordinator moves; BrokerUnavailable after `timeout_s`."""
        wanted = set(partitions)
        found: dict[TopicPartition, int | None] = {}
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while wanted - found.keys():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"the committed offsets of {len(wanted - found.keys())} partition(s) did "
                    f"not become stable within {timeout_s:.0f}s ({last}); a transaction of a "
                    "replica that stopped may hold them until the transaction timeout"
                )
            try:
                response = await self._fetch(wanted - found.keys())
            except (kafka_errors.KafkaError, OSError) as exc:
                if not getattr(exc, "retriable", True):
                    raise
                self._coordinator = None
                last = type(exc).__name__
                await asyncio.sleep(STABLE_READ_BACKOFF_S)
                continue
            if response.error_code:
                last = self._note(response.error_code)
            for topic, answers, _ in response.topics:
                for partition, offset, _epoch, _metadata, code, _ in answers:
                    if code == 0:
                        found[TopicPartition(topic, partition)] = None if offset < 0 else offset
                    else:
                        last = self._note(code)
            if wanted - found.keys():
                await asyncio.sleep(STABLE_READ_BACKOFF_S)
        return found

    async def _fetch(self, partitions: set[TopicPartition]) -> Any:
        if self._coordinator is None:
            self._coordinator = await self._client.coordinator_lookup(
                CoordinationType.GROUP, self._group_id
            )
        request = _StableOffsetFetchRequest(self._group_id, partitions)
        try:
            return await self._client.send(
                self._coordinator, request, group=ConnectionGroup.COORDINATION
            )
        except NotImplementedError:
            raise ConfigurationError(
                "the Kafka brokers do not support OffsetFetch v7 (KIP-447, Kafka 2.5+), which "
                "exactly-once mode needs; upgrade the brokers or set DELIVERY_MODE=at-least-once"
            ) from None

    def _note(self, code: int) -> str:
        if code == UNSTABLE_OFFSET_COMMIT:
            return "a transaction holds the offsets"
        if code in _COORDINATOR_MOVED:
            self._coordinator = None
        return str(kafka_errors.for_code(code).__name__)
