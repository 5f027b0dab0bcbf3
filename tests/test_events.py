"""The input contract: which values are applied, skipped or dead-lettered, and why."""

from __future__ import annotations

import copy
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from consumer import events
from consumer.events import (
    INT64_MAX,
    MAX_BYTES,
    MAX_DEPTH,
    TARGET_EVENT_TYPE,
    Apply,
    Invalid,
    PendingPointsActivatedData,
    Skip,
    Verdict,
    WebhookEnvelope,
    classify,
    classify_exactly,
)
from consumer.workload import Workload
from tests.contract_files import (
    activation_payloads,
    encode,
    envelope,
    seed_bytes,
    seed_data,
    sibling_examples,
)
from tests.damage import damaged, mutations

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = ["bare", "envelope"]


def shaped(data: Any, shape: str) -> bytes:
    return encode(data if shape == "bare" else envelope(data))


def invalid_reasons(verdict: Verdict) -> list[str]:
    assert isinstance(verdict, Invalid), f"expected invalid, got {verdict!r}"
    assert verdict.reasons
    return verdict.reasons


def only_reason(verdict: Verdict) -> str:
    reasons = invalid_reasons(verdict)
    assert len(reasons) == 1, reasons
    return reasons[0]


# ----------------------------------------------------------------------------- examples


def test_seed_payload_is_applied_as_published() -> None:
    verdict = classify(seed_bytes())
    assert isinstance(verdict, Apply)
    activation = verdict.activation
    assert activation.transaction_id == "vtx_0ff34b9df109a39357"
    assert (activation.points, activation.balance, activation.pending_points) == (23, 23, 46)
    assert activation.voucher_id == "v_bITntTcyfRHPvrOMgwdQVSlShsWRZu4v"
    assert activation.voucher_code == "67028386"
    assert activation.customer_id == "cust_KiZa6C6R30sgqqpU76o6B7u0"
    assert activation.campaign_id == "camp_E14SFSXh2JueXgZ0wFarf3jU"
    assert activation.activated_at == datetime(2025, 1, 8, 14, 8, 34, 127000, tzinfo=UTC)
    assert activation.customer_email is None
    assert activation.order_currency == "USD"
    assert activation.earning_rule_banner == "Here come your loyalty points"
    assert activation.webhook_id is None


def test_seed_payload_in_an_envelope_is_applied_with_the_webhook_id() -> None:
    verdict = classify(encode(envelope(seed_data())))
    assert isinstance(verdict, Apply)
    assert verdict.transaction_id == "vtx_0ff34b9df109a39357"
    assert verdict.webhook_id == "whs_0f5e2d6c1a2b3c4d5e"


@pytest.mark.parametrize("example", sibling_examples(), ids=lambda path: path.stem)
def test_every_sibling_example_is_skipped(example: Path) -> None:
    verdict = classify(example.read_bytes())
    assert isinstance(verdict, Skip), verdict
    assert "inferred from bare data" in verdict.event_type


@pytest.mark.parametrize(
    ("transaction_type", "event_type"),
    [
        ("POINTS_ADDITION", "voucher.loyalty_card.points_added (inferred from bare data)"),
        ("POINTS_EXPIRATION", "voucher.loyalty_card.points_expired (inferred from bare data)"),
        ("POINTS_ACCRUAL", "voucher.loyalty_card.* (POINTS_ACCRUAL transaction) (inferred from"),
        ("CREDITS_ADDITION", "voucher.* (non-loyalty transaction) (inferred from bare data)"),
    ],
)
def test_bare_data_of_another_transaction_type_is_skipped_with_an_inferred_type(
    transaction_type: str, event_type: str
) -> None:
    data = seed_data()
    del data["pending_points"]
    data["transaction"]["type"] = transaction_type
    verdict = classify(encode(data))
    assert isinstance(verdict, Skip)
    assert verdict.event_type.startswith(event_type)


def test_a_bare_activation_without_its_transaction_is_invalid_not_skipped() -> None:
    # Skipped, it would vanish without a trace; the customer's copy of the event (also
    # without a transaction) has voucher_pending_points_balance and no balance.
    data = seed_data()
    del data["transaction"]
    assert only_reason(classify(encode(data))) == "data.transaction: required field is missing"


@pytest.mark.parametrize("missing", ["transaction", "balance", "pending_points"])
def test_a_bare_activation_missing_a_part_is_invalid_naming_it(missing: str) -> None:
    data = seed_data()
    del data[missing]
    verdict = classify(encode(data))
    assert isinstance(verdict, Invalid)
    assert f"data.{missing}: required field is missing" in verdict.reasons


def test_bare_data_of_no_known_shape_is_invalid_not_skipped() -> None:
    data = {"voucher": {"id": "v_1"}, "customer": {"id": "cust_1"}}
    assert only_reason(classify(encode(data))).startswith("value: not a recognised shape")


@pytest.mark.parametrize("field", ["transaction.id", "voucher.id", "customer.id", "campaign.id"])
@pytest.mark.parametrize("shape", SHAPES)
def test_an_id_with_a_nul_character_is_invalid_on_every_store(field: str, shape: str) -> None:
    data = seed_data()
    section, name = field.split(".")
    data[section][name] = data[section][name] + "\x00"
    if field == "voucher.id":
        data["transaction"]["voucher_id"] = data["voucher"]["id"]
        data["pending_points"]["voucher_id"] = data["voucher"]["id"]
    verdict = classify(shaped(data, shape))
    assert isinstance(verdict, Invalid)
    assert any(
        reason.startswith(f"data.{field}: must not contain a NUL character")
        for reason in verdict.reasons
    ), verdict.reasons


@pytest.mark.parametrize("event_type", ["voucher.loyalty_card.points_added", "customer.created"])
def test_an_envelope_of_another_type_is_skipped_whatever_its_data(event_type: str) -> None:
    assert classify(encode(envelope({"anything": [1]}, event_type))) == Skip(event_type)
    assert classify(encode(envelope(None, event_type))) == Skip(event_type)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"data": {}}, "type: required field is missing"),
        ({"type": 5, "data": {}}, "type: must be a non-empty string naming the event type, got 5"),
        (
            {"type": "", "data": {}},
            'type: must be a non-empty string naming the event type, got ""',
        ),
        ({"type": TARGET_EVENT_TYPE, "data": [1]}, "data: must be an object, got an array"),
        ({"type": TARGET_EVENT_TYPE, "data": None}, "data: must be an object, got null"),
    ],
)
def test_a_broken_envelope_is_invalid(document: Any, reason: str) -> None:
    assert only_reason(classify(encode(document))).startswith(reason)


def test_a_target_envelope_with_a_naive_created_at_is_invalid() -> None:
    document = envelope(seed_data())
    document["created_at"] = "2025-01-08T14:08:35"
    assert only_reason(classify(encode(document))) == (
        'created_at: must carry a timezone (Z or ±hh:mm), got "2025-01-08T14:08:35"'
    )


@pytest.mark.parametrize("document", [{"foo": 1}, {}, {"type": "voucher.created"}])
def test_an_object_that_is_neither_envelope_nor_loyalty_data_is_invalid(document: Any) -> None:
    reason = only_reason(classify(encode(document)))
    assert reason.startswith("value: not a recognised shape")
    assert "webhook envelope" in reason
    assert "bare `data` object" in reason


@pytest.mark.parametrize("document", [[1, 2], 5, "text", None, True])
def test_json_that_is_not_an_object_is_invalid(document: Any) -> None:
    assert only_reason(classify(encode(document))).startswith("value: must be a JSON object")


# ----------------------------------------------------------------------------- tolerance


@pytest.mark.parametrize("shape", SHAPES)
def test_null_optional_sections_and_unknown_fields_are_tolerated(shape: str) -> None:
    data = seed_data()
    data["order"] = None
    data["transaction"]["details"] = None
    data["customer"].update(name=None, source_id=None, brand_new_field={"x": [1]})
    data["campaign"]["name"] = None
    data["pending_points"].pop("voucher_id")
    data["pending_points"]["details"] = None
    data["unheard_of"] = 1
    verdict = classify(shaped(data, shape))
    assert isinstance(verdict, Apply), verdict
    assert verdict.activation.order_id is None
    assert verdict.activation.earning_rule_banner is None


def test_the_banner_falls_back_to_the_pending_points_entry() -> None:
    data = seed_data()
    data["transaction"]["details"] = {}
    data["pending_points"]["details"]["earning_rule"]["source"]["banner"] = "Fallback"
    verdict = classify(encode(data))
    assert isinstance(verdict, Apply)
    assert verdict.activation.earning_rule_banner == "Fallback"


def test_a_customer_name_outside_the_basic_plane_is_kept() -> None:
    data = seed_data()
    data["customer"]["name"] = "Alex \U0001f600"
    verdict = classify(encode(data))  # json.dumps escapes it as a surrogate pair
    assert isinstance(verdict, Apply)
    assert verdict.activation.customer_name == "Alex \U0001f600"


def test_personal_data_stays_out_of_the_activation_repr() -> None:
    verdict = classify(seed_bytes())
    assert isinstance(verdict, Apply)
    assert "Alex Doe" not in repr(verdict)
    assert "4lx-d03" not in repr(verdict)


# ----------------------------------------------------------------------------- strictness

DELETE = object()
_IDS = [DELETE, None, "", 0, 1.5, True, [], {}]
_TIMESTAMPS = [
    DELETE,
    None,
    "",
    "2025-01-08T14:08:34",
    "2025-01-08",
    "yesterday",
    "2025-13-01T00:00:00Z",
    1736345314,
]
_POSITIVE = [DELETE, None, 0, -5, 1.5, 23.0, "23", True, False, INT64_MAX + 1, [23]]
_NON_NEGATIVE = [DELETE, None, -1, 0.5, 1.0, "0", True, INT64_MAX + 1, {}]

MUTATIONS: dict[tuple[str, ...], list[object]] = {
    ("transaction", "id"): _IDS,
    ("transaction", "type"): [DELETE, None, "", "POINTS_ADDITION", "pending_points_activation", 5],
    ("transaction", "voucher_id"): _IDS,
    ("transaction", "created_at"): _TIMESTAMPS,
    ("voucher", "id"): _IDS,
    ("voucher", "code"): _IDS,
    ("customer", "id"): _IDS,
    ("campaign", "id"): _IDS,
    ("pending_points", "points"): _POSITIVE,
    ("balance", "balance"): _NON_NEGATIVE,
    ("voucher", "loyalty_card", "pending_points"): _NON_NEGATIVE,
}


def mutated(data: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    data = copy.deepcopy(data)
    parent = data
    for name in path[:-1]:
        parent = parent[name]
    if value is DELETE:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return data


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("path", "value"),
    [(path, value) for path, values in MUTATIONS.items() for value in values],
    ids=lambda item: ".".join(item) if isinstance(item, tuple) else repr(item)[:20],
)
def test_a_bad_relied_on_field_in_the_seed_is_invalid_at_its_path(
    shape: str, path: tuple[str, ...], value: object
) -> None:
    reasons = invalid_reasons(classify(shaped(mutated(seed_data(), path, value), shape)))
    assert any(reason.startswith("data." + ".".join(path) + ": ") for reason in reasons), reasons


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-5, "data.pending_points.points: must be an integer ≥ 1, got -5"),
        ("23", 'data.pending_points.points: must be an integer ≥ 1, got "23"'),
        (True, "data.pending_points.points: must be an integer ≥ 1, got true"),
        (23.0, "data.pending_points.points: must be an integer ≥ 1, got 23.0"),
        (
            INT64_MAX + 1,
            "data.pending_points.points: must be an integer ≤ 9223372036854775807 (signed "
            "64-bit), got 9223372036854775808",
        ),
        (DELETE, "data.pending_points.points: required field is missing"),
    ],
)
def test_reasons_name_the_path_the_expectation_and_the_value(value: object, reason: str) -> None:
    data = mutated(seed_data(), ("pending_points", "points"), value)
    assert only_reason(classify(encode(data))) == reason


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (
            ("transaction", "voucher_id"),
            'data.transaction.voucher_id: must equal data.voucher.id "v_bITntTcyfRHPvrOMgwdQVSlShs'
            'WRZu4v", got "v_other"',
        ),
        (
            ("pending_points", "voucher_id"),
            'data.pending_points.voucher_id: must equal data.voucher.id "v_bITntTcyfRHPvrOMgwdQVSl'
            'ShsWRZu4v", got "v_other"',
        ),
    ],
)
def test_a_transaction_for_another_voucher_is_invalid(path: tuple[str, ...], reason: str) -> None:
    data = mutated(seed_data(), path, "v_other")
    assert only_reason(classify(encode(data))) == reason


@pytest.mark.parametrize("section", ["customer", "campaign", "voucher", "balance", "transaction"])
def test_a_required_section_that_is_not_an_object_is_invalid(section: str) -> None:
    data = mutated(seed_data(), (section,), "oops")
    shown = "a string" if section == "customer" else '"oops"'  # personal: never quoted
    assert f"data.{section}: must be an object, got {shown}" in invalid_reasons(
        classify(encode(data))
    )


def test_a_wrongly_typed_notification_field_is_invalid() -> None:
    data = mutated(seed_data(), ("customer", "email"), 42)
    assert (
        only_reason(classify(encode(data)))
        == "data.customer.email: must be a string or null, got 42"
    )


def test_a_lone_surrogate_in_a_passed_on_field_is_invalid() -> None:
    value = seed_bytes().replace(b'"Alex Doe"', b'"Alex \\ud800"')
    assert only_reason(classify(value)).startswith("data.customer.name: contains an unpaired")


def test_a_timestamp_outside_the_utc_calendar_is_invalid() -> None:
    data = mutated(seed_data(), ("transaction", "created_at"), "0001-01-01T00:00:00+01:00")
    assert only_reason(classify(encode(data))).startswith("data.transaction.created_at: ")


# ----------------------------------------------------------------------------- limits


def test_an_oversized_value_is_invalid_before_parsing() -> None:
    reason = only_reason(classify(b" " * MAX_BYTES + b"{}"))
    assert reason == f"value: {MAX_BYTES + 2} bytes exceeds the limit of {MAX_BYTES} bytes"


def test_a_value_of_exactly_the_size_limit_is_accepted() -> None:
    value = seed_bytes()
    assert isinstance(classify(value + b" " * (MAX_BYTES - len(value))), Apply)


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_extremely_deep_nesting_is_invalid_without_recursion_errors(opening: bytes) -> None:
    reason = only_reason(classify(opening * 100_000))
    assert reason == f"value: objects and arrays nest deeper than {MAX_DEPTH} levels"


def nested_metadata(levels: int) -> bytes:
    metadata: Any = {}
    for _ in range(levels):
        metadata = {"n": metadata}
    data = seed_data()
    data["order"]["metadata"] = metadata
    return encode(data)


def test_nesting_up_to_the_depth_limit_is_accepted() -> None:
    # root (1) > order (2) > metadata (3) > ... : 61 more levels make exactly MAX_DEPTH.
    assert isinstance(classify(nested_metadata(MAX_DEPTH - 3)), Apply)


def test_nesting_one_past_the_depth_limit_is_invalid() -> None:
    reason = only_reason(classify(nested_metadata(MAX_DEPTH - 2)))
    assert reason == f"value: objects and arrays nest deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize(
    "value",
    [b'{"a": 1, "a": 2}', seed_bytes().replace(b'"points": 23,', b'"points": 23, "points": 5,', 1)],
    ids=["tiny", "seed"],
)
def test_duplicate_keys_are_invalid(value: bytes) -> None:
    reason = only_reason(classify(value))
    assert reason.startswith("value: duplicate key ")
    assert "keys must be unique" in reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"a": NaN}', "value: NaN is not JSON; numbers must be finite"),
        (b'{"a": Infinity}', "value: Infinity is not JSON; numbers must be finite"),
        (b'{"a": -Infinity}', "value: -Infinity is not JSON; numbers must be finite"),
        (b'{"a": 1e999}', 'value: number "1e999" is out of range for a 64-bit float'),
    ],
)
def test_non_finite_numbers_are_invalid(value: bytes, reason: str) -> None:
    assert only_reason(classify(value)) == reason


def test_an_integer_literal_beyond_the_digit_limit_is_invalid() -> None:
    assert only_reason(classify(b'{"a": ' + b"9" * 5000 + b"}")).startswith(
        "value: an integer literal is longer than"
    )


@pytest.mark.parametrize(
    "value",
    [seed_bytes().replace(b"Alex Doe", b"Alex \xff Doe"), seed_bytes().decode().encode("utf-16")],
    ids=["stray-byte", "utf-16"],
)
def test_a_value_that_is_not_utf8_is_invalid(value: bytes) -> None:
    reason = only_reason(classify(value))
    assert reason.startswith("value: not UTF-8 (")
    assert "at byte offset" in reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "value: missing (a null Kafka value)"),
        (b"", "value: empty (zero bytes)"),
        (b"{", "value: not JSON (Expecting property name enclosed in double quotes at line 1"),
        (b"\xef\xbb\xbf{}", "value: starts with a UTF-8 byte order mark"),
    ],
)
def test_missing_empty_and_malformed_values_are_invalid(value: bytes | None, reason: str) -> None:
    assert only_reason(classify(value)).startswith(reason)


# ----------------------------------------------------------------------------- properties


@BOUNDED
@given(data=activation_payloads(), shape=st.sampled_from(SHAPES))
def test_any_schema_conforming_payload_with_valid_relied_on_fields_is_applied(
    data: dict[str, Any], shape: str
) -> None:
    verdict = classify(shaped(data, shape))
    assert isinstance(verdict, Apply), verdict
    assert verdict.transaction_id == data["transaction"]["id"]
    assert verdict.activation.points == data["pending_points"]["points"]


@BOUNDED
@given(
    data=activation_payloads(),
    shape=st.sampled_from(SHAPES),
    mutation=st.sampled_from(list(MUTATIONS)).flatmap(
        lambda path: st.tuples(st.just(path), st.sampled_from(MUTATIONS[path]))
    ),
)
def test_any_payload_with_a_bad_relied_on_field_is_invalid_at_that_path(
    data: dict[str, Any], shape: str, mutation: tuple[tuple[str, ...], object]
) -> None:
    path, value = mutation
    reasons = invalid_reasons(classify(shaped(mutated(data, path, value), shape)))
    assert any(reason.startswith("data." + ".".join(path) + ": ") for reason in reasons), reasons


@BOUNDED
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    assert isinstance(classify(value), Apply | Skip | Invalid)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@BOUNDED
@given(_json_values)
def test_arbitrary_json_never_raises(document: Any) -> None:
    assert isinstance(classify(json.dumps(document).encode()), Apply | Skip | Invalid)


@BOUNDED
@given(
    data=activation_payloads(),
    section=st.sampled_from(["customer", "campaign", "voucher", "balance", "transaction"]),
    replacement=_json_values,
)
def test_any_replaced_section_never_raises(
    data: dict[str, Any], section: str, replacement: Any
) -> None:
    data[section] = replacement
    assert isinstance(classify(encode(envelope(data))), Apply | Invalid)


# ----------------------------------------------------------------------------- one verdict
#
# `classify` parses with orjson and leaves to `classify_exactly` whatever that parser could
# judge differently; these hold the two to the same verdict, reasons included.

SEED_TEXT = seed_bytes().decode()


def points(literal: str) -> bytes:
    """The seed with the text `literal` where its pending points are."""
    return SEED_TEXT.replace('"points": 23,', f'"points": {literal},', 1).encode()


def test_every_kind_of_workload_record_gets_the_exact_verdict() -> None:
    values = [r.value for r in Workload(seed=11, events=3_000, malformed_share=0.2).records()]
    assert sum(isinstance(classify(v), Invalid) for v in values) > 300  # each malformation
    assert [classify(v) for v in values] == [classify_exactly(v) for v in values]


@pytest.mark.parametrize(
    "value",
    [
        # A duplicate whose key spells its colon as an escape: the colon count alone misses it.
        b'{"a\\u003a": 1, "a\\u003a": 2}',
        b'{"x": "a\\u003ab", "x": "c"}',
        # A dropped duplicate whose value holds colons of its own.
        b'{"x": "12:30:00", "x": "c"}',
        b'{"x": {"y": {"z": 1}}, "x": 2}',
        # Compact, as orjson writes: the re-encoding is then compared before colons are counted.
        b'{"x":"c","x":"c"}',
        SEED_TEXT.replace('"points": 23,', '"points": 23, "points": 5,', 1).encode(),
        SEED_TEXT.replace('"Alex Doe"', '"Alex\\u003a Doe"')
        .replace('"points": 23,', '"points": 23, "points": 5,', 1)
        .encode(),
    ],
    ids=[
        "escaped-key",
        "escaped-value",
        "colons-dropped",
        "nested-dropped",
        "compact",
        "seed",
        "seed-escape",
    ],
)
def test_duplicate_keys_are_found_whatever_the_colons_around_them(value: bytes) -> None:
    reason = only_reason(classify(value))
    assert reason.startswith("value: duplicate key "), reason
    assert classify(value) == classify_exactly(value)


@pytest.mark.parametrize(
    "value",
    [
        SEED_TEXT.replace('"Alex Doe"', '"Alex: Doe \\u003a"').encode(),
        points('23, "extra": 123456789012345678901234567890'),
        points("123456789012345678901234567890"),
        points("9223372036854775808"),
        points("-9223372036854775809"),
        points("23.0"),
        SEED_TEXT.replace('"Alex Doe"', '"\\ud83d\\ude00"').encode(),
        SEED_TEXT.replace('"Alex Doe"', '"\\udc00"').encode(),
        b'{"type": "voucher.created", "data": {"n": 1e999}}',
        b'{"type": "voucher.created", "data": [' + b"9" * 400 + b"]}",
        b'{"type": "voucher.created", "data": {}} x',
        b"\xef\xbb\xbf" + seed_bytes(),
    ],
    ids=[
        "colons-in-text",
        "bigint-ignored",
        "bigint-points",
        "int64-max-plus-one",
        "int64-min-minus-one",
        "float-points",
        "surrogate-pair",
        "lone-low-surrogate",
        "out-of-range-float",
        "long-integer",
        "trailing-data",
        "byte-order-mark",
    ],
)
def test_values_orjson_reads_differently_get_the_exact_verdict(value: bytes) -> None:
    assert classify(value) == classify_exactly(value)


@BOUNDED
@given(_json_values, st.sampled_from([None, "voucher.created", TARGET_EVENT_TYPE]))
def test_arbitrary_json_gets_the_exact_verdict(document: Any, event_type: str | None) -> None:
    if event_type is not None:
        document = {"type": event_type, "data": document}
    value = json.dumps(document).encode()
    assert classify(value) == classify_exactly(value)


@BOUNDED
@given(data=activation_payloads(), shape=st.sampled_from(SHAPES), extra=_json_values)
def test_any_activation_gets_the_exact_verdict(
    data: dict[str, Any], shape: str, extra: Any
) -> None:
    data["transaction"]["details"] = extra
    value = shaped(data, shape)
    assert classify(value) == classify_exactly(value)


# ------------------------------------------------------------------ native shape checks
#
# The fast path's depth and duplicate-key checks run in native code when it is built
# (consumer/_jsonshape.c), in Python otherwise; the two must agree on every value orjson reads.


def _keys_in(document: Any) -> int:
    if isinstance(document, dict):
        return len(document) + sum(_keys_in(value) for value in document.values())
    if isinstance(document, list):
        return sum(_keys_in(item) for item in document)
    return 0


def _depth_of(document: Any) -> int:
    if isinstance(document, dict):
        return 1 + max((_depth_of(value) for value in document.values()), default=0)
    if isinstance(document, list):
        return 1 + max((_depth_of(item) for item in document), default=0)
    return 0


def _nested(levels: int) -> Any:
    document: Any = {"end": 'a:b{c[d\\e"f'}
    for level in range(levels - 1):
        document = {f"k{level}": document} if level % 2 else [document]
    return document


_tricky_text = st.text(alphabet=st.sampled_from('ab:{}[]"\\,\u00e9\u2028'), max_size=12)
_tricky_json = st.recursive(
    st.none() | st.integers(-(2**63), INT64_MAX) | _tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_tricky_text, inner, max_size=4),
    max_leaves=30,
)
_needs_native = pytest.mark.skipif(
    not events.NATIVE_SHAPE_CHECKS, reason="consumer._jsonshape is not built (no C compiler)"
)


def test_the_native_shape_checks_are_built_where_a_c_compiler_is() -> None:
    """`make install` builds them, and measurements assume them: losing them must be loud."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the Python checks run instead, by design")
    assert events.NATIVE_SHAPE_CHECKS


@_needs_native
@BOUNDED
@given(document=_tricky_json, compact=st.booleans())
def test_native_counts_keys_and_bounds_depth_as_the_document_shows(
    document: Any, compact: bool
) -> None:
    from consumer import _jsonshape

    value = orjson.dumps(document) if compact else json.dumps(document, indent=1).encode()
    assert _jsonshape.keys(orjson.loads(value)) == _keys_in(document)
    assert _jsonshape.structure(value, 64) == _keys_in(document)
    depth = _depth_of(document)
    assert _jsonshape.structure(value, depth) == _keys_in(document)
    if depth:
        assert _jsonshape.structure(value, depth - 1) == -1


@_needs_native
@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 200])
def test_native_depth_limit_is_the_exact_paths(depth: int) -> None:
    from consumer import _jsonshape

    data = seed_data()
    # The envelope, data, transaction and its details are four levels; an extra field there
    # nests the rest.
    data["transaction"]["details"]["extra"] = _nested(depth - 4)
    value = orjson.dumps(envelope(data))
    assert (_jsonshape.structure(value, MAX_DEPTH) >= 0) is (depth <= MAX_DEPTH)
    verdict = classify(value)
    if depth <= MAX_DEPTH:
        assert isinstance(verdict, Apply)
    else:
        assert only_reason(verdict) == "value: objects and arrays nest deeper than 64 levels"
    assert verdict == classify_exactly(value)


@_needs_native
@BOUNDED
@given(document=_tricky_json, key=_tricky_text)
def test_native_and_python_checks_agree_on_repeated_keys(document: Any, key: str) -> None:
    encoded_key = json.dumps(key)
    # The key twice in one object around the document (spaced), and once beside "doc"
    # (compact), which repeats a key only when it is "doc".
    for value, allowed in (
        (f'{{{encoded_key}: 1, "doc": {json.dumps(document)}, {encoded_key}: 2}}', False),
        ('{"doc":' + orjson.dumps(document).decode() + f",{encoded_key}:[]}}", key != "doc"),
    ):
        parsed = orjson.loads(value)
        assert events._native_shape_allowed(value.encode(), parsed) is allowed
        assert events._python_shape_allowed(value.encode(), parsed) is allowed


@_needs_native
def test_native_and_python_checks_agree_on_every_workload_value() -> None:
    values = [r.value for r in Workload(seed=12, events=2_000, malformed_share=0.2).records()]
    judged = 0
    for value in values:
        try:
            parsed = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            continue
        judged += 1
        native = events._native_shape_allowed(value, parsed)  # type: ignore[arg-type]
        assert native == events._python_shape_allowed(value, parsed), value  # type: ignore[arg-type]
    assert judged > 1_500


# ------------------------------------------------------------------ models and their dicts
#
# Values are validated by TypedDicts derived from the models (a third cheaper); the models
# give the reasons when they fail. Both must accept the same values and keep the same fields.


def _outcome(adapter: Any, model: Any, document: Any) -> tuple[object, object]:
    try:
        expected = model.model_validate(document).model_dump(exclude_unset=True)
    except ValidationError:
        expected = "rejected"
    try:
        derived = adapter.validate_python(document)
    except ValidationError:
        derived = "rejected"
    return derived, expected


@BOUNDED
@given(
    data=activation_payloads(),
    damage=st.lists(mutations, max_size=3),
    wrapped=st.booleans(),
)
def test_the_derived_validators_agree_with_the_models(
    data: dict[str, Any], damage: list[Any], wrapped: bool
) -> None:
    document = envelope(data) if wrapped else data
    for mutation in damage:
        damaged(document, mutation)
    if wrapped:
        derived, expected = _outcome(events._ENVELOPE, WebhookEnvelope, document)
    else:
        derived, expected = _outcome(events._DATA, PendingPointsActivatedData, document)
    assert derived == expected


def test_the_derived_validators_keep_every_field_of_the_seed() -> None:
    derived, expected = _outcome(events._ENVELOPE, WebhookEnvelope, envelope(seed_data()))
    assert derived == expected
    assert isinstance(derived, dict)
    assert derived["data"]["order"]["metadata"] == seed_data()["order"]["metadata"]
    assert derived["data"]["transaction"]["created_at"] == datetime(
        2025, 1, 8, 14, 8, 34, 127000, tzinfo=UTC
    )
