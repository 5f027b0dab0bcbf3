"""The output contract: the notification, its Kafka record, and the ledger entry."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.events import Activation, Apply, classify
from consumer.notifications import (
    DEFAULT_SOURCE,
    NOTIFICATION_NAMESPACE,
    NOTIFICATION_TYPE,
    PendingPointsActivatedNotification,
    notification_id,
    notification_id_text,
    to_record,
)
from consumer.store.base import LedgerEntry, SourceOffset
from consumer.transform import notification_record, to_ledger_entry, to_notification
from tests.contract_files import activation_payloads, encode, envelope, seed_bytes, seed_data

SEED_TRANSACTION = "vtx_0ff34b9df109a39357"


def activation_of(value: bytes) -> Activation:
    verdict = classify(value)
    assert isinstance(verdict, Apply), verdict
    return verdict.activation


@pytest.fixture
def seed_activation() -> Activation:
    return activation_of(seed_bytes())


def test_the_seed_notification_says_what_the_customer_needs(seed_activation: Activation) -> None:
    body = json.loads(notification_record(seed_activation).value)
    assert body["points_activated"] == 23
    assert body["balance_after"] == 23
    assert body["points_pending"] == 46
    assert body["customer"] == {
        "id": "cust_KiZa6C6R30sgqqpU76o6B7u0",
        "name": "Alex Doe",
        "email": None,
        "source_id": "4lx-d03",
    }
    assert body["card"] == {"voucher_id": "v_bITntTcyfRHPvrOMgwdQVSlShsWRZu4v", "code": "67028386"}
    assert body["campaign"] == {"id": "camp_E14SFSXh2JueXgZ0wFarf3jU", "name": "Loyalty program"}
    assert body["order"] == {"id": "ord_0ff203bb8a0ca13337", "amount": 500, "currency": "USD"}
    assert body["earning_rule_banner"] == "Here come your loyalty points"
    assert body["voucherify"] == {"transaction_id": SEED_TRANSACTION, "webhook_id": None}
    assert body["activated_at"] == "2025-01-08T14:08:34.127000Z"
    assert body["type"] == NOTIFICATION_TYPE
    assert body["schema_version"] == 1


def test_the_notification_id_is_uuid5_of_the_transaction_id(seed_activation: Activation) -> None:
    expected = uuid.uuid5(NOTIFICATION_NAMESPACE, SEED_TRANSACTION)
    assert notification_id(SEED_TRANSACTION) == expected
    assert to_notification(seed_activation).notification_id == expected
    assert expected == uuid.UUID("4d43400a-e6b7-5f4c-a75c-0c05ca37fe16")  # namespace never changes


@given(st.text(min_size=1))  # no lone surrogates: classify rejects those before this
def test_the_id_text_is_the_uuid5_text(transaction_id: str) -> None:
    assert notification_id_text(transaction_id) == str(notification_id(transaction_id))


def test_the_record_is_byte_identical_every_time_it_is_computed() -> None:
    first = notification_record(activation_of(seed_bytes()))
    second = notification_record(activation_of(seed_bytes()))
    assert first == second


def test_the_record_is_keyed_by_customer_with_cloudevents_headers(
    seed_activation: Activation,
) -> None:
    record = notification_record(seed_activation)
    assert record.key == b"cust_KiZa6C6R30sgqqpU76o6B7u0"
    assert dict(record.headers) == {
        "ce_specversion": b"1.0",
        "ce_id": b"4d43400a-e6b7-5f4c-a75c-0c05ca37fe16",
        "ce_source": DEFAULT_SOURCE.encode(),
        "ce_type": b"loyalty.pending_points.activated.v1",
        "ce_time": b"2025-01-08T14:08:34.127000Z",
        "ce_subject": SEED_TRANSACTION.encode(),
        "ce_partitionkey": b"cust_KiZa6C6R30sgqqpU76o6B7u0",
        "content-type": b"application/json",
    }
    assert len(record.headers) == len(dict(record.headers))


def test_the_cloudevents_source_is_configurable(seed_activation: Activation) -> None:
    record = notification_record(seed_activation, source="urn:example:eu-1")
    assert dict(record.headers)["ce_source"] == b"urn:example:eu-1"


def test_the_body_validates_against_the_published_model(seed_activation: Activation) -> None:
    record = notification_record(seed_activation)
    parsed = PendingPointsActivatedNotification.model_validate_json(record.value)
    assert parsed == to_notification(seed_activation)


def test_the_webhook_id_comes_from_the_envelope() -> None:
    activation = activation_of(encode(envelope(seed_data())))
    body = json.loads(notification_record(activation).value)
    assert body["voucherify"]["webhook_id"] == "whs_0f5e2d6c1a2b3c4d5e"


def test_activation_time_is_given_in_utc_whatever_the_input_offset() -> None:
    data = seed_data()
    data["transaction"]["created_at"] = "2025-01-08T16:08:34.127+02:00"
    record = notification_record(activation_of(encode(data)))
    assert dict(record.headers)["ce_time"] == b"2025-01-08T14:08:34.127000Z"


def test_no_order_section_gives_a_null_order() -> None:
    data = seed_data()
    del data["order"]
    body = json.loads(notification_record(activation_of(encode(data))).value)
    assert body["order"] is None


def test_an_order_without_a_currency_keeps_its_id_and_amount() -> None:
    data = seed_data()
    data["order"]["metadata"] = {"region": "US"}
    body = json.loads(notification_record(activation_of(encode(data))).value)
    assert body["order"] == {"id": "ord_0ff203bb8a0ca13337", "amount": 500, "currency": None}


def test_the_ledger_entry_carries_the_activation_and_its_source(
    seed_activation: Activation,
) -> None:
    source = SourceOffset("voucherify.webhooks", 3, 1234)
    assert to_ledger_entry(seed_activation, source) == LedgerEntry(
        transaction_id=SEED_TRANSACTION,
        voucher_id="v_bITntTcyfRHPvrOMgwdQVSlShsWRZu4v",
        customer_id="cust_KiZa6C6R30sgqqpU76o6B7u0",
        campaign_id="camp_E14SFSXh2JueXgZ0wFarf3jU",
        points=23,
        reported_balance=23,
        reported_pending=46,
        occurred_at=datetime(2025, 1, 8, 14, 8, 34, 127000, tzinfo=UTC),
        source=source,
    )


@settings(max_examples=100, deadline=None)
@given(data=activation_payloads(), wrapped=st.booleans())
def test_every_applied_payload_gives_a_valid_notification(
    data: dict[str, Any], wrapped: bool
) -> None:
    activation = activation_of(encode(envelope(data) if wrapped else data))
    record = notification_record(activation)
    parsed = PendingPointsActivatedNotification.model_validate_json(record.value)
    assert parsed.points_activated == data["pending_points"]["points"]
    assert record.key == data["customer"]["id"].encode()
    assert parsed.notification_id == notification_id(data["transaction"]["id"])
    # The hot path's record is the one the published model gives, to the byte.
    assert record == to_record(to_notification(activation))
