"""Pure mapping of a validated activation to its ledger entry and its notification; no I/O."""

from __future__ import annotations

from consumer.events import Activation
from consumer.notifications import (
    DEFAULT_SOURCE,
    KafkaRecord,
    NotifiedCampaign,
    NotifiedCard,
    NotifiedCustomer,
    NotifiedOrder,
    PendingPointsActivatedNotification,
    VoucherifyReferences,
    notification_id,
    to_record,
)
from consumer.store.base import LedgerEntry, SourceOffset

__all__ = ["notification_record", "to_ledger_entry", "to_notification"]


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


def to_notification(activation: Activation) -> PendingPointsActivatedNotification:
    """The customer notification for an activation; identical every time it is computed."""
    has_order = (
        activation.order_id is not None
        or activation.order_amount is not None
        or activation.order_currency is not None
    )
    return PendingPointsActivatedNotification(
        notification_id=notification_id(activation.transaction_id),
        activated_at=activation.activated_at,
        customer=NotifiedCustomer(
            id=activation.customer_id,
            name=activation.customer_name,
            email=activation.customer_email,
            source_id=activation.customer_source_id,
        ),
        card=NotifiedCard(voucher_id=activation.voucher_id, code=activation.voucher_code),
        campaign=NotifiedCampaign(id=activation.campaign_id, name=activation.campaign_name),
        points_activated=activation.points,
        balance_after=activation.balance,
        points_pending=activation.pending_points,
        order=NotifiedOrder(
            id=activation.order_id,
            amount=activation.order_amount,
            currency=activation.order_currency,
        )
        if has_order
        else None,
        earning_rule_banner=activation.earning_rule_banner,
        voucherify=VoucherifyReferences(
            transaction_id=activation.transaction_id, webhook_id=activation.webhook_id
        ),
    )


def notification_record(activation: Activation, *, source: str = DEFAULT_SOURCE) -> KafkaRecord:
    """The Kafka record (key, value, headers) announcing an activation."""
    return to_record(to_notification(activation), source=source)
