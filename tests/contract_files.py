"""The shared Voucherify contract material, and payloads generated from the vendor's schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from consumer.events import ACTIVATION_TRANSACTION_TYPE, INT64_MAX, TARGET_EVENT_TYPE

CONTRACTS = Path(__file__).resolve().parents[2] / "shared" / "contracts" / "voucherify"
EXAMPLES = CONTRACTS / "examples"
SEED_NAME = "seed-voucher-loyalty-card-pending-points-activated.json"
DATA_SCHEMA_NAME = "pending-points-activated.data.schema.json"

Json = Any
Path_ = tuple[str, ...]


def contracts_dir() -> Path:
    """The contract folder next to the repository; a clear failure when it is not there."""
    if not (CONTRACTS / DATA_SCHEMA_NAME).is_file():
        pytest.fail(
            f"Voucherify contract material not found at {CONTRACTS}: these tests read the shared "
            "schemas and examples from ../shared/contracts/voucherify next to the repository.",
            pytrace=False,
        )
    return CONTRACTS


def sibling_examples() -> list[Path]:
    """The vendor's examples of every other loyalty event: all must be skipped."""
    return sorted(p for p in (contracts_dir() / "examples").glob("*.json") if p.name != SEED_NAME)


def seed_bytes() -> bytes:
    return (contracts_dir() / "examples" / SEED_NAME).read_bytes()


def seed_data() -> dict[str, Json]:
    data: dict[str, Json] = json.loads(seed_bytes())
    return data


def envelope(data: Json, event_type: str = TARGET_EVENT_TYPE) -> dict[str, Json]:
    """A v2024-01-01 webhook envelope around `data`, as Voucherify sends it."""
    return {
        "id": "whs_0f5e2d6c1a2b3c4d5e",
        "project_id": "proj_5T4Rpl4T1nuM",
        "created_at": "2025-01-08T14:08:35.001Z",
        "type": event_type,
        "data": data,
        "source": {"id": "wh_j56Vfy47Vx9YOX7QYD1fzHnc", "object": "webhook"},
        "event": {"id": "evcus_0ff203bb8d4ca13341", "type": "customer.order.paid"},
    }


def encode(document: Json) -> bytes:
    return json.dumps(document).encode()


# ----------------------------------------------------------------------------- generation
#
# hypothesis-jsonschema 0.23 fails on objects with current hypothesis ("'many' object has no
# attribute 'more'"), so this walks the vendor schema itself: every property the schema
# declares, strings nullable (real payloads carry null there), unknown extra fields added,
# and the fields the consumer relies on drawn from their valid ranges.

_ids = st.text(min_size=1, max_size=24)
# Ids the ledger stores as text: any character a store can hold (no NUL).
_stored_ids = st.text(
    st.characters(exclude_characters="\x00", codec="utf-8"), min_size=1, max_size=24
)
_offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_timestamps = st.builds(
    lambda moment, zulu: moment.isoformat().replace("+00:00", "Z" if zulu else "+00:00"),
    st.datetimes(
        min_value=datetime(1971, 1, 1),  # noqa: DTZ001 - bounds only; the timezone is drawn
        max_value=datetime(2200, 1, 1),  # noqa: DTZ001
        timezones=st.one_of(st.just(UTC), _offsets),
    ),
    st.booleans(),
)

RELIED_ON: dict[Path_, st.SearchStrategy[Json]] = {
    ("customer", "id"): _stored_ids,
    ("campaign", "id"): _stored_ids,
    ("voucher", "id"): _stored_ids,
    ("voucher", "code"): _ids,
    ("voucher", "loyalty_card", "pending_points"): st.integers(0, INT64_MAX),
    ("balance", "balance"): st.integers(0, INT64_MAX),
    ("transaction", "id"): _stored_ids,
    ("transaction", "type"): st.just(ACTIVATION_TRANSACTION_TYPE),
    ("transaction", "voucher_id"): _stored_ids,  # made equal to voucher.id afterwards
    ("transaction", "created_at"): _timestamps,
    ("pending_points", "points"): st.integers(1, INT64_MAX),
    ("order", "amount"): st.one_of(st.none(), st.integers(-INT64_MAX - 1, INT64_MAX)),
}
_REQUIRED_PREFIXES = {path[:i] for path in RELIED_ON for i in range(1, len(path) + 1)}
_REQUIRED_PREFIXES -= {("order",), ("order", "amount")}

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
_any_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@cache
def vendor_data_schema() -> dict[str, Json]:
    schema: dict[str, Json] = json.loads((contracts_dir() / DATA_SCHEMA_NAME).read_text())
    return schema


def _resolve(node: dict[str, Json], defs: dict[str, Json]) -> dict[str, Json]:
    """Inline `$ref` and fold `allOf` into one schema (properties and required merged)."""
    while "$ref" in node:
        node = {
            **defs[node["$ref"].rsplit("/", 1)[1]],
            **{k: v for k, v in node.items() if k != "$ref"},
        }
    if "allOf" in node:
        merged: dict[str, Json] = {k: v for k, v in node.items() if k != "allOf"}
        for part in node["allOf"]:
            part = _resolve(part, defs)
            merged["properties"] = {**part.get("properties", {}), **merged.get("properties", {})}
            merged["required"] = [*merged.get("required", []), *part.get("required", [])]
            merged.setdefault("type", part.get("type"))
        return merged
    return node


def _strategy(node: dict[str, Json], defs: dict[str, Json], path: Path_) -> st.SearchStrategy[Json]:
    if path in RELIED_ON:
        return RELIED_ON[path]
    node = _resolve(node, defs)
    choices = node.get("oneOf") or node.get("anyOf")
    if choices:
        return st.one_of([_strategy(choice, defs, path) for choice in choices])
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from([*node["enum"], None])
    types = node.get("type")
    if types is None:
        return _any_json if "properties" not in node else _object(node, defs, path)
    if isinstance(types, list):
        return st.one_of([_strategy({**node, "type": t}, defs, path) for t in types])
    nullable = st.none() if node.get("nullable") else st.nothing()
    return st.one_of(nullable, _typed(types, node, defs, path))


def _typed(
    kind: str, node: dict[str, Json], defs: dict[str, Json], path: Path_
) -> st.SearchStrategy[Json]:
    if kind == "object":
        return _object(node, defs, path)
    if kind == "array":
        return st.lists(_strategy(node.get("items", {}), defs, (*path, "[]")), max_size=2)
    if kind == "string":
        text = {"date-time": _timestamps, "date": st.dates().map(str)}.get(
            node.get("format", ""), st.text(max_size=16)
        )
        return st.one_of(st.none(), text)  # vendor strings are null in real payloads
    if kind == "integer":
        return st.integers(node.get("minimum", -(2**40)), node.get("maximum", 2**40))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    return st.none()


def _object(node: dict[str, Json], defs: dict[str, Json], path: Path_) -> st.SearchStrategy[Json]:
    properties: dict[str, Json] = node.get("properties", {})
    required = set(node.get("required", ())) | {
        name for name in properties if (*path, name) in _REQUIRED_PREFIXES
    }
    fields = {name: _strategy(sub, defs, (*path, name)) for name, sub in properties.items()}
    # Unknown extra fields, which must be ignored; `data` at the top would make it an envelope.
    extra_keys = st.text(min_size=1, max_size=8).filter(
        lambda key: key not in properties and (path or key != "data")
    )
    return st.builds(
        lambda known, extra: {**extra, **known},
        st.fixed_dictionaries(
            {name: s for name, s in fields.items() if name in required},
            optional={name: s for name, s in fields.items() if name not in required},
        ),
        st.dictionaries(extra_keys, _any_json, max_size=2),
    )


def _consistent(data: dict[str, Json]) -> dict[str, Json]:
    """Apply the cross-field rules the schema cannot state: one voucher id throughout."""
    data["transaction"]["voucher_id"] = data["voucher"]["id"]
    if isinstance(data["pending_points"].get("voucher_id"), str):
        data["pending_points"]["voucher_id"] = data["voucher"]["id"]
    return data


def activation_payloads() -> st.SearchStrategy[dict[str, Json]]:
    """`data` objects of the target event drawn from the vendor's schema, relied-on fields valid."""
    schema = vendor_data_schema()
    root = _strategy(schema, schema["$defs"], ())
    return root.map(_consistent)
