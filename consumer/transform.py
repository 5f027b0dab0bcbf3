"""Pure mapping of a validated activation to its ledger entry and its notification; no I/O."""

from __future__ import annotations

from typing import Any

from consumer.events import Activation
from consumer.notifications import (
    DEFAULT_SOURCE,
    NOTIFICATION_TYPE,
    SCHEMA_VERSION,
    KafkaRecord,
    PendingPointsActivatedNotification,
    notification_id_text,
    record_of_body,
)
from consumer.store.base import LedgerEntry, SourceOffset

__all__ = ["notification_body", "notification_record", "to_ledger_entry", "to_notification"]


def to_ledger_entry(activation: Activation, source: SourceOffset) -> LedgerEntry:
    """The ledger row for an activation read at `source`."""
    return LedgerEntry(
        transaction_id=activation.transaction_id,
        voucher_id=activation.voucher_id,
        customer_id=activation.customer_id,
        campaign_id=activation.campaign_id,
        points=activation.points,
        reported_balance=activation.balance,
        reported_pending=activation.pending_points,
        occurred_at=activation.activated_at,
        source=source,
    )


def notification_body(activation: Activation) -> dict[str, Any]:
    """The notification as `PendingPointsActivatedNotification.model_dump()` gives it,
    but for the id, which is its text (orjson writes a UUID and its text the same way).

    Plain data in the model's field order, so the worker can serialise it without building
    and validating seven models a record (6 µs instead of 15 µs a notification).
    """
    has_order = (
        activation.order_id is not None
        or activation.order_amount is not None
        or activation.order_currency is not None
    )
    return {
        "type": NOTIFICATION_TYPE,
        "schema_version": SCHEMA_VERSION,
        "notification_id": notification_id_text(activation.transaction_id),
        "activated_at": activation.activated_at,
        "customer": {
            "id": activation.customer_id,
            "name": activation.customer_name,
            "email": activation.customer_email,
            "source_id": activation.customer_source_id,
        },
        "card": {"voucher_id": activation.voucher_id, "code": activation.voucher_code},
        "campaign": {"id": activation.campaign_id, "name": activation.campaign_name},
        "points_activated": activation.points,
        "balance_after": activation.balance,
        "points_pending": activation.pending_points,
        "order": {
            "id": activation.order_id,
            "amount": activation.order_amount,
            "currency": activation.order_currency,
        }
        if has_order
        else None,
        "earning_rule_banner": activation.earning_rule_banner,
        "voucherify": {
            "transaction_id": activation.transaction_id,
            "webhook_id": activation.webhook_id,
        },
    }


def to_notification(activation: Activation) -> PendingPointsActivatedNotification:
    """The customer notification for an activation; identical every time it is computed."""
    return PendingPointsActivatedNotification.model_validate(notification_body(activation))


def notification_record(activation: Activation, *, source: str = DEFAULT_SOURCE) -> KafkaRecord:
    """The Kafka record (key, value, headers) announcing an activation.

    The same bytes as `to_record(to_notification(activation))`, without validating again
    what `classify` validated (every field the output model constrains comes from there).
    """
    return record_of_body(notification_body(activation), source=source)
