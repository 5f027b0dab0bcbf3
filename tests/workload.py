"""Seed-shaped Voucherify payloads for tests: the reference event with other ids and amounts."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from tests.services import SHARED

EXAMPLES = SHARED / "contracts" / "voucherify" / "examples"
SEED_FILE = EXAMPLES / "seed-voucher-loyalty-card-pending-points-activated.json"
TARGET = "voucher.loyalty_card.pending_points.activated"
SEED_TRANSACTION_ID = "vtx_0ff34b9df109a39357"
SEED_VOUCHER_ID = "v_bITntTcyfRHPvrOMgwdQVSlShsWRZu4v"
SEED_CUSTOMER_ID = "cust_KiZa6C6R30sgqqpU76o6B7u0"


@cache
def _seed() -> dict[str, Any]:
    if not SEED_FILE.is_file():
        raise FileNotFoundError(
            f"reference payload not found at {SEED_FILE}; the tests expect the shared/ "
            "folder beside the repository"
        )
    loaded: dict[str, Any] = json.loads(SEED_FILE.read_text())
    return loaded


def seed_bytes() -> bytes:
    return SEED_FILE.read_bytes()


def sibling_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.json") if p != SEED_FILE)


def activation(
    transaction_id: str,
    *,
    voucher_id: str = SEED_VOUCHER_ID,
    customer_id: str = SEED_CUSTOMER_ID,
    points: int = 23,
    balance: int = 23,
    pending: int = 46,
    created_at: datetime | None = None,
    envelope: bool = True,
) -> dict[str, Any]:
    """The seed event with the fields the worker relies on replaced."""
    data = copy.deepcopy(_seed())
    when = (created_at or datetime(2025, 1, 8, 14, 8, 34, tzinfo=UTC)).astimezone(UTC)
    stamp = when.isoformat().replace("+00:00", "Z")
    data["transaction"]["id"] = transaction_id
    data["transaction"]["voucher_id"] = voucher_id
    data["transaction"]["created_at"] = stamp
    data["voucher"]["id"] = voucher_id
    data["voucher"]["holder_id"] = customer_id
    data["voucher"]["loyalty_card"]["pending_points"] = pending
    data["voucher"]["loyalty_card"]["balance"] = balance
    data["pending_points"]["voucher_id"] = voucher_id
    data["pending_points"]["customer_id"] = customer_id
    data["pending_points"]["points"] = points
    data["balance"]["balance"] = balance
    data["balance"]["related_object"]["id"] = voucher_id
    data["customer"]["id"] = customer_id
    if not envelope:
        return data
    return {
        "id": f"whs_{transaction_id.removeprefix('vtx_')}",
        "project_id": "proj_test",
        "created_at": (when + timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
        "type": TARGET,
        "data": data,
        "source": {"id": "wh_test", "object": "webhook"},
        "event": {"id": "ev_test", "type": TARGET},
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
