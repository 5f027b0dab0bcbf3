"""Input contract: Voucherify webhook models and the per-record verdict (apply, skip or invalid)."""

from __future__ import annotations

import functools
import json
import math
import sys
import types
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, NotRequired, Union, get_args, get_origin

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from typing_extensions import TypedDict

try:
    from consumer import _jsonshape as _native
except ImportError:  # installed without a C compiler: the same checks, in Python
    _native = None  # type: ignore[assignment]

__all__ = [
    "ACTIVATION_TRANSACTION_TYPE",
    "MAX_BYTES",
    "MAX_DEPTH",
    "NATIVE_SHAPE_CHECKS",
    "TARGET_EVENT_TYPE",
    "Activation",
    "Apply",
    "Invalid",
    "PendingPointsActivatedData",
    "Skip",
    "Verdict",
    "WebhookEnvelope",
    "classify",
    "classify_exactly",
    "input_json_schema",
]

TARGET_EVENT_TYPE: Final = "voucher.loyalty_card.pending_points.activated"
ACTIVATION_TRANSACTION_TYPE: Final = "PENDING_POINTS_ACTIVATION"

# Real payloads are ~6 KB; the limits only stop garbage from costing memory or the C stack.
MAX_BYTES: Final = 1024 * 1024
MAX_DEPTH: Final = 64
INT64_MAX: Final = 2**63 - 1
# Whether the fast path's depth and duplicate-key checks run in native code (consumer/_jsonshape.c).
NATIVE_SHAPE_CHECKS: Final = _native is not None

# Bounds what a skipped event type can add to logs and metric labels.
_MAX_EVENT_TYPE_CHARS: Final = 200
_MAX_SHOWN_CHARS: Final = 60
_MAX_INT_DIGITS: Final = sys.get_int_max_str_digits()

# Vendor enum of loyalty-card transaction types (pending-points-activated.data.schema.json).
_LOYALTY_TRANSACTION_TYPES: Final = frozenset(
    {
        "PENDING_POINTS_ACTIVATION",
        "POINTS_ACCRUAL",
        "POINTS_REDEMPTION",
        "POINTS_REFUND",
        "POINTS_ADDITION",
        "POINTS_REMOVAL",
        "POINTS_EXPIRATION",
        "POINTS_TRANSFER_IN",
        "POINTS_TRANSFER_OUT",
    }
)
_EVENT_BY_TRANSACTION_TYPE: Final = {
    "POINTS_ADDITION": "voucher.loyalty_card.points_added",
    "POINTS_EXPIRATION": "voucher.loyalty_card.points_expired",
}
_ACCEPTED_SHAPES: Final = (
    "expected a Voucherify webhook envelope (an object with a string `type` and an object "
    "`data`) or the bare `data` object of a loyalty-card event (an object with `transaction`, "
    "`voucher`, `customer` or `campaign` objects)"
)


# --------------------------------------------------------------------------- field types
#
# Plain validators rather than pydantic's strict types: the messages are the contract the
# bridge team reads in dead letters, so each names what was expected and what was found.


def _show(value: object) -> str:
    """A short, header-safe rendering of an offending value (ASCII; long values truncated)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    shown = json.dumps(value, ensure_ascii=True)
    if len(shown) > _MAX_SHOWN_CHARS:
        shown = shown[: _MAX_SHOWN_CHARS - 1] + "…"
    return shown


def _show_kind(value: object) -> str:
    """Like `_show`, but a string is only named, never quoted (personal data)."""
    return "a string" if isinstance(value, str) else _show(value)


def _reject(kind: str, message: str, value: object) -> PydanticCustomError:
    return PydanticCustomError(kind, message + ", got {got}", {"got": _show(value)})


def _non_empty_string(value: object) -> str:
    if type(value) is str and value:
        return value
    raise _reject("non_empty_string", "must be a non-empty string", value)


def _storable_id(value: object) -> str:
    text = _non_empty_string(value)
    if "\x00" in text:
        # Stored as text: PostgreSQL refuses NUL, SQLite would keep it. One verdict for both
        # stores, and before anything is applied.
        raise _reject(
            "storable_text",
            "must not contain a NUL character (U+0000), which the ledger cannot store",
            value,
        )
    return text


def _integer_within(low: int) -> PlainValidator:
    def check(value: object) -> int:
        # type() rather than isinstance(): a JSON true must not count as the integer 1.
        if type(value) is not int or value < low:
            raise _reject("integer_range", f"must be an integer ≥ {low}", value)
        if value > INT64_MAX:
            raise _reject(
                "integer_range", f"must be an integer ≤ {INT64_MAX} (signed 64-bit)", value
            )
        return value

    return PlainValidator(check)


def _optional_amount(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise _reject("amount", "must be a signed 64-bit integer or null", value)
    return value


def _timestamp(value: object) -> datetime:
    expected = "must be an ISO 8601 date-time with a timezone, e.g. 2025-01-08T14:08:34.127Z"
    if type(value) is not str:
        raise _reject("timestamp", expected, value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _reject("timestamp", expected, value) from None
    if parsed.utcoffset() is None:
        # Without an offset the instant is unknown, and the newest-snapshot rule needs instants.
        raise _reject("timestamp", "must carry a timezone (Z or ±hh:mm)", value)
    if parsed.tzinfo is UTC:  # "Z", as Voucherify writes them: already normalised
        return parsed
    try:
        # Normalised here so that every later use compares and prints instants in UTC.
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _reject("timestamp", "must fall within years 1-9999 in UTC", value) from None


def _optional_timestamp(value: object) -> datetime | None:
    return None if value is None else _timestamp(value)


def _exactly(expected: str) -> PlainValidator:
    def check(value: object) -> str:
        if value != expected or type(value) is not str:
            raise _reject("constant", f"must be {json.dumps(expected)}", value)
        return value

    return PlainValidator(check)


def _anything(value: object) -> object:
    return value


Id = Annotated[
    str,
    PlainValidator(_non_empty_string),
    WithJsonSchema({"type": "string", "minLength": 1}),
]
# An id the ledger stores as text (every supported store must be able to hold it).
StoredId = Annotated[
    str,
    PlainValidator(_storable_id),
    WithJsonSchema({"type": "string", "minLength": 1, "pattern": "^[^\\u0000]+$"}),
]
Points = Annotated[
    int,
    _integer_within(1),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": INT64_MAX}),
]
Count = Annotated[
    int,
    _integer_within(0),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": INT64_MAX}),
]
Amount = Annotated[
    int | None,
    PlainValidator(_optional_amount),
    WithJsonSchema({"type": ["integer", "null"], "minimum": -INT64_MAX - 1, "maximum": INT64_MAX}),
]
Timestamp = Annotated[
    datetime,
    PlainValidator(_timestamp),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
OptionalTimestamp = Annotated[
    datetime | None,
    PlainValidator(_optional_timestamp),
    WithJsonSchema({"type": ["string", "null"], "format": "date-time"}),
]
# Vendor fields typed "string" are null in real payloads (README "Known defects").
Text = str | None
# Free-form or unused sections: documented in the schema, never a reason to reject.
Opaque = Annotated[object, PlainValidator(_anything), WithJsonSchema({})]


# --------------------------------------------------------------------------- input models


class _Section(BaseModel):
    """A part of the payload: unknown fields are ignored, only the modelled ones are checked."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Customer(_Section):
    """`data.customer`: the card holder."""

    id: StoredId
    name: Text = None
    email: Text = None
    source_id: Text = None


class Campaign(_Section):
    """`data.campaign`: the loyalty programme."""

    id: StoredId
    name: Text = None


class LoyaltyCard(_Section):
    """`data.voucher.loyalty_card`: Voucherify's view of the card after the activation."""

    pending_points: Count = Field(description="Points still pending after this activation.")


class Voucher(_Section):
    """`data.voucher`: the loyalty card."""

    id: StoredId
    code: Id
    loyalty_card: LoyaltyCard


class Balance(_Section):
    """`data.balance`: the card balance after the transaction."""

    balance: Count = Field(description="Points available on the card after the activation.")


class Order(_Section):
    """`data.order`: the order that earned the points, when there is one."""

    id: Text = None
    amount: Amount = Field(default=None, description="In the smallest currency unit.")
    metadata: Opaque = Field(default=None, description="Free-form; `currency` is used if a string.")

    @property
    def currency(self) -> str | None:
        """`order.metadata.currency`: Voucherify orders carry no currency field of their own."""
        return _currency(self.metadata)


def _currency(metadata: object) -> str | None:
    if isinstance(metadata, dict):
        currency = metadata.get("currency")
        if isinstance(currency, str):
            return currency
    return None


class EarningRuleSource(_Section):
    """`earning_rule.source`: the rule's display name."""

    banner: Text = None


class EarningRule(_Section):
    """`earning_rule`: how the points were earned."""

    source: EarningRuleSource | None = None

    @property
    def banner(self) -> str | None:
        return None if self.source is None else self.source.banner


class TransactionDetails(_Section):
    """`data.transaction.details`."""

    earning_rule: EarningRule | None = None


class Transaction(_Section):
    """`data.transaction`: the activation itself; its id is the ledger key."""

    id: StoredId
    type: Annotated[
        str,
        _exactly(ACTIVATION_TRANSACTION_TYPE),
        WithJsonSchema({"const": ACTIVATION_TRANSACTION_TYPE}),
    ]
    voucher_id: StoredId
    created_at: Timestamp = Field(description="When the points were activated.")
    details: TransactionDetails | None = None


class PendingPointsDetails(_Section):
    """`data.pending_points.details`."""

    earning_rule: EarningRule | None = None


class PendingPoints(_Section):
    """`data.pending_points`: the pending-point entry that was activated."""

    points: Points = Field(description="Points activated.")
    voucher_id: Text = None
    details: PendingPointsDetails | None = None


class PendingPointsActivatedData(_Section):
    """The `data` object of `voucher.loyalty_card.pending_points.activated`."""

    customer: Customer
    campaign: Campaign
    voucher: Voucher
    balance: Balance
    order: Order | None = None
    transaction: Transaction
    pending_points: PendingPoints


class WebhookEnvelope(_Section):
    """The Voucherify v2024-01-01 webhook envelope of the target event."""

    id: Text = Field(default=None, description="Webhook sendout id (whs_…).")
    project_id: Text = None
    created_at: OptionalTimestamp = None
    type: Annotated[str, _exactly(TARGET_EVENT_TYPE), WithJsonSchema({"const": TARGET_EVENT_TYPE})]
    data: PendingPointsActivatedData
    source: Opaque = None
    event: Opaque = None


# --------------------------------------------------------------------------- validation
#
# The models are the contract: their schema is published, and their errors are the reasons
# a dead letter gives. Validating into them costs a model instance per section, up to 16 a
# record. The same fields validated into plain dicts cost a third less (9.7 instead of
# 14.2 us a record), so values are validated by TypedDicts derived from the models field for field;
# only a value those reject is validated by the models, for the reasons.


def _plain(annotation: Any) -> Any:
    """`annotation` with each model in it (alone or in a union) replaced by its TypedDict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _typed_dict_of(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return Union[tuple(_plain(arg) for arg in get_args(annotation))]  # noqa: UP007 - built from a tuple
    return annotation


# pydantic needs typing_extensions' TypedDict before Python 3.12; built from a runtime name.
_TYPED_DICT: Final[Any] = TypedDict


@functools.cache
def _typed_dict_of(model: type[BaseModel]) -> Any:
    """A TypedDict with the model's fields: the same types and validators, the same keys
    required, and unknown keys ignored. An optional field left out stays out of the dict."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = _plain(info.annotation)
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[info.alias or name] = annotation if info.is_required() else NotRequired[annotation]
    derived = _TYPED_DICT(model.__name__, fields)
    derived.__pydantic_config__ = ConfigDict(extra="ignore")
    return derived


_ENVELOPE: Final[TypeAdapter[dict[str, Any]]] = TypeAdapter(_typed_dict_of(WebhookEnvelope))
_DATA: Final[TypeAdapter[dict[str, Any]]] = TypeAdapter(_typed_dict_of(PendingPointsActivatedData))


def _validated(
    adapter: TypeAdapter[dict[str, Any]], model: type[BaseModel], value: object, prefix: str
) -> dict[str, Any] | Invalid:
    """`value` validated, as plain dicts; or, when it is not valid, the model's reasons."""
    try:
        return adapter.validate_python(value)
    except ValidationError:
        pass
    try:
        model.model_validate(value)
    except ValidationError as exc:
        return Invalid(_reasons(exc, prefix=prefix))
    # Never expected (the tests hold the two to one verdict); dead-lettered as a consumer bug.
    raise AssertionError(f"{model.__name__} accepts a value its derived TypedDict rejects")


def input_json_schema() -> dict[str, Any]:
    """The JSON Schema of an accepted input value: the envelope, or its bare `data`."""
    envelope = WebhookEnvelope.model_json_schema(ref_template="#/$defs/{model}")
    definitions: dict[str, Any] = envelope.pop("$defs")
    definitions["WebhookEnvelope"] = envelope
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "loyalty-consumer input: voucher.loyalty_card.pending_points.activated",
        "description": (
            "A Voucherify v2024-01-01 webhook envelope of the target event, or its bare `data` "
            "object. Other event types share the topic and are skipped. Unknown fields are "
            "ignored; fields typed string may be null."
        ),
        "anyOf": [
            {"$ref": "#/$defs/WebhookEnvelope"},
            {"$ref": "#/$defs/PendingPointsActivatedData"},
        ],
        "$defs": definitions,
    }


# --------------------------------------------------------------------------- verdicts


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and this one,
# built once a record, cost 2.3 instead of 0.9 us. Nothing changes it after classify.
@dataclass(slots=True)
class Activation:
    """A validated activation: everything the ledger and the notification need, flattened."""

    transaction_id: str
    voucher_id: str
    voucher_code: str
    customer_id: str
    campaign_id: str
    points: int  # data.pending_points.points
    balance: int  # data.balance.balance, after the activation
    pending_points: int  # data.voucher.loyalty_card.pending_points, still pending
    activated_at: datetime  # data.transaction.created_at, in UTC
    campaign_name: str | None
    order_id: str | None
    order_amount: int | None
    order_currency: str | None
    earning_rule_banner: str | None
    webhook_id: str | None  # the envelope's id; None for a bare data object
    # Personal data: kept out of repr() so that logging a verdict cannot leak it.
    customer_name: str | None = field(repr=False)
    customer_email: str | None = field(repr=False)
    customer_source_id: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class Apply:
    """The record is the target event and valid: record it and notify."""

    activation: Activation
    name: ClassVar[str] = "apply"

    @property
    def transaction_id(self) -> str:
        return self.activation.transaction_id

    @property
    def webhook_id(self) -> str | None:
        return self.activation.webhook_id


@dataclass(frozen=True, slots=True)
class Skip:
    """Another event type: count it and commit the offset."""

    event_type: str
    name: ClassVar[str] = "skip"


@dataclass(frozen=True, slots=True)
class Invalid:
    """Not processable: dead-letter it. Each reason reads `path: problem, got value`."""

    reasons: list[str]
    name: ClassVar[str] = "invalid"

    @property
    def reason(self) -> str:
        """All reasons on one line, for a dead-letter header."""
        return "; ".join(self.reasons)


Verdict = Apply | Skip | Invalid


# --------------------------------------------------------------------------- decoding


class _Rejected(ValueError):
    """Raised from the JSON decoder's hooks for input that is valid syntax but not accepted."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Rejected(
                    f"duplicate key {_show(key)} in a JSON object; "
                    "keys must be unique (parsers disagree on which value wins)"
                )
            seen.add(key)
    return obj


def _non_standard_constant(literal: str) -> float:
    raise _Rejected(f"{literal} is not JSON; numbers must be finite")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise _Rejected(f"number {_show(literal)} is out of range for a 64-bit float")
    return number


_decoder = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_non_standard_constant,
    parse_float=_finite_float,
)


def _deeper_than(document: object, limit: int) -> bool:
    """Whether containers nest more than `limit` levels: level by level, never recursive."""
    level: list[Any] = [document] if isinstance(document, dict | list) else []
    for _ in range(limit):
        # Comprehensions and exact type checks: this is the hot path for larger payloads.
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


def _decode(value: bytes | None) -> object | Invalid:
    """Bytes to a JSON document, or the reason why not. Size is checked before any parsing."""
    text = _text(value)
    if isinstance(text, Invalid):
        return text
    try:
        document: object = _decoder.decode(text)
    except _Rejected as exc:
        return Invalid([f"value: {exc}"])
    except json.JSONDecodeError as exc:
        return Invalid([f"value: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"])
    except ValueError:
        # The one other ValueError json raises: Python's guard against quadratic int parsing.
        return Invalid([f"value: an integer literal is longer than {_MAX_INT_DIGITS} digits"])
    except RecursionError:
        return _too_deep()
    # Each level needs an opening bracket, so few brackets means no walk is needed.
    if text.count("{") + text.count("[") > MAX_DEPTH and _deeper_than(document, MAX_DEPTH):
        return _too_deep()
    return document


def _too_deep() -> Invalid:
    return Invalid([f"value: objects and arrays nest deeper than {MAX_DEPTH} levels"])


def _text(value: bytes | None) -> str | Invalid:
    if value is None:
        return Invalid(["value: missing (a null Kafka value); " + _ACCEPTED_SHAPES])
    if not value:
        return Invalid(["value: empty (zero bytes); " + _ACCEPTED_SHAPES])
    if len(value) > MAX_BYTES:
        return Invalid([f"value: {len(value)} bytes exceeds the limit of {MAX_BYTES} bytes"])
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid(
            [f"value: not UTF-8 ({exc.reason} at byte offset {exc.start}); JSON must be UTF-8"]
        )
    if text.startswith("\ufeff"):
        return Invalid(["value: starts with a UTF-8 byte order mark, which JSON text must not"])
    return text


# --------------------------------------------------------------------------- classification
#
# Paths in reasons always start with `data.` for fields of the data object, whether the value
# was an envelope or the bare data, so the bridge team sees one path for one field.

_OBJECT_ERRORS: Final = frozenset({"model_type", "model_attributes_type", "dict_type"})
_INFERRED: Final = " (inferred from bare data)"
_BANNER_PATHS: Final = (
    "data.transaction.details.earning_rule.source.banner",
    "data.pending_points.details.earning_rule.source.banner",
)


def classify(value: bytes | None) -> Verdict:
    """Decide what to do with one Kafka record value. Never raises.

    The same verdict as `classify_exactly`, at about half the cost for the common case: a
    well-formed value is parsed by orjson, and anything that path could judge differently,
    and every rejection (whose reasons only the exact path words), goes the exact way.
    """
    try:
        verdict = _classify_fast(value)
        return classify_exactly(value) if verdict is None else verdict
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises": a bug must dead-letter one record, not stop a partition
        return _consumer_bug(exc)


def classify_exactly(value: bytes | None) -> Verdict:
    """`classify` by the standard library's parser alone: the reference for every verdict."""
    try:
        document = _decode(value)
        if isinstance(document, Invalid):
            return document
        # Only `\uD800`-`\uDFFF` escapes can smuggle text that cannot be encoded back to UTF-8.
        may_hold_surrogates = value is not None and (b"\\ud" in value or b"\\uD" in value)
        return _classify_document(document, may_hold_surrogates)
    except Exception as exc:  # noqa: BLE001 - as in classify
        return _consumer_bug(exc)


def _consumer_bug(exc: Exception) -> Invalid:
    return Invalid([f"value: could not be classified ({type(exc).__name__}: a consumer bug)"])


# Every byte but `{`, `[` and `:`, which the fast path counts.
_UNCOUNTED_BYTES: Final = bytes(b for b in range(256) if b not in b"{[:")


def _classify_fast(value: bytes | None) -> Apply | Skip | None:
    """The verdict of a value orjson parses, or None to leave the value to the exact path.

    What orjson refuses (non-UTF-8, a byte order mark, NaN, numbers beyond a double, lone
    surrogates, trailing data) goes the exact way, which refuses it too and says why. orjson
    keeps the last of duplicate keys, so values that may hold any go the exact way as well;
    so do deep values, and every Invalid verdict: integers beyond 64 bits come out of orjson
    as floats, which our validators reject with a less helpful message than the exact path's.
    """
    if not value or len(value) > MAX_BYTES:
        return None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not _shape_allowed(value, document):
        return None
    # orjson refuses lone surrogates, so every string it returns encodes back to UTF-8.
    verdict = _classify_document(document, may_hold_surrogates=False)
    return None if isinstance(verdict, Invalid) else verdict


def _native_shape_allowed(value: bytes, document: object) -> bool:
    spelled = _native.structure(value, MAX_DEPTH)
    return spelled >= 0 and spelled == _native.keys(document)


def _python_shape_allowed(value: bytes, document: object) -> bool:
    # One pass keeps the bytes counted below: far fewer than the value, so counting is free.
    counted = value.translate(None, _UNCOUNTED_BYTES)
    colons = counted.count(b":")
    # Each level needs an opening bracket, so few brackets means no walk is needed.
    if len(counted) - colons > MAX_DEPTH and _deeper_than(document, MAX_DEPTH):
        return False
    return _keys_unique(value, document, colons)


# Whether `value`, which orjson parsed into `document`, nests at most MAX_DEPTH levels and
# repeats no key in any object (orjson would have kept the last one silently). In native code
# when it is built: the text's keys (colons outside strings) are counted, and its depth
# bounded, in one pass, then compared with the keys `document` kept; 3.1 instead of 4.8 us a
# 4.7 KB value. Otherwise in Python, with the same verdict. Chosen once, not per record.
_shape_allowed: Final = _native_shape_allowed if _native is not None else _python_shape_allowed


def _keys_unique(value: bytes, document: object, colons: int) -> bool:
    """Whether no object in `value` repeats a key, judged by counting colons.

    `colons` counts the colons of `value`. Outside strings, a colon follows every key and
    nothing else; inside strings, colons are text. Re-encoding the parsed document keeps
    every string's colons and one colon per key it kept, so it has fewer colons than the
    input exactly when a key was dropped as a duplicate (with at least its own colon).
    Unless the input spells a colon as an escape (`\\u003a`), which decodes to one more
    colon than the input shows: such values are left to the exact path.

    A value that is its own re-encoding needs no count: a dropped key would be missing from
    the re-encoding. One comparison instead of a count saves 2.5 us a 4.7 KB value.
    """
    try:
        encoded = orjson.dumps(document)
    except orjson.JSONEncodeError:
        return False
    if encoded == value:  # compact JSON, as most producers write it
        return True
    if b"\\" in value and b"\\u003" in value:
        return False
    return encoded.count(b":") == colons


def _classify_document(document: object, may_hold_surrogates: bool) -> Verdict:
    if not isinstance(document, dict):
        return Invalid([f"value: must be a JSON object, got {_show(document)}; {_ACCEPTED_SHAPES}"])
    if "data" in document:
        return _classify_envelope(document, may_hold_surrogates)
    return _classify_bare(document, may_hold_surrogates)


def _classify_envelope(envelope: dict[str, Any], may_hold_surrogates: bool) -> Verdict:
    if "type" not in envelope:
        return Invalid(["type: required field is missing; a webhook envelope names its event type"])
    event_type = envelope["type"]
    if not isinstance(event_type, str) or not event_type.strip():
        return Invalid(
            [f"type: must be a non-empty string naming the event type, got {_show(event_type)}"]
        )
    if event_type != TARGET_EVENT_TYPE:
        return Skip(event_type[:_MAX_EVENT_TYPE_CHARS])
    valid = _validated(_ENVELOPE, WebhookEnvelope, envelope, prefix="")
    if isinstance(valid, Invalid):
        return valid
    return _checked(valid["data"], valid.get("id"), may_hold_surrogates)


def _classify_bare(data: dict[str, Any], may_hold_surrogates: bool) -> Verdict:
    transaction = data.get("transaction")
    transaction_type = transaction.get("type") if isinstance(transaction, dict) else None
    # A sibling event never has both; a target event with a damaged transaction.type still does.
    if transaction_type == ACTIVATION_TRANSACTION_TYPE or (
        "transaction" in data and "pending_points" in data
    ):
        return _target_data(data, may_hold_surrogates)
    if isinstance(transaction_type, str) and transaction_type:
        return Skip(_inferred_from_transaction(data, transaction_type))
    if "transaction" not in data and "voucher_pending_points_balance" in data:
        # The pending-points events (added, updated, canceled, and the customer's copy of
        # the activation) carry this balance and no transaction.
        return Skip("voucher.loyalty_card.pending_points.*" + _INFERRED)
    if "pending_points" in data or "balance" in data:
        # The target event's own parts with others missing: validation says which. Skipping
        # it would drop an activation without a trace.
        return _target_data(data, may_hold_surrogates)
    keys = ", ".join(_show(key) for key in sorted(data)[:10]) or "none"
    return Invalid([f"value: not a recognised shape (top-level keys: {keys}); {_ACCEPTED_SHAPES}"])


def _target_data(data: dict[str, Any], may_hold_surrogates: bool) -> Verdict:
    valid = _validated(_DATA, PendingPointsActivatedData, data, prefix="data.")
    if isinstance(valid, Invalid):
        return valid
    return _checked(valid, None, may_hold_surrogates)


def _inferred_from_transaction(data: dict[str, Any], transaction_type: str) -> str:
    if "holder" in data:
        return "voucher.loyalty_card.transaction.created" + _INFERRED
    if transaction_type in _EVENT_BY_TRANSACTION_TYPE:
        return _EVENT_BY_TRANSACTION_TYPE[transaction_type] + _INFERRED
    if transaction_type in _LOYALTY_TRANSACTION_TYPES:
        return f"voucher.loyalty_card.* ({transaction_type} transaction)" + _INFERRED
    # Arbitrary strings stay out of the label so that skip metrics keep a bounded set of values.
    return "voucher.* (non-loyalty transaction)" + _INFERRED


def _reasons(error: ValidationError, prefix: str) -> list[str]:
    return [
        prefix + ".".join(str(part) for part in detail["loc"]) + ": " + _problem(detail)
        for detail in error.errors(include_url=False)
    ]


def _problem(detail: ErrorDetails) -> str:
    kind = detail["type"]
    # Reasons reach headers and logs: text found where the customer belongs may be a name
    # or an address, so it is described, never quoted.
    loc = detail["loc"][1:] if detail["loc"][:1] == ("data",) else detail["loc"]
    show = _show_kind if loc[:1] == ("customer",) else _show
    if kind == "missing":
        return "required field is missing"
    if kind in _OBJECT_ERRORS:
        return f"must be an object, got {show(detail['input'])}"
    if kind == "string_type":
        return f"must be a string or null, got {show(detail['input'])}"
    # The field types above phrase their own messages in this same form.
    return detail["msg"]


def _checked(
    data: dict[str, Any], webhook_id: str | None, may_hold_surrogates: bool
) -> Apply | Invalid:
    """Cross-field checks that one model field cannot make, then the verdict.

    `data` is a validated `PendingPointsActivatedData` as plain dicts (see `_validated`).
    """
    voucher = data["voucher"]
    transaction = data["transaction"]
    pending = data["pending_points"]
    customer = data["customer"]
    campaign = data["campaign"]
    order = data.get("order") or {}
    voucher_id = voucher["id"]
    reasons = []
    if transaction["voucher_id"] != voucher_id:
        reasons.append(
            f"data.transaction.voucher_id: must equal data.voucher.id {_show(voucher_id)}, "
            f"got {_show(transaction['voucher_id'])}"
        )
    pending_voucher_id = pending.get("voucher_id")
    if pending_voucher_id is not None and pending_voucher_id != voucher_id:
        reasons.append(
            f"data.pending_points.voucher_id: must equal data.voucher.id {_show(voucher_id)}, "
            f"got {_show(pending_voucher_id)}"
        )
    banner_path, banner = _banner(transaction, pending)
    activation = Activation(
        transaction_id=transaction["id"],
        voucher_id=voucher_id,
        voucher_code=voucher["code"],
        customer_id=customer["id"],
        campaign_id=campaign["id"],
        points=pending["points"],
        balance=data["balance"]["balance"],
        pending_points=voucher["loyalty_card"]["pending_points"],
        activated_at=transaction["created_at"],
        campaign_name=campaign.get("name"),
        order_id=order.get("id"),
        order_amount=order.get("amount"),
        order_currency=_currency(order.get("metadata")),
        earning_rule_banner=banner,
        webhook_id=webhook_id,
        customer_name=customer.get("name"),
        customer_email=customer.get("email"),
        customer_source_id=customer.get("source_id"),
    )
    if may_hold_surrogates:
        reasons.extend(_unencodable(activation, banner_path))
    if reasons:
        return Invalid(reasons)
    return Apply(activation)


def _banner(transaction: dict[str, Any], pending: dict[str, Any]) -> tuple[str, str | None]:
    """The earning rule's banner: the transaction's copy first, the pending entry's second."""
    banner = _rule_banner(transaction.get("details"))
    if banner is not None:
        return _BANNER_PATHS[0], banner
    return _BANNER_PATHS[1], _rule_banner(pending.get("details"))


def _rule_banner(details: dict[str, Any] | None) -> str | None:
    """`details.earning_rule.source.banner`, where each step may be missing or null."""
    rule = None if details is None else details.get("earning_rule")
    source = None if rule is None else rule.get("source")
    return None if source is None else source.get("banner")


def _unencodable(activation: Activation, banner_path: str) -> list[str]:
    """Fields passed on downstream that hold lone surrogates, which no UTF-8 encoder accepts."""
    passed_on = {
        "id": activation.webhook_id,
        "data.transaction.id": activation.transaction_id,
        "data.voucher.id": activation.voucher_id,
        "data.voucher.code": activation.voucher_code,
        "data.customer.id": activation.customer_id,
        "data.customer.name": activation.customer_name,
        "data.customer.email": activation.customer_email,
        "data.customer.source_id": activation.customer_source_id,
        "data.campaign.id": activation.campaign_id,
        "data.campaign.name": activation.campaign_name,
        "data.order.id": activation.order_id,
        "data.order.metadata.currency": activation.order_currency,
        banner_path: activation.earning_rule_banner,
    }
    reasons = []
    for path, text in passed_on.items():
        if text is None:
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            reasons.append(
                f"{path}: contains an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF)"
            )
    return reasons
