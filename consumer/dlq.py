"""Dead-letter tooling: list the dead-letter topic, replay its records into the input exactly once.

Reading. Both commands read `DEAD_LETTER_TOPIC` as a downstream consumer would: every
partition from the beginning up to its end as seen with `read_committed` (the last stable
offset), without a consumer group, so listing changes nothing anywhere.

Replaying exactly once. Each replayed dead letter leaves a *receipt*: a small record written
to the same dead-letter partition, in the same Kafka transaction as the re-published input
record, carrying the header `dlq.receipt_for: <dlq topic>/<partition>/<offset>` (and no
`dlq.reason`, which every dead letter has). So:

- A dead letter counts as replayed if and only if a committed receipt for it follows it in
  its partition. The scan that lists the topic finds both, so "already replayed" is free.
- A crash before a chunk's commit leaves its input records and receipts uncommitted; the next
  run's producer (same transactional id) aborts them, `read_committed` readers (the worker,
  the next scan) never see them, and the next run replays that chunk again. A crash after a
  commit leaves both visible, and the next run skips the chunk. Never both, never neither.
- One transactional producer per dead-letter partition,
  `<TRANSACTIONAL_ID_PREFIX>.dlq-replay.<dlq topic>.<partition>`, started *before* the scan:
  starting it fences any earlier replayer still alive and settles its open transaction, so
  the scan sees all of that replayer's receipts and the earlier one can commit nothing more.
  Two replays run at once therefore never publish a record twice; the older one stops.
- Receipts live and expire with the dead letters they describe (same partition, later
  offsets), so retention can never drop a receipt while keeping its dead letter.

Filters (`--reason`, `--reason-class`, `--since`) only choose which not-yet-replayed dead
letters this run replays. Nothing is marked for the others: a later run with other filters,
or none, still replays them, and a record is never replayed twice whatever the filters. There
is no consumer group and no committed offset, because a single "replayed up to here" position
could not leave a filtered-out record behind for a later run.

The re-published record is the original one: key, value and headers byte for byte (the
`dlq.*` headers removed, a null value restored when `dlq.value_was_null` says so), plus
`dlq.replayed_from: <dlq topic>/<partition>/<offset>`. If it fails again, the worker
dead-letters it again under its new input coordinates, and that new dead letter can be
replayed in its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IllegalOperation, InvalidProducerEpoch, KafkaError, ProducerFenced

from consumer import kafka
from consumer.config import Settings
from consumer.deadletter import (
    REASON,
    REASON_CLASS,
    SOURCE_PARTITION,
    TIME,
    TRUNCATED,
    VALUE_WAS_NULL,
    header,
    original_headers,
)
from consumer.errors import BrokerUnavailable, ConsumerError, Fenced
from consumer.planning import Record

__all__ = [
    "RECEIPT_FOR",
    "REPLAYED_FROM",
    "REPLAYED_TO",
    "ChunkCommitted",
    "Coordinates",
    "Inventory",
    "Letter",
    "ReasonGroup",
    "ReplayHooks",
    "ReplayPlan",
    "ReplayReport",
    "Selection",
    "hooks_from_environment",
    "inventory_json",
    "inventory_lines",
    "list_dead_letters",
    "parse_since",
    "plan_lines",
    "replay",
    "report_lines",
]

REPLAYED_FROM = "dlq.replayed_from"  # on the re-published input record
RECEIPT_FOR = "dlq.receipt_for"  # on the receipt: the dead letter it replayed
REPLAYED_TO = "dlq.replayed_to"  # on the receipt: where the re-published record landed

# Test-only: "before-commit:N" or "after-commit:N" kills the process around chunk N's commit,
# so the interruption tests can crash a real replay. Never set in production.
CRASH_AT = "LOYALTY_CONSUMER_TEST_DLQ_REPLAY_CRASH"

_REASON_WIDTH = 120  # text output only; --json carries the whole reason
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


# -- what the topic holds --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Coordinates:
    """Where a record is: `<topic>/<partition>/<offset>` (topic names cannot contain `/`)."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Coordinates | None:
        parts = text.rsplit("/", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]))


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter, as far as listing and filtering need it (never its value)."""

    where: Coordinates
    reason: str
    reason_class: str
    time: datetime | None  # dlq.time, else the record's timestamp
    truncated: bool = False  # the bounded form: the original value is not kept


@dataclass(slots=True)
class ReasonGroup:
    """Dead letters sharing a reason class and reason."""

    reason_class: str
    reason: str
    count: int = 0
    replayed: int = 0
    newest: datetime | None = None


@dataclass(slots=True)
class Inventory:
    """The dead letters of the topic and the receipts of those already replayed."""

    topic: str
    letters: list[Letter] = field(default_factory=list)
    receipts: dict[Coordinates, str] = field(default_factory=dict)  # dead letter -> replayed to
    other_records: int = 0  # neither a dead letter nor a receipt: never replayed

    def replayed_to(self, letter: Letter) -> str | None:
        return self.receipts.get(letter.where)

    @property
    def replayed(self) -> int:
        return sum(1 for letter in self.letters if letter.where in self.receipts)

    def add(self, record: Record) -> None:
        headers = list(record.headers or ())
        where = Coordinates(record.topic, record.partition, record.offset)
        reason = header(headers, REASON)
        if reason is not None:
            reason_class = header(headers, REASON_CLASS) or "unknown"
            when = _letter_time(header(headers, TIME), record.timestamp)
            truncated = header(headers, TRUNCATED) == "true"
            self.letters.append(Letter(where, reason, reason_class, when, truncated))
            return
        target = _receipt_target(headers, where)
        if target is not None:
            self.receipts[target] = header(headers, REPLAYED_TO) or "?"
            return
        self.other_records += 1

    def groups(self) -> list[ReasonGroup]:
        return _group(self.letters, self.receipts)


def _receipt_target(headers: Sequence[tuple[str, bytes]], where: Coordinates) -> Coordinates | None:
    """The dead letter a receipt is for; it counts only for an earlier record of its partition."""
    target = Coordinates.parse(header(headers, RECEIPT_FOR) or "")
    if target is None or (target.topic, target.partition) != (where.topic, where.partition):
        return None
    return target if target.offset < where.offset else None


def _letter_time(text: str | None, timestamp_ms: int | None) -> datetime | None:
    if text:
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(text)
            if when.tzinfo is not None:
                return when.astimezone(UTC)
    if timestamp_ms is not None and timestamp_ms >= 0:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return None


def _group(letters: Sequence[Letter], receipts: dict[Coordinates, str]) -> list[ReasonGroup]:
    """Per (reason class, reason), newest first."""
    groups: dict[tuple[str, str], ReasonGroup] = {}
    for letter in letters:
        group = groups.setdefault(
            (letter.reason_class, letter.reason),
            ReasonGroup(letter.reason_class, letter.reason),
        )
        group.count += 1
        group.replayed += int(letter.where in receipts)
        if letter.time is not None and (group.newest is None or letter.time > group.newest):
            group.newest = letter.time
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(
        groups.values(),
        key=lambda g: (g.newest or oldest, g.count, g.reason_class, g.reason),
        reverse=True,
    )


# -- choosing what to replay -----------------------------------------------------------------


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time with a timezone, or a duration back from now (`90m`, `2h`, `1d12h`)."""
    text = text.strip()
    if re.fullmatch(r"(?:\d+[smhdw])+", text):
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-01-01T02:00:00Z) "
            "nor a duration (90m, 2h, 7d, 1d12h)"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone; add Z (UTC) or an offset such as +01:00")
    return when.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Selection:
    """The filters of one replay; empty means every dead letter not yet replayed."""

    reason: str | None = None  # a case-insensitive part of dlq.reason
    reason_class: str | None = None  # invalid | persistent
    since: datetime | None = None  # dead-lettered at or after

    def matches(self, letter: Letter) -> bool:
        if self.reason is not None and self.reason.casefold() not in letter.reason.casefold():
            return False
        if self.reason_class is not None and letter.reason_class != self.reason_class:
            return False
        return self.since is None or (letter.time is not None and letter.time >= self.since)


@dataclass(slots=True)
class ReplayPlan:
    """What one run replays, and what it leaves alone."""

    source: str
    target: str
    selected: list[Letter]
    already_replayed: int  # matched the filters, but a receipt says it was replayed before
    not_matching: int  # not replayed yet; left for a run with other filters
    truncated: int = 0  # matched, but only the bounded form exists: cannot be replayed

    def groups(self) -> list[ReasonGroup]:
        return _group(self.selected, {})


def plan_replay(inventory: Inventory, selection: Selection, target: str) -> ReplayPlan:
    selected: list[Letter] = []
    already = not_matching = truncated = 0
    for letter in inventory.letters:
        if not selection.matches(letter):
            not_matching += letter.where not in inventory.receipts
        elif letter.where in inventory.receipts:
            already += 1
        elif letter.truncated:
            truncated += 1  # its prefix would go back into the input as a new invalid record
        else:
            selected.append(letter)
    return ReplayPlan(inventory.topic, target, selected, already, not_matching, truncated)


# -- running a replay ------------------------------------------------------------------------

ChunkHook = Callable[[int], Awaitable[None]]


@dataclass(slots=True)
class ReplayHooks:
    """Test-only interception points; production leaves them empty."""

    after_scan: Callable[[], Awaitable[None]] | None = None
    before_commit: ChunkHook | None = None  # chunk N is in the log, not yet committed
    after_commit: ChunkHook | None = None


def hooks_from_environment() -> ReplayHooks:
    """The crash hook of the interruption tests, when `CRASH_AT` asks for it."""
    hooks = ReplayHooks()
    when, _, chunk = os.environ.get(CRASH_AT, "").partition(":")
    if when not in ("before-commit", "after-commit") or not chunk.isdigit():
        return hooks

    async def crash(number: int) -> None:
        if number == int(chunk):
            os.kill(os.getpid(), signal.SIGKILL)

    if when == "before-commit":
        hooks.before_commit = crash
    else:
        hooks.after_commit = crash
    return hooks


@dataclass(frozen=True, slots=True)
class ChunkCommitted:
    """Progress: one chunk's records and receipts are committed."""

    number: int
    partition: int
    first_offset: int
    last_offset: int
    records: int


@dataclass(slots=True)
class ReplayReport:
    plan: ReplayPlan
    dry_run: bool
    replayed: int = 0

    @property
    def vanished(self) -> int:
        """Selected, but deleted by retention before this run could read them again."""
        return 0 if self.dry_run else len(self.plan.selected) - self.replayed


async def list_dead_letters(settings: Settings) -> Inventory:
    """Read the dead-letter topic to its end: dead letters, and which were replayed."""
    with _kafka_errors(settings):
        partitions, _ = await _layout(settings, need_input=False)
        async with _reader(settings) as consumer:
            return await _inventory(consumer, partitions, settings)


async def replay(
    settings: Settings,
    selection: Selection | None = None,
    *,
    chunk_size: int = 500,
    dry_run: bool = False,
    hooks: ReplayHooks | None = None,
    on_chunk: Callable[[ChunkCommitted], None] | None = None,
) -> ReplayReport:
    """Re-publish the selected dead letters not yet replayed, once each, a transaction a chunk."""
    if settings.input_topic == settings.dead_letter_topic:
        raise ConsumerError("INPUT_TOPIC and DEAD_LETTER_TOPIC name the same topic; fix one")
    with _kafka_errors(settings):
        partitions, input_partitions = await _layout(settings, need_input=True)
        async with (
            _reader(settings) as consumer,
            # Started before the scan: fences an earlier replayer, settles its transaction.
            _producers(settings, [] if dry_run else partitions) as producers,
        ):
            inventory = await _inventory(consumer, partitions, settings)
            hooks = hooks or ReplayHooks()
            if hooks.after_scan is not None:
                await hooks.after_scan()
            plan = plan_replay(inventory, selection or Selection(), settings.input_topic)
            report = ReplayReport(plan, dry_run)
            if dry_run or not plan.selected:
                return report
            replayer = _Replayer(settings, consumer, producers, input_partitions, hooks, on_chunk)
            report.replayed = await replayer.run(plan.selected, chunk_size)
            return report


class _Replayer:
    """Streams the selected dead letters back and commits them with their receipts."""

    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        producers: dict[int, AIOKafkaProducer],
        input_partitions: int,
        hooks: ReplayHooks,
        on_chunk: Callable[[ChunkCommitted], None] | None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producers = producers
        self.input_partitions = input_partitions
        self.hooks = hooks
        self.on_chunk = on_chunk
        self.chunks = 0

    async def run(self, selected: Sequence[Letter], chunk_size: int) -> int:
        replayed = 0
        for partition in sorted({letter.where.partition for letter in selected}):
            offsets = sorted(
                letter.where.offset for letter in selected if letter.where.partition == partition
            )
            tp = TopicPartition(self.settings.dead_letter_topic, partition)
            wanted = set(offsets)
            chunk: list[Record] = []
            self.consumer.seek(tp, offsets[0])
            records = _read_until(self.consumer, {tp: offsets[-1] + 1}, self.settings)
            async with contextlib.aclosing(records):
                async for record in records:
                    if record.offset not in wanted:
                        continue
                    chunk.append(record)
                    if len(chunk) == chunk_size:
                        replayed += await self._commit_chunk(partition, chunk)
                        chunk = []
            if chunk:
                replayed += await self._commit_chunk(partition, chunk)
        return replayed

    async def _commit_chunk(self, partition: int, chunk: list[Record]) -> int:
        producer = self.producers[partition]
        number = self.chunks + 1
        await producer.begin_transaction()
        try:
            sent = [await self._republish(producer, record) for record in chunk]
            placed = await asyncio.gather(*sent)
            receipts = [
                await self._receipt(producer, record, meta)
                for record, meta in zip(chunk, placed, strict=True)
            ]
            await asyncio.gather(*receipts)
            if self.hooks.before_commit is not None:
                await self.hooks.before_commit(number)
            await producer.commit_transaction()
        except (ProducerFenced, InvalidProducerEpoch):
            raise  # the replayer that fenced us has aborted this transaction already
        except BaseException:
            # Best effort: a transaction left open is aborted by the next run's producer
            # start, or by the broker after the transaction timeout.
            with contextlib.suppress(KafkaError, IllegalOperation, OSError, TimeoutError):
                await asyncio.wait_for(producer.abort_transaction(), 10)
            raise
        self.chunks = number
        if self.on_chunk is not None:
            self.on_chunk(
                ChunkCommitted(number, partition, chunk[0].offset, chunk[-1].offset, len(chunk))
            )
        if self.hooks.after_commit is not None:
            await self.hooks.after_commit(number)
        return len(chunk)

    async def _republish(self, producer: AIOKafkaProducer, record: Record) -> Any:
        letter_headers = list(record.headers or ())
        where = Coordinates(record.topic, record.partition, record.offset)
        headers = [*original_headers(letter_headers), (REPLAYED_FROM, str(where).encode())]
        value = None if header(letter_headers, VALUE_WAS_NULL) == "true" else record.value
        target = self.settings.input_topic
        if record.key is None and value is None:
            # aiokafka's send() refuses a record with neither key nor value; Kafka accepts
            # one, and a batch built by hand carries it.
            batch = producer.create_batch()
            batch.append(timestamp=None, key=None, value=None, headers=headers)
            source = header(letter_headers, SOURCE_PARTITION) or ""
            partition = int(source) if source.isdigit() else 0
            return await producer.send_batch(
                batch, target, partition=partition % self.input_partitions
            )
        return await producer.send(target, key=record.key, value=value, headers=headers)

    async def _receipt(self, producer: AIOKafkaProducer, record: Record, meta: Any) -> Any:
        replayed_from = str(Coordinates(record.topic, record.partition, record.offset))
        replayed_to = str(Coordinates(meta.topic, meta.partition, meta.offset))
        replayed_at = _iso(datetime.now(UTC))
        body = {"receipt_for": replayed_from, "replayed_to": replayed_to, "time": replayed_at}
        return await producer.send(
            record.topic,
            partition=record.partition,
            key=replayed_from.encode(),
            value=json.dumps(body).encode(),
            headers=[
                (RECEIPT_FOR, replayed_from.encode()),
                (REPLAYED_TO, replayed_to.encode()),
                (TIME, replayed_at.encode()),
            ],
        )


# -- Kafka plumbing --------------------------------------------------------------------------


@contextlib.contextmanager
def _kafka_errors(settings: Settings) -> Iterator[None]:
    """Kafka's exceptions as one readable line each, in the project's error types."""
    try:
        yield
    except (ProducerFenced, InvalidProducerEpoch):
        raise Fenced(
            "another `dlq replay` started and took over; this one stopped and its open chunk "
            "was aborted, so nothing is replayed twice. Let the other run finish."
        ) from None
    except (KafkaError, OSError, TimeoutError) as exc:
        name = type(exc).__name__
        detail = " ".join(str(exc).split()) or "timed out"
        detail = detail if detail.startswith(name) else f"{name}: {detail}"
        raise BrokerUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers}: {detail}. "
            "Check KAFKA_BOOTSTRAP_SERVERS, the security settings and the broker."
        ) from None


async def _layout(settings: Settings, *, need_input: bool) -> tuple[list[TopicPartition], int]:
    """The dead-letter topic's partitions and the input topic's partition count."""
    admin = AIOKafkaAdminClient(**kafka.connection_options(settings), request_timeout_ms=10_000)
    try:
        await admin.start()
        described = await admin.describe_topics()  # all topics: never auto-creates one
    finally:
        await admin.close()
    partitions = {
        topic["topic"]: sorted(p["partition"] for p in topic["partitions"])
        for topic in described
        if topic["error_code"] == 0
    }
    dead_letters = partitions.get(settings.dead_letter_topic)
    if not dead_letters:
        raise ConsumerError(
            f"the dead-letter topic {settings.dead_letter_topic} does not exist; "
            "check DEAD_LETTER_TOPIC"
        )
    inputs = partitions.get(settings.input_topic, [])
    if need_input and not inputs:
        raise ConsumerError(
            f"the input topic {settings.input_topic} does not exist; check INPUT_TOPIC"
        )
    return [TopicPartition(settings.dead_letter_topic, p) for p in dead_letters], len(inputs)


@contextlib.asynccontextmanager
async def _reader(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group that sees committed records only."""
    consumer = AIOKafkaConsumer(
        **kafka.connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    try:
        await consumer.start()
        yield consumer
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await consumer.stop()


@contextlib.asynccontextmanager
async def _producers(
    settings: Settings, partitions: Sequence[TopicPartition]
) -> AsyncIterator[dict[int, AIOKafkaProducer]]:
    """One started transactional producer per dead-letter partition."""
    producers = {
        tp.partition: kafka.producer(
            settings,
            transactional_id=(
                f"{settings.transactional_id_prefix}.dlq-replay.{tp.topic}.{tp.partition}"
            ),
        )
        for tp in partitions
    }
    try:
        await asyncio.gather(*(p.start() for p in producers.values()))
        yield producers
    finally:
        for producer in producers.values():
            with contextlib.suppress(KafkaError, OSError):
                await producer.stop()


async def _inventory(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], settings: Settings
) -> Inventory:
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    ends = await consumer.end_offsets(partitions)  # read_committed: the last stable offsets
    inventory = Inventory(settings.dead_letter_topic)
    async for record in _read_until(consumer, ends, settings):
        inventory.add(record)
    return inventory


async def _read_until(
    consumer: AIOKafkaConsumer, stops: dict[TopicPartition, int], settings: Settings
) -> AsyncGenerator[Record, None]:
    """The committed records from each partition's position up to (excluding) its stop."""
    remaining = {tp for tp, stop in stops.items() if await consumer.position(tp) < stop}
    progressed_at = time.monotonic()
    while remaining:
        fetched = await consumer.getmany(*remaining, timeout_ms=500)
        for tp, records in fetched.items():
            for record in records:
                if record.offset < stops[tp]:
                    yield record
        before = len(remaining)
        remaining = {tp for tp in remaining if await consumer.position(tp) < stops[tp]}
        if fetched or len(remaining) < before:
            progressed_at = time.monotonic()
        elif time.monotonic() - progressed_at > settings.retry_attempt_timeout_s:
            raise BrokerUnavailable(
                f"reading {settings.dead_letter_topic} made no progress for "
                f"{settings.retry_attempt_timeout_s:g} s"
            )


# -- output ----------------------------------------------------------------------------------


def _iso(when: datetime, timespec: str = "auto") -> str:
    return when.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _one_line(reason: str) -> str:
    flat = " ".join(reason.split())
    return flat if len(flat) <= _REASON_WIDTH else flat[: _REASON_WIDTH - 1] + "…"


def _group_table(groups: Sequence[ReasonGroup], *, replayed: bool) -> list[str]:
    head = f"{'NEWEST':<20}  {'CLASS':<10}  {'COUNT':>5}  "
    head += f"{'REPLAYED':>8}  REASON" if replayed else "REASON"
    lines = [head]
    for g in groups:
        newest = _iso(g.newest, "seconds") if g.newest else "-"
        line = f"{newest:<20}  {g.reason_class:<10}  {g.count:>5}  "
        line += f"{g.replayed:>8}  " if replayed else ""
        lines.append(line + _one_line(g.reason))
    return lines


def inventory_lines(inventory: Inventory) -> list[str]:
    """`dlq list` for people: a summary line, then one line per reason, newest first."""
    total = len(inventory.letters)
    summary = (
        f"{inventory.topic}: {total} dead letters, {inventory.replayed} replayed, "
        f"{total - inventory.replayed} not replayed"
    )
    if inventory.other_records:
        summary += f"; {inventory.other_records} other records ignored"
    return [summary] + (_group_table(inventory.groups(), replayed=True) if total else [])


def inventory_json(inventory: Inventory) -> str:
    """`dlq list --json`: one object, whole reasons, times in ISO 8601 UTC."""
    document = {
        "topic": inventory.topic,
        "dead_letters": len(inventory.letters),
        "replayed": inventory.replayed,
        "not_replayed": len(inventory.letters) - inventory.replayed,
        "other_records": inventory.other_records,
        "reasons": [
            {
                "reason_class": g.reason_class,
                "reason": g.reason,
                "count": g.count,
                "replayed": g.replayed,
                "newest": _iso(g.newest) if g.newest else None,
            }
            for g in inventory.groups()
        ],
    }
    return json.dumps(document, ensure_ascii=False)


def plan_lines(plan: ReplayPlan) -> list[str]:
    """`dlq replay --dry-run`: counts per reason, then each dead letter's coordinates."""
    lines = [
        f"dry run: would replay {len(plan.selected)} dead letters from {plan.source} to "
        f"{plan.target} ({_left_alone(plan)}); nothing was published"
    ]
    if plan.selected:
        lines += _group_table(plan.groups(), replayed=False)
        lines.append("DEAD LETTER")
        for letter in plan.selected:
            when = _iso(letter.time, "seconds") if letter.time else "-"
            lines.append(f"{letter.where}  {when}  {letter.reason_class}")
    return lines


def report_lines(report: ReplayReport) -> list[str]:
    """`dlq replay`: what was replayed, per reason."""
    if report.dry_run:
        return plan_lines(report.plan)
    plan = report.plan
    if not plan.selected:
        return [f"nothing to replay from {plan.source} ({_left_alone(plan)})"]
    lines = [
        f"replayed {report.replayed} dead letters from {plan.source} to {plan.target} "
        f"({_left_alone(plan)})"
    ]
    if report.vanished:
        lines.append(f"{report.vanished} selected dead letters were deleted by retention first")
    return lines + _group_table(plan.groups(), replayed=False)


def _left_alone(plan: ReplayPlan) -> str:
    left = (
        f"skipped: {plan.already_replayed} already replayed, "
        f"{plan.not_matching} not matching the filters"
    )
    if plan.truncated:
        left += (
            f", {plan.truncated} truncated (Kafka refused the full dead letter; only its "
            "prefix, size and SHA-256 are kept: recover the original at its source)"
        )
    return left
