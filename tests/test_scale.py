"""A ledger of a million entries: duplicate detection and card updates stay index-backed.

Speed is never asserted (machines differ); the plans are: no statement of a batch may scan the
ledger or the cards. The per-batch cost with a small and with a million-entry ledger is
printed, with their ratio, for the record.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from consumer.store import LedgerEntry, SourceOffset, Store, open_store
from consumer.store import postgres as postgres_store
from consumer.store.base import CardChange

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BULK = 1_000_000
BULK_CARDS = 50_000
SMALL = 2_500
BATCH = 500
BATCHES = 12
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

# Rows written straight into the schema, shaped as the worker writes them.
_LOAD_LEDGER = """
INSERT INTO ledger (transaction_id, voucher_id, customer_id, campaign_id, points,
                    reported_balance, reported_pending, occurred_at, source_topic,
                    source_partition, source_offset)
SELECT $1 || lpad(i::text, 8, '0'), $2 || (i % $4), 'cust_' || (i % $4), 'camp_scale', 10,
       0, 0, timestamptz '2024-01-01' + i * interval '1 second', 'scale.in', i % 6, i
FROM generate_series(1, $3::integer) AS i
"""
_LOAD_CARDS = """
INSERT INTO cards (voucher_id, activated_points, reported_balance, reported_pending,
                   last_transaction_id, last_transaction_at)
SELECT voucher_id, sum(points), 0, 0, max(transaction_id), max(occurred_at)
FROM ledger WHERE transaction_id LIKE $1 || '%' GROUP BY voucher_id
"""


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    opened = await open_store(postgres_url, migrate=True)
    try:
        yield opened
    finally:
        await opened.close()


async def _load(url: str, prefix: str, rows: int, cards: int) -> float:
    started = time.perf_counter()
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("SET synchronous_commit = off")
        await connection.execute(_LOAD_LEDGER, prefix, f"v_{prefix}", rows, cards)
        await connection.execute(_LOAD_CARDS, prefix)
        await connection.execute("ANALYZE ledger; ANALYZE cards")
    finally:
        await connection.close()
    return time.perf_counter() - started


def _entry(transaction_id: str, voucher_id: str, serial: int) -> LedgerEntry:
    return LedgerEntry(
        transaction_id=transaction_id,
        voucher_id=voucher_id,
        customer_id="cust_scale",
        campaign_id="camp_scale",
        points=3,
        reported_balance=0,
        reported_pending=0,
        occurred_at=EPOCH + timedelta(days=400, seconds=serial),
        source=SourceOffset("scale.in", 0, 10_000_000 + serial),
    )


def _batch(rng: random.Random, prefix: str, rows: int, cards: int, n: int) -> list[LedgerEntry]:
    """Half new ids, half re-deliveries of old ones, every card already there."""
    entries = []
    for k in range(BATCH // 2):
        serial = n * BATCH + k
        entries.append(_entry(f"vtx_new{serial:09d}", f"v_{prefix}{rng.randrange(cards)}", serial))
        old = rng.randrange(1, rows + 1)
        entries.append(_entry(f"{prefix}{old:08d}", f"v_{prefix}{old % cards}", serial))
    rng.shuffle(entries)
    return entries


async def _cost(store: Store, prefix: str, rows: int, cards: int, offset: int) -> list[float]:
    rng = random.Random(rows)
    timings = []
    for n in range(offset, offset + BATCHES):
        entries = _batch(rng, prefix, rows, cards, n)
        started = time.perf_counter()
        result = await store.apply_batch(entries)
        timings.append(time.perf_counter() - started)
        assert (result.count("applied"), result.count("duplicate")) == (BATCH // 2, BATCH // 2)
    return timings[2:]  # the first batches warm the connection and the plan cache


def _nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    found = []
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Node Type" in node:
                found.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


async def _explain(url: str, statement: str, *arguments: object) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(url)
    try:
        plan = await connection.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *arguments)
    finally:
        await connection.close()
    return _nodes(json.loads(plan))


def _scans(nodes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(node["Node Type"], node.get("Relation Name", "")) for node in nodes]


def _arbiters(nodes: list[dict[str, Any]]) -> list[str]:
    """The unique indexes an INSERT ... ON CONFLICT checks (never a scan of the table)."""
    return [index for node in nodes for index in node.get("Conflict Arbiter Indexes", [])]


async def test_a_million_entries_keep_duplicate_checks_and_card_updates_index_backed(
    store: Store, postgres_url: str
) -> None:
    await _load(postgres_url, "vtx_small", SMALL, 250)
    small = await _cost(store, "vtx_small", SMALL, 250, offset=0)
    load_s = await _load(postgres_url, "vtx_bulk", BULK, BULK_CARDS)
    large = await _cost(store, "vtx_bulk", BULK, BULK_CARDS, offset=100)

    counts = await store.counts()
    assert counts.ledger_entries == SMALL + BULK + 2 * BATCHES * BATCH // 2
    rng = random.Random(7)
    ids = [f"vtx_bulk{rng.randrange(1, BULK + 1):08d}" for _ in range(BATCH // 2)]
    vouchers = sorted({f"v_vtx_bulk{rng.randrange(BULK_CARDS)}" for _ in range(BATCH // 2)})
    lookup = await _explain(postgres_url, postgres_store._STORED_SOURCES, ids)
    changes = [CardChange(v, 1, _entry(f"vtx_x{n}", v, n)) for n, v in enumerate(vouchers)]
    cards = await _explain(
        postgres_url, postgres_store._UPSERT_CARDS, postgres_store._card_rows(changes), vouchers
    )
    insert = await _explain(
        postgres_url,
        postgres_store._INSERT_LEDGER,
        postgres_store._ledger_rows([_entry(i, "v_x", 0) for i in ids]),
    )

    print(  # noqa: T201  the numbers are the point; they are reported, never asserted
        f"\nbulk load of {BULK:,} entries and {BULK_CARDS:,} cards: {load_s:.1f}s"
        f"\napply_batch of {BATCH} entries (half new, half duplicates), median of "
        f"{len(small)}: {statistics.median(small) * 1000:.1f} ms with {SMALL:,} entries, "
        f"{statistics.median(large) * 1000:.1f} ms with {BULK:,}; factor "
        f"{statistics.median(large) / statistics.median(small):.2f}"
        f"\nplans: lookup {_scans(lookup)}\n       cards {_scans(cards)} arbiters "
        f"{_arbiters(cards)}\n       insert {_scans(insert)} arbiters {_arbiters(insert)}"
    )
    for plan in (lookup, cards, insert):
        assert ("Seq Scan", "ledger") not in _scans(plan)
        assert ("Seq Scan", "cards") not in _scans(plan)
    assert any(kind.startswith(("Index", "Bitmap")) for kind, _ in _scans(lookup)), lookup
    assert any(kind.startswith(("Index", "Bitmap")) for kind, _ in _scans(cards)), cards
    assert _arbiters(insert) == ["ledger_pkey"]
    assert _arbiters(cards) == ["cards_pkey"]
