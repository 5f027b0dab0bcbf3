"""A replay is a replay wherever it sits in the batch, even behind a duplicate of the same id.

Found by the reduced chaos run (seed 794593): a transaction's batch was applied in the
database, its Kafka transaction never committed (a broker restart), and the batch fetched
again also held a later re-delivery of the same transaction from another partition, ahead of
the original record. The store called the first occurrence a duplicate (right) and then the
original one a duplicate too, "a repeat within the batch" (wrong: it is the record that
applied the entry, replayed), so its notification was never sent.
"""

from __future__ import annotations

from datetime import UTC, datetime

from consumer.store import LedgerEntry, SourceOffset, open_store
from consumer.store.base import decide


def _entry(partition: int, offset: int, transaction_id: str = "vtx_replayed") -> LedgerEntry:
    return LedgerEntry(
        transaction_id=transaction_id,
        voucher_id="v_card",
        customer_id="cust_a",
        campaign_id="camp_a",
        points=10,
        reported_balance=10,
        reported_pending=0,
        occurred_at=datetime(2025, 1, 8, 14, 8, 34, tzinfo=UTC),
        source=SourceOffset("in", partition, offset),
    )


def test_the_record_that_applied_an_entry_is_a_replay_even_after_a_duplicate() -> None:
    original, redelivered = _entry(5, 186), _entry(1, 193)

    outcomes = decide([redelivered, original], set(), {"vtx_replayed": original.source})

    assert [o.kind for o in outcomes] == ["duplicate", "replay"]


def test_within_a_batch_only_the_first_occurrence_of_a_new_id_is_applied() -> None:
    first, second = _entry(1, 5, "vtx_new"), _entry(2, 9, "vtx_new")

    outcomes = decide([first, second], {"vtx_new"}, {})

    assert [o.kind for o in outcomes] == ["applied", "duplicate"]


async def test_a_replayed_batch_notifies_the_replay_behind_its_duplicate(store_url: str) -> None:
    original, redelivered = _entry(5, 186), _entry(1, 193)
    store = await open_store(store_url, migrate=True)
    try:
        first = await store.apply_batch([original])  # its Kafka transaction then aborts
        again = await store.apply_batch([redelivered, original])  # fetched again, reordered
        card = await store.card("v_card")
    finally:
        await store.close()

    assert [o.kind for o in first.outcomes] == ["applied"]
    assert [o.kind for o in again.outcomes] == ["duplicate", "replay"]
    assert [o.notifies for o in again.outcomes] == [False, True]
    assert card is not None and card.activated_points == 10
