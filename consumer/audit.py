"""The accounting check: every input record applied, skipped or dead-lettered, each effect once.

Reads the input, notification and dead-letter topics as a downstream consumer would
(`read_committed`), the group's committed offsets and the store, and reconciles them:

- per distinct transaction id of the target type: one ledger entry, whose source is one of
  the id's input records, and exactly one committed notification (with the deterministic
  `ce_id`); an id dead-lettered after its entry was applied must have its notification
  recorded as owed (until its replay emits it), else it is a half-effect;
- per input record: applied (the ledger's source), a duplicate (its id was applied from
  another record), skipped (another event type, never dead-lettered) or dead-lettered
  (`dlq.source.*` headers), once;
- per card: `activated_points` equals the sum of the points of its applied entries;
- the group's committed offsets are at the end of the input.

It holds per-record and per-id sets in memory: about 200 bytes per input record, so a few
million records (well under a GB) is the practical limit of one run. It is meant for tests,
chaos runs and operators reconciling a topic after an incident, not for continuous use.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumer import deadletter, kafka
from consumer.config import Settings
from consumer.errors import BrokerUnavailable
from consumer.events import Apply, Invalid, Skip, classify
from consumer.notifications import notification_id
from consumer.store import Store, StoredEntry, open_store

__all__ = ["AuditReport", "audit", "audit_store"]

READ_TIMEOUT_S: Final = 600.0  # reading a whole topic; a stuck read says so instead of hanging
STORE_CONCURRENCY: Final = 8
# The broker aborts a transaction this long after its timeout at most (its
# transaction.abort.timed.out.transaction.cleanup.interval.ms defaults to 10 s).
STABLE_GRACE_S: Final = 30.0
STABLE_POLL_S: Final = 0.1

Position = tuple[int, int]  # (partition, offset) in the input topic


@dataclass(slots=True)
class _Occurrence:
    """One input record of the target type."""

    partition: int
    offset: int
    points: int
    voucher_id: str


@dataclass
class _Input:
    """What the input topic holds, classified record by record."""

    records: int = 0
    by_id: dict[str, list[_Occurrence]] = field(default_factory=dict)
    skipped: set[Position] = field(default_factory=set)
    invalid: set[Position] = field(default_factory=set)
    ends: dict[int, int] = field(default_factory=dict)


@dataclass
class AuditReport:
    """The counts, and a few examples of each discrepancy (see `details`)."""

    records: int = 0
    distinct_ids: int = 0
    applied: int = 0  # distinct ids with a ledger entry
    notified: int = 0  # distinct ids with at least one committed notification
    duplicates: int = 0  # records whose id was applied from another record
    skipped: int = 0
    dead_lettered: int = 0  # input records found in the dead-letter topic
    lost: int = 0  # consumed ids without a ledger entry or a notification, not dead-lettered
    owed: int = 0  # dead-lettered after applying: notification owed until the replay
    half_effects: int = 0  # applied and dead-lettered, never notified nor owed (or both)
    applied_twice: int = 0  # cards whose points exceed the sum of their applied entries
    notified_twice: int = 0
    unaccounted: int = 0  # consumed records neither applied, duplicate, skipped nor dead-lettered
    offsets_behind: int = 0  # sum over partitions of end offset - committed offset
    pending: int = 0  # records at or past the committed offset (not consumed yet)
    cards: int = 0
    card_mismatches: int = 0  # cards whose points differ from their applied entries
    ledger_mismatches: int = 0  # entries whose source or points disagree with the input
    unexpected: int = 0  # ledger rows or notifications for ids not in the input
    bad_notifications: int = 0  # unreadable body or a ce_id that is not the id's UUIDv5
    dead_lettered_twice: int = 0
    misrouted: int = 0  # skipped event types found in the dead-letter topic
    duration_s: float = 0.0
    details: list[str] = field(default_factory=list)
    detail_limit: int = 20

    DISCREPANCIES: ClassVar[tuple[str, ...]] = (
        "lost",
        "half_effects",
        "applied_twice",
        "notified_twice",
        "unaccounted",
        "offsets_behind",
        "card_mismatches",
        "ledger_mismatches",
        "unexpected",
        "bad_notifications",
        "dead_lettered_twice",
        "misrouted",
    )

    @property
    def ok(self) -> bool:
        return not any(getattr(self, name) for name in self.DISCREPANCIES)

    def note(self, line: str) -> None:
        if len(self.details) < self.detail_limit:
            self.details.append(line)

    def counts(self) -> dict[str, int]:
        names = [f.name for f in fields(self) if f.type == "int" and f.name != "detail_limit"]
        return {name: int(getattr(self, name)) for name in names}

    def summary(self) -> str:
        """The counts, one per line, then the examples; the verdict last."""
        counts = self.counts()
        width = max(len(name) for name in counts) + 1
        lines = [f"{name.replace('_', ' '):<{width}} {value}" for name, value in counts.items()]
        lines.append(f"{'duration':<{width}} {self.duration_s:.1f}s")
        if self.details:
            lines.append("examples:")
            lines += [f"  {line}" for line in self.details]
        failed = [name.replace("_", " ") for name in self.DISCREPANCIES if getattr(self, name)]
        lines.append("audit: OK" if not failed else "audit: FAILED (" + ", ".join(failed) + ")")
        return "\n".join(lines)

    def as_json(self) -> str:
        return json.dumps(
            {
                **self.counts(),
                "duration_s": round(self.duration_s, 3),
                "ok": self.ok,
                "details": self.details,
            }
        )


async def audit(settings: Settings, *, details: int = 20) -> AuditReport:
    """Reconcile the topics, the group and the store named by `settings`."""
    store = await open_store(settings.database_url)
    try:
        return await audit_store(settings, store, details=details)
    finally:
        await store.close()


async def audit_store(settings: Settings, store: Store, *, details: int = 20) -> AuditReport:
    """`audit` with a store the caller opened (and closes)."""
    started = time.monotonic()
    report = AuditReport(detail_limit=details)
    seen = await _read_input(settings)
    committed = await _committed_offsets(settings)
    letters = await _read_dead_letters(settings)
    notes = await _read_notifications(settings, report)
    ledger = await _ledger(store, seen.by_id)
    report.records = seen.records
    report.distinct_ids = len(seen.by_id)
    _check_offsets(report, seen, committed)
    _check_records(report, seen, letters, ledger, committed)
    _check_ids(report, settings.input_topic, seen, letters, ledger, notes, committed)
    await _check_cards(report, store, ledger)
    report.duration_s = time.monotonic() - started
    return report


# --------------------------------------------------------------------------- reading Kafka


async def _read_topic(settings: Settings, topic: str) -> AsyncIterator[Any]:
    """Every committed record of `topic`, from the beginning to the end seen at the start."""
    reader = AIOKafkaConsumer(
        **kafka.connection_options(settings),
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        await reader.start()
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}"
        ) from None
    try:
        await reader._client.force_metadata_update()
        numbers = reader.partitions_for_topic(topic)
        if not numbers:
            raise BrokerUnavailable(f"topic {topic} does not exist or has no partitions")
        partitions = [TopicPartition(topic, p) for p in sorted(numbers)]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await _stable_ends(settings, reader, partitions)
        deadline = time.monotonic() + READ_TIMEOUT_S
        remaining = [tp for tp in partitions if await reader.position(tp) < ends[tp]]
        while remaining:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"reading {topic} did not reach its end offsets within {READ_TIMEOUT_S}s"
                )
            batch = await reader.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
            remaining = [tp for tp in remaining if await reader.position(tp) < ends[tp]]
    finally:
        await reader.stop()


async def _stable_ends(
    settings: Settings, reader: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The end up to which everything written before the audit began is decided: the last
    stable offsets, once they have reached the high watermarks seen at the start.

    A transaction still open (a replica that died in the middle of one, its producer not
    restarted) hides everything after its first record from read_committed readers until
    the broker aborts it, KAFKA_TRANSACTION_TIMEOUT_MS later. Reading before then would
    report the records behind it as never notified.
    """
    raw = AIOKafkaConsumer(**kafka.connection_options(settings), isolation_level="read_uncommitted")
    await raw.start()
    try:
        high = await raw.end_offsets(partitions)
    finally:
        await raw.stop()
    patience_s = settings.kafka_transaction_timeout_ms / 1000 + STABLE_GRACE_S
    deadline = time.monotonic() + patience_s
    while True:
        stable = await reader.end_offsets(partitions)
        behind = [tp.partition for tp in partitions if stable[tp] < high[tp]]
        if not behind:
            return dict(stable)
        if time.monotonic() > deadline:
            raise BrokerUnavailable(
                f"{partitions[0].topic} partition(s) {behind}: a transaction has stayed open "
                f"for over {patience_s:.0f}s, longer than KAFKA_TRANSACTION_TIMEOUT_MS allows; "
                "check the broker's transaction state (kafka-transactions.sh list), then audit "
                "again"
            )
        await asyncio.sleep(STABLE_POLL_S)


async def _read_input(settings: Settings) -> _Input:
    seen = _Input()
    async for record in _read_topic(settings, settings.input_topic):
        seen.records += 1
        where = (int(record.partition), int(record.offset))
        seen.ends[where[0]] = max(seen.ends.get(where[0], 0), where[1] + 1)
        verdict = classify(record.value)
        if isinstance(verdict, Apply):
            activation = verdict.activation
            seen.by_id.setdefault(activation.transaction_id, []).append(
                _Occurrence(where[0], where[1], activation.points, activation.voucher_id)
            )
        elif isinstance(verdict, Skip):
            seen.skipped.add(where)
        elif isinstance(verdict, Invalid):
            seen.invalid.add(where)
    return seen


async def _committed_offsets(settings: Settings) -> dict[int, int]:
    admin = AIOKafkaAdminClient(**kafka.connection_options(settings))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.consumer_group)
    finally:
        await admin.close()
    return {
        tp.partition: int(meta.offset)
        for tp, meta in offsets.items()
        if tp.topic == settings.input_topic and meta.offset >= 0
    }


async def _read_dead_letters(settings: Settings) -> Counter[Position]:
    letters: Counter[Position] = Counter()
    async for record in _read_topic(settings, settings.dead_letter_topic):
        headers = list(record.headers or ())
        if deadletter.header(headers, deadletter.SOURCE_TOPIC) != settings.input_topic:
            continue
        partition = deadletter.header(headers, deadletter.SOURCE_PARTITION)
        offset = deadletter.header(headers, deadletter.SOURCE_OFFSET)
        if partition is None or offset is None or not deadletter.header(headers, deadletter.REASON):
            continue
        letters[(int(partition), int(offset))] += 1
    return letters


async def _read_notifications(settings: Settings, report: AuditReport) -> Counter[str]:
    notified: Counter[str] = Counter()
    async for record in _read_topic(settings, settings.notification_topic):
        ce_id = dict(record.headers or ()).get("ce_id", b"").decode("utf-8", "replace")
        try:
            transaction_id = json.loads(record.value)["voucherify"]["transaction_id"]
        except (ValueError, TypeError, KeyError):
            report.bad_notifications += 1
            report.note(f"notification at {record.partition}@{record.offset}: unreadable body")
            continue
        if ce_id != str(notification_id(transaction_id)):
            report.bad_notifications += 1
            report.note(f"{transaction_id}: ce_id {ce_id!r} is not its notification id")
        notified[transaction_id] += 1
    return notified


# --------------------------------------------------------------------------- the store


async def _ledger(store: Store, ids: Iterable[str]) -> dict[str, StoredEntry]:
    """The ledger entries of the given ids (those that exist)."""
    limit = asyncio.Semaphore(STORE_CONCURRENCY)

    async def one(transaction_id: str) -> StoredEntry | None:
        async with limit:
            return await store.ledger_entry(transaction_id)

    ordered = list(ids)
    found: dict[str, StoredEntry] = {}
    for start in range(0, len(ordered), 1_000):
        chunk = ordered[start : start + 1_000]
        for transaction_id, entry in zip(
            chunk, await asyncio.gather(*(one(i) for i in chunk)), strict=True
        ):
            if entry is not None:
                found[transaction_id] = entry
    return found


# --------------------------------------------------------------------------- the checks


def _check_offsets(report: AuditReport, seen: _Input, committed: dict[int, int]) -> None:
    for partition, end in sorted(seen.ends.items()):
        behind = max(0, end - committed.get(partition, 0))
        if behind:
            report.offsets_behind += behind
            report.note(f"partition {partition}: committed {committed.get(partition)}, end {end}")


def _consumed(where: Position, committed: dict[int, int]) -> bool:
    return where[1] < committed.get(where[0], 0)


def _check_records(
    report: AuditReport,
    seen: _Input,
    letters: Counter[Position],
    ledger: dict[str, StoredEntry],
    committed: dict[int, int],
) -> None:
    """Each input record once: applied, duplicate, skipped or dead-lettered."""
    for transaction_id, occurrences in seen.by_id.items():
        entry = ledger.get(transaction_id)
        for occurrence in occurrences:
            where = (occurrence.partition, occurrence.offset)
            if letters[where]:
                report.dead_lettered += 1
            elif entry is not None:
                report.duplicates += (entry.source.partition, entry.source.offset) != where
            else:
                _not_handled(report, where, committed, f"({transaction_id}) neither applied")
    for where in seen.skipped:
        if letters[where]:
            report.misrouted += 1
            report.note(f"{where[0]}@{where[1]}: another event type, dead-lettered")
        else:
            report.skipped += 1
    for where in seen.invalid:
        if letters[where]:
            report.dead_lettered += 1
        else:
            _not_handled(report, where, committed, "invalid but not")
    _check_letters(report, seen, letters)


def _not_handled(
    report: AuditReport, where: Position, committed: dict[int, int], what: str
) -> None:
    if not _consumed(where, committed):
        report.pending += 1
        return
    report.unaccounted += 1
    report.note(f"{where[0]}@{where[1]} {what} dead-lettered")


def _check_letters(report: AuditReport, seen: _Input, letters: Counter[Position]) -> None:
    known = {(o.partition, o.offset) for occurrences in seen.by_id.values() for o in occurrences}
    for where, times in letters.items():
        if times > 1:
            report.dead_lettered_twice += 1
            report.note(f"{where[0]}@{where[1]}: dead-lettered {times} times")
        if where not in known and where not in seen.invalid and where not in seen.skipped:
            report.unexpected += 1
            report.note(f"dead letter for {where[0]}@{where[1]}, which the input does not hold")


def _check_ids(
    report: AuditReport,
    topic: str,
    seen: _Input,
    letters: Counter[Position],
    ledger: dict[str, StoredEntry],
    notes: Counter[str],
    committed: dict[int, int],
) -> None:
    for transaction_id, occurrences in seen.by_id.items():
        entry = ledger.get(transaction_id)
        times = notes[transaction_id]
        report.applied += entry is not None
        report.notified += times > 0
        if times > 1:
            report.notified_twice += 1
            report.note(f"{transaction_id}: notified {times} times")
        if entry is not None:
            _check_entry(report, topic, transaction_id, entry, occurrences)
        places = [(o.partition, o.offset) for o in occurrences]
        dead_lettered = any(letters[where] for where in places)
        if _effects_disagree(report, transaction_id, entry, times, dead_lettered):
            continue
        if (entry is not None and times) or dead_lettered:
            continue
        if not any(_consumed(where, committed) for where in places):
            continue  # not read yet: counted as pending, not lost
        report.lost += 1
        missing = "no ledger entry" if entry is None else "applied but never notified"
        if entry is None and times:
            missing = "notified but no ledger entry"
        report.note(f"{transaction_id}: {missing}")
    for transaction_id in notes.keys() - seen.by_id.keys():
        report.unexpected += 1
        report.note(f"{transaction_id}: notified, but no input record of the target type has it")


def _effects_disagree(
    report: AuditReport,
    transaction_id: str,
    entry: StoredEntry | None,
    times: int,
    dead_lettered: bool,
) -> bool:
    """Whether the ledger and the topics tell two stories about an id's notification
    (counted here: owed while waiting for a replay, or a half-effect)."""
    if entry is not None and entry.notification_owed:
        if times:
            report.half_effects += 1  # a replay of its dead letter would notify again
            report.note(f"{transaction_id}: notified, yet still marked as owed")
        elif dead_lettered:
            report.owed += 1  # accounted for until its dead letter is replayed
        else:
            report.half_effects += 1
            report.note(f"{transaction_id}: marked as owed, but never dead-lettered")
        return True
    if entry is not None and dead_lettered and not times:
        report.half_effects += 1
        report.note(f"{transaction_id}: applied and dead-lettered, never notified nor owed")
        return True
    return False


def _check_entry(
    report: AuditReport,
    topic: str,
    transaction_id: str,
    entry: StoredEntry,
    occurrences: list[_Occurrence],
) -> None:
    source = next(
        (
            o
            for o in occurrences
            if (o.partition, o.offset) == (entry.source.partition, entry.source.offset)
        ),
        None,
    )
    if source is None or entry.source.topic != topic:
        report.ledger_mismatches += 1
        report.note(f"{transaction_id}: ledger source {entry.source} is none of its records")
    elif source.points != entry.points or source.voucher_id != entry.voucher_id:
        report.ledger_mismatches += 1
        report.note(f"{transaction_id}: ledger points/card differ from its source record")


async def _check_cards(report: AuditReport, store: Store, ledger: dict[str, StoredEntry]) -> None:
    expected: dict[str, int] = {}
    for entry in ledger.values():
        expected[entry.voucher_id] = expected.get(entry.voucher_id, 0) + entry.points
    limit = asyncio.Semaphore(STORE_CONCURRENCY)

    async def one(voucher_id: str) -> tuple[str, int | None]:
        async with limit:
            card = await store.card(voucher_id)
        return voucher_id, None if card is None else card.activated_points

    totals = await asyncio.gather(*(one(voucher_id) for voucher_id in sorted(expected)))
    report.cards = len(totals)
    for voucher_id, actual in totals:
        want = expected[voucher_id]
        if actual == want:
            continue
        report.card_mismatches += 1
        if actual is not None and actual > want:
            report.applied_twice += 1
        report.note(f"card {voucher_id}: activated_points {actual}, its ledger entries sum {want}")
    counts = await store.counts()
    extra_rows = counts.ledger_entries - len(ledger)
    if extra_rows > 0:
        report.unexpected += extra_rows
        report.note(f"{extra_rows} ledger entries for ids that no input record of the type holds")
    elsewhere = counts.activated_points - sum(actual or 0 for _, actual in totals)
    if elsewhere:
        report.unexpected += 1
        report.note(f"{elsewhere} points on cards that no applied ledger entry names")
