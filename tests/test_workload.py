"""The workload generator: reproducible, seed-shaped, and each kind classified as it claims."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from consumer.events import Apply, Invalid, Skip, classify
from consumer.workload import MALFORMATIONS, REFUSED_PREFIX, Workload, sibling_event_type

EXPECTED_VERDICT = {
    "new": Apply,
    "duplicate": Apply,
    "sibling": Skip,
    "malformed": Invalid,
    "refused": Apply,  # valid: only a store prepared by install_refusal refuses them
}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes() -> None:
    first = list(Workload(seed=11, events=200, partitions=4).records())
    again = list(Workload(seed=11, events=200, partitions=4).records())
    other = list(Workload(seed=12, events=200, partitions=4).records())

    assert first == again
    assert [r.value for r in first] != [r.value for r in other]


def test_every_record_gets_the_verdict_its_kind_promises() -> None:
    workload = Workload(
        seed=3, events=2_000, partitions=6, malformed_share=0.05, refused_share=0.01
    )

    wrong = []
    for record in workload.records():
        verdict = classify(record.value)
        if not isinstance(verdict, EXPECTED_VERDICT[record.kind]):
            wrong.append((record.kind, record.detail, verdict))
        elif isinstance(verdict, Apply):
            assert verdict.transaction_id == record.transaction_id
            assert verdict.activation.points == record.points
            assert verdict.activation.voucher_id == record.voucher_id

    assert wrong == []


def test_every_malformation_appears_and_is_dead_lettered() -> None:
    workload = Workload(seed=5, events=1_000, malformed_share=0.1)

    malformed = [r for r in workload.records() if r.kind == "malformed"]

    assert {r.detail for r in malformed} == set(MALFORMATIONS)
    assert all(isinstance(classify(r.value), Invalid) for r in malformed)
    assert all(r.transaction_id is None for r in malformed)


def test_shares_and_expectation_match_the_stream() -> None:
    workload = Workload(seed=9, events=1_000, duplicate_share=0.2, partitions=3, cards=10)

    records = list(workload.records())
    expected = workload.expectation()

    kinds = Counter(r.kind for r in records)
    assert expected.records == len(records) == 1_000
    assert kinds == Counter(expected.kinds)
    assert kinds["duplicate"] == 200
    new = [r for r in records if r.kind == "new"]
    assert expected.transaction_ids == {r.transaction_id for r in new}
    assert len(new) == expected.distinct
    assert len(expected.points_by_card) == 10  # many activations per card
    by_card: Counter[str] = Counter()
    for record in new:
        assert record.voucher_id is not None
        by_card[record.voucher_id] += record.points
    assert dict(by_card) == expected.points_by_card
    # Balances grow from zero per card, so Voucherify's newest balance is our sum.
    assert expected.balance_by_card == expected.points_by_card


def test_duplicates_come_after_their_original_some_much_later_some_in_another_partition() -> None:
    workload = Workload(seed=21, events=3_000, duplicate_share=0.2, partitions=6)

    first_seen: dict[str, tuple[int, int | None]] = {}
    gaps, moved = [], 0
    for position, record in enumerate(workload.records()):
        if record.kind == "new":
            assert record.transaction_id is not None
            first_seen[record.transaction_id] = (position, record.partition)
        elif record.kind == "duplicate":
            assert record.transaction_id in first_seen, "a duplicate before its original"
            at, partition = first_seen[record.transaction_id]
            gaps.append(position - at)
            moved += record.partition != partition

    assert min(gaps) >= 1
    assert max(gaps) > 1_000  # "hours later", behind many newer events
    assert 0 < moved < len(gaps)


def test_without_partitions_records_are_keyed_and_some_duplicates_change_key() -> None:
    records = list(Workload(seed=4, events=500).records())

    assert all(r.partition is None for r in records)
    keys_by_id: dict[str, set[bytes | None]] = {}
    for record in records:
        if record.transaction_id is not None:
            keys_by_id.setdefault(record.transaction_id, set()).add(record.key)
    assert any(len(keys) > 1 for keys in keys_by_id.values())


def test_a_missing_reference_payload_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="reference payload"):
        Workload(seed=1, events=10, examples=tmp_path)


def test_sibling_files_map_to_webhook_event_types() -> None:
    assert sibling_event_type(Path("voucher-loyalty-card-points-added.json")) == (
        "voucher.loyalty_card.points_added"
    )
    assert sibling_event_type(Path("voucher-loyalty-card-pending-points-canceled.json")) == (
        "voucher.loyalty_card.pending_points.canceled"
    )
    assert sibling_event_type(Path("voucher-loyalty-card-transaction-created.json")) == (
        "voucher.loyalty_card.transaction.created"
    )
    assert sibling_event_type(
        Path("customer-voucher-loyalty-card-pending-points-activated.json")
    ) == ("customer.voucher.loyalty_card.pending_points.activated")


def test_refused_records_are_valid_marked_activations_outside_the_expectation() -> None:
    workload = Workload(seed=21, events=2_000, partitions=6, refused_share=0.005)

    records = list(workload.records())
    refused = [r for r in records if r.kind == "refused"]
    expected = workload.expectation()

    assert len(refused) == expected.kinds["refused"] == 10
    assert all(r.transaction_id and r.transaction_id.startswith(REFUSED_PREFIX) for r in refused)
    assert all(r.partition is not None for r in refused)
    assert not expected.transaction_ids & {r.transaction_id for r in refused}


def test_a_zero_refused_share_leaves_existing_streams_byte_for_byte() -> None:
    plain = list(Workload(seed=13, events=500, partitions=3).records())
    explicit = list(Workload(seed=13, events=500, partitions=3, refused_share=0).records())

    assert plain == explicit


def test_each_payload_is_a_private_copy_of_the_reference_event() -> None:
    from datetime import UTC, datetime

    from consumer.workload import SEED_FILE, activation_payload

    def payload(transaction_id: str) -> dict[str, object]:
        return activation_payload(
            transaction_id,
            voucher_id="v_card",
            customer_id="cust_one",
            points=7,
            balance=70,
            pending=3,
            created_at=datetime(2025, 3, 1, tzinfo=UTC),
            envelope=False,
        )

    first = payload("vtx_first")
    first["customer"]["name"] = "changed"  # type: ignore[index]
    first["voucher"]["loyalty_card"]["points"] = -1  # type: ignore[index]
    second = payload("vtx_second")

    reference = orjson.loads(SEED_FILE.read_bytes())
    assert second["customer"]["name"] == reference["customer"]["name"]  # type: ignore[index]
    assert second["voucher"]["loyalty_card"]["points"] == 70  # type: ignore[index]
    assert second["transaction"]["id"] == "vtx_second"  # type: ignore[index]
    assert second.keys() == reference.keys()
