"""Damage for seed-shaped payloads: where it lands, what it writes, and how it is applied.

Shared by the fuzzing of the whole worker (test_fuzz.py) and of validation (test_events.py).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Where a mutation lands: the fields the worker relies on, the ones it passes on, and whole
# sections. Paths are inside the `data` object.
PATHS: list[tuple[str, ...]] = [
    ("transaction", "id"),
    ("transaction", "type"),
    ("transaction", "voucher_id"),
    ("transaction", "created_at"),
    ("transaction", "details"),
    ("transaction",),
    ("pending_points", "points"),
    ("pending_points", "voucher_id"),
    ("pending_points",),
    ("balance", "balance"),
    ("balance",),
    ("voucher", "id"),
    ("voucher", "code"),
    ("voucher", "loyalty_card", "pending_points"),
    ("voucher", "loyalty_card"),
    ("customer", "id"),
    ("customer", "name"),
    ("customer", "email"),
    ("customer", "source_id"),
    ("campaign", "id"),
    ("campaign", "name"),
    ("order", "id"),
    ("order", "amount"),
    ("order", "metadata"),
    ("order",),
    ("pending_points", "details", "earning_rule", "source", "banner"),
]
NUMBERS = [p for p in PATHS if p[-1] in {"points", "balance", "pending_points", "amount"}]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**63 + 2)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "a\udfffb", "", "2025-01-08T14:08:34", "vtx_\x00"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
mutations = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), json_values),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("nest"), st.sampled_from(PATHS), st.integers(1, 150)),
    st.tuples(
        st.just("set"),
        st.sampled_from(NUMBERS),
        st.integers(min_value=2**63, max_value=2**300) | st.integers(max_value=-1),
    ),
)


def damaged(document: dict[str, Any], mutation: tuple[str, tuple[str, ...], Any]) -> None:
    """Apply one mutation to `document` (an envelope or bare data) in place."""
    action, path, argument = mutation
    parent: Any = document.get("data", document)
    for step in path[:-1]:
        if not isinstance(parent, dict) or not isinstance(parent.get(step), dict):
            return  # an earlier mutation removed or replaced the way there
        parent = parent[step]
    if not isinstance(parent, dict):
        return
    leaf = path[-1]
    if action == "delete":
        parent.pop(leaf, None)
    elif action == "nest":
        value = parent.get(leaf)
        for _ in range(argument):
            value = [value]
        parent[leaf] = value
    else:
        parent[leaf] = argument
