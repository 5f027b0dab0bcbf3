"""Issue #14, item 6: one verdict for a value, whatever the store behind the worker.

A NUL (U+0000) in an id is applied on SQLite and fails as `persistent` on PostgreSQL, whose
text type cannot hold it: validation must refuse it as invalid, with a reason. A bare `data`
object is skipped only when it has the shape of a known sibling event; a target activation
with parts missing is invalid, since skipping it would drop it silently.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from consumer.audit import audit
from consumer.deadletter import REASON, REASON_CLASS, SOURCE_OFFSET, header
from consumer.events import Invalid, classify, classify_exactly
from consumer.store import open_store
from tests import workload
from tests.kafkautil import produce, read_committed
from tests.workers import Topics, drain, settings_for

NUL = "\u0000"


def _with_nul_transaction_id() -> dict[str, Any]:
    return workload.activation(f"vtx_nul{NUL}transaction")


def _with_nul_voucher_id() -> dict[str, Any]:
    return workload.activation("vtx_nul_voucher", voucher_id=f"v_nul{NUL}voucher")


def _with_nul_customer_id() -> dict[str, Any]:
    return workload.activation("vtx_nul_customer", customer_id=f"cust_nul{NUL}customer")


def _with_nul_campaign_id() -> dict[str, Any]:
    payload = workload.activation("vtx_nul_campaign")
    payload["data"]["campaign"]["id"] = f"camp_nul{NUL}campaign"
    return payload


# Each id the store keeps as text, and the paths a reason may name for it (the same id is
# repeated in several places of the payload).
NUL_IDS = {
    "transaction id": (_with_nul_transaction_id, ("data.transaction.id",)),
    "voucher id": (
        _with_nul_voucher_id,
        (
            "data.voucher.id",
            "data.transaction.voucher_id",
            "data.pending_points.voucher_id",
            "data.balance.related_object.id",
        ),
    ),
    "customer id": (
        _with_nul_customer_id,
        ("data.customer.id", "data.pending_points.customer_id", "data.voucher.holder_id"),
    ),
    "campaign id": (_with_nul_campaign_id, ("data.campaign.id",)),
}


def _reason(verdict: object) -> str:
    assert isinstance(verdict, Invalid), f"expected invalid, got {verdict!r}"
    return verdict.reason


@pytest.mark.parametrize("which", list(NUL_IDS))
def test_a_nul_in_an_id_is_invalid_with_a_reason_naming_where(which: str) -> None:
    """A NUL in any id the store holds as text is refused at validation, on both parsers."""
    build, paths = NUL_IDS[which]
    value = workload.encode(build())
    assert b"\\u0000" in value
    for verdict in (classify(value), classify_exactly(value)):
        reason = _reason(verdict)
        assert any(path in reason for path in paths), reason


def test_bare_target_data_without_its_transaction_is_invalid_not_skipped() -> None:
    """The seed's bare `data` without `transaction` is a broken activation, not a sibling
    event: skipping it would drop an activation silently."""
    data = workload.activation("vtx_missing_parts", envelope=False)
    del data["transaction"]
    reason = _reason(classify(workload.encode(data)))
    assert "data.transaction" in reason, reason


@pytest.mark.parametrize(
    "data",
    [{"customer": {"id": "cust_1"}}, {"voucher": {"id": "v_1", "code": "C1"}}],
    ids=["customer-only", "voucher-only"],
)
def test_a_bare_object_of_no_known_sibling_shape_is_invalid(data: dict[str, Any]) -> None:
    """One loyalty-looking section is not the shape of any of the vendor's sibling events."""
    _reason(classify(json.dumps(data).encode()))


@pytest.mark.kafka
async def test_a_nul_in_an_id_gets_the_same_invalid_verdict_on_every_store(
    kafka_bootstrap: str, topics: Topics, store_url: str
) -> None:
    """Through the real worker, on SQLite and on PostgreSQL alike: each activation with a
    NUL in an id is dead-lettered as invalid, with a reason naming the field, the clean
    activation beside them is applied, and nothing is dead-lettered as persistent."""
    settings = settings_for(kafka_bootstrap, topics, store_url)
    values = [workload.encode(build()) for build, _ in NUL_IDS.values()]
    values.append(workload.encode(workload.activation("vtx_clean")))
    await produce(kafka_bootstrap, topics.input, values, partition=0)

    metrics = await asyncio.wait_for(drain(settings), 90)

    letters = {
        header(r.headers, SOURCE_OFFSET) or "": r
        for r in await read_committed(kafka_bootstrap, topics.dead_letters)
    }
    assert sorted(letters) == [str(offset) for offset in range(len(NUL_IDS))], (
        f"dead-lettered offsets {sorted(letters)}"
    )
    for offset, (which, (_, paths)) in enumerate(NUL_IDS.items()):
        headers = list(letters[str(offset)].headers)
        reason = header(headers, REASON) or ""
        assert header(headers, REASON_CLASS) == "invalid", f"{which}: {reason}"
        assert any(path in reason for path in paths), f"{which}: {reason}"
    assert metrics.value("loyalty_consumer_dead_lettered_total", {"reason_class": "invalid"}) == 4
    persistent = {"reason_class": "persistent"}
    assert metrics.value("loyalty_consumer_dead_lettered_total", persistent) == 0
    store = await open_store(store_url)
    try:
        assert (await store.counts()).ledger_entries == 1
        assert await store.ledger_entry("vtx_clean") is not None
    finally:
        await store.close()
    notes = await read_committed(kafka_bootstrap, topics.notifications)
    assert [json.loads(n.value)["voucherify"]["transaction_id"] for n in notes] == ["vtx_clean"]
    report = await audit(settings)
    assert report.ok, report.summary()
