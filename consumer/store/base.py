"""The store interface: a ledger keyed by Voucherify transaction id, and per-card state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SourceOffset:
    """Where a record came from: the coordinates that tell a replay from a duplicate."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the store decided for one entry of a batch."""

    entry: LedgerEntry
    kind: str  # "applied" (new), "replay" (same source as stored), "duplicate" (other source)


@dataclass(frozen=True, slots=True)
class CardState:
    """Per-card state derived from the ledger."""

    voucher_id: str
    activated_points: int
    reported_balance: int
    reported_pending: int
    last_transaction_id: str
    last_transaction_at: datetime


class Store(Protocol):
    """A backend. `apply_batch` runs in one database transaction."""

    async def apply_batch(self, entries: Sequence[LedgerEntry]) -> list[Outcome]: ...
    async def card(self, voucher_id: str) -> CardState | None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...
