"""The store interface: a ledger keyed by Voucherify transaction id, and per-card state."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from consumer.errors import StoreError
from consumer.store.schema import MigrationReport

# "owed": the entry was applied earlier and its notification dead-lettered; this record (a
# replayed dead letter, or a re-delivery from elsewhere) emits it and becomes its source.
OutcomeKind = Literal["applied", "replay", "duplicate", "owed"]


@dataclass(frozen=True, slots=True)
class SourceOffset:
    """Where a record came from: the coordinates that tell a replay from a duplicate."""

    topic: str
    partition: int
    offset: int


# Not frozen, like `consumer.events.Activation`: one is built a record, and a frozen one
# took 1.8 instead of 1.1 us. Stores and the worker only read them.
@dataclass(slots=True)
class LedgerEntry:
    """One activation to record. Built by `consumer.transform` from a validated event."""

    transaction_id: str
    voucher_id: str
    customer_id: str
    campaign_id: str
    points: int
    reported_balance: int
    reported_pending: int
    occurred_at: datetime  # transaction.created_at: orders snapshots of the card
    source: SourceOffset

    def __post_init__(self) -> None:
        # A naive time would be read as UTC by one backend and as local time by another,
        # and the newest-snapshot rule would then differ between them.
        if self.occurred_at.utcoffset() is None:
            raise ValueError("LedgerEntry.occurred_at must carry a time zone")


@dataclass(slots=True)
class StoredEntry(LedgerEntry):
    """A ledger row as stored: the entry that first applied it, when, and whether its
    notification is owed (dead-lettered after the entry was applied)."""

    applied_at: datetime
    notification_owed: bool = False

    @classmethod
    def from_row(cls, row: Sequence[Any], to_time: Callable[[Any], datetime]) -> StoredEntry:
        """A row in ledger column order (see the migrations), then applied_at and
        notification_owed."""
        return cls(
            transaction_id=row[0],
            voucher_id=row[1],
            customer_id=row[2],
            campaign_id=row[3],
            points=row[4],
            reported_balance=row[5],
            reported_pending=row[6],
            occurred_at=to_time(row[7]),
            source=SourceOffset(row[8], row[9], row[10]),
            applied_at=to_time(row[11]),
            notification_owed=bool(row[12]),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the store decided for one entry of a batch."""

    entry: LedgerEntry
    # "applied" (new), "replay" (same source as stored), "owed" (its notification was
    # dead-lettered), "duplicate" (any other)
    kind: OutcomeKind

    @property
    def notifies(self) -> bool:
        """A replay re-emits: the Kafka transaction of the first attempt was never committed.
        An owed one emits what a dead letter held back."""
        return self.kind != "duplicate"


@dataclass(frozen=True, slots=True)
class CardState:
    """Per-card state derived from the ledger."""

    voucher_id: str
    activated_points: int  # the sum of the points of the entries we applied
    reported_balance: int  # Voucherify's figures, from the newest transaction seen
    reported_pending: int
    last_transaction_id: str
    last_transaction_at: datetime

    @property
    def drift(self) -> int:
        """Voucherify's balance minus ours: a reconciliation signal, not an error."""
        return self.reported_balance - self.activated_points


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of each entry in input order, and every touched card after the batch."""

    outcomes: tuple[Outcome, ...]
    cards: tuple[CardState, ...]  # sorted by voucher id

    def count(self, kind: OutcomeKind) -> int:
        return sum(1 for outcome in self.outcomes if outcome.kind == kind)


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """Totals for tests, the demo and the accounting check: points in the ledger == on cards."""

    ledger_entries: int
    ledger_points: int
    cards: int
    activated_points: int


class Store(Protocol):
    """A backend. `apply_batch` runs in one database transaction."""

    async def migrate(self) -> MigrationReport:
        """Apply the pending migrations in order, each in its own transaction; idempotent."""
        ...

    async def schema_version(self) -> int: ...

    async def apply_batch(self, entries: Sequence[LedgerEntry]) -> BatchResult:
        """Record the new entries and update their cards, all or nothing. An entry whose
        notification was owed is emitted from the first record that comes for it: the owed
        mark is cleared, and that record becomes the entry's source, in the same
        transaction."""
        ...

    async def mark_owed(self, sources: Sequence[tuple[str, SourceOffset]]) -> int:
        """Record that the notifications of these ledger entries are owed: each was applied
        from that source, and its record is being dead-lettered. Entries whose source is
        another record (which then notified) are left alone. Returns how many were marked."""
        ...

    async def owed(self) -> list[str]:
        """The transaction ids whose notifications are owed, in id order."""
        ...

    async def card(self, voucher_id: str) -> CardState | None: ...
    async def ledger_entry(self, transaction_id: str) -> StoredEntry | None: ...
    async def counts(self) -> StoreCounts: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a trivial query."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...


# The rules every backend shares, kept pure so that both apply exactly the same semantics.


@dataclass(frozen=True, slots=True)
class CardChange:
    """What a batch adds to one card: the points it applied and its newest entry."""

    voucher_id: str
    points: int
    newest: LedgerEntry


def snapshot_order(entry: LedgerEntry) -> tuple[datetime, str]:
    """Newer snapshots sort later: by occurred_at, ties broken by transaction id."""
    return (entry.occurred_at, entry.transaction_id)


def first_occurrences(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """One entry per transaction id (the first seen), sorted by id.

    Every writer takes row locks in that order, so concurrent replicas cannot deadlock.
    """
    first: dict[str, LedgerEntry] = {}
    for entry in entries:
        first.setdefault(entry.transaction_id, entry)
    return [first[transaction_id] for transaction_id in sorted(first)]


def card_changes(applied: Iterable[LedgerEntry]) -> list[CardChange]:
    """One change per card, sorted by voucher id (lock order again)."""
    points: dict[str, int] = {}
    newest: dict[str, LedgerEntry] = {}
    for entry in applied:
        points[entry.voucher_id] = points.get(entry.voucher_id, 0) + entry.points
        current = newest.get(entry.voucher_id)
        if current is None or snapshot_order(entry) > snapshot_order(current):
            newest[entry.voucher_id] = entry
    return [CardChange(voucher, points[voucher], newest[voucher]) for voucher in sorted(points)]


def decide(
    entries: Sequence[LedgerEntry],
    applied_ids: set[str],
    stored_sources: Mapping[str, SourceOffset],
    owed: Set[str] = frozenset(),
) -> tuple[Outcome, ...]:
    """The outcome of each entry, in input order.

    `applied_ids`: transactions this batch inserted, from their first occurrence; any other
    occurrence in the batch is a duplicate. `stored_sources`: the stored source of the
    others; the one entry read from that source is a replay wherever it sits in the batch
    (a re-delivery of the same id may come first, from another partition). `owed`: stored
    entries whose notification is owed; unless the batch replays the stored source, the
    first other occurrence pays it ("owed"). Every other occurrence is a duplicate.
    """
    replayed = {
        entry.transaction_id
        for entry in entries
        if stored_sources.get(entry.transaction_id) == entry.source
    }
    notified: set[str] = set()
    outcomes: list[Outcome] = []
    for entry in entries:
        transaction_id = entry.transaction_id
        kind: OutcomeKind
        if transaction_id in applied_ids:
            kind = "duplicate" if transaction_id in notified else "applied"
        elif transaction_id not in stored_sources:
            raise StoreError(
                f"ledger entry {transaction_id} was neither inserted nor found; "
                "was it deleted while the batch ran?"
            )
        elif stored_sources[transaction_id] == entry.source:
            kind = "replay"
        elif transaction_id in owed and transaction_id not in replayed | notified:
            kind = "owed"
        else:
            kind = "duplicate"
        notified.add(transaction_id)
        outcomes.append(Outcome(entry, kind))
    return tuple(outcomes)


def paid(outcomes: Iterable[Outcome], owed: Set[str]) -> list[LedgerEntry]:
    """The entries whose owed notification this batch emits: their mark is cleared and,
    for an "owed" outcome, the emitting record becomes the source."""
    return [
        outcome.entry
        for outcome in outcomes
        if outcome.kind in ("replay", "owed") and outcome.entry.transaction_id in owed
    ]
