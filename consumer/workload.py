"""Seed-shaped workloads: reproducible streams of activations, duplicates, siblings and garbage.

Used by the chaos run, the benchmarks, the fuzz and accounting tests, and by operators who
want to load a staging topic. Every record derives from the vendor's reference payload with
random but valid ids and amounts, so the worker does real work on realistic bytes; the same
seed always gives the same stream, byte for byte.

Values are rendered on demand (a 30,000-record stream would hold ~190 MB of values), so
`Workload.records()` can be iterated as often as needed without keeping them.
"""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from aiokafka import AIOKafkaProducer

__all__ = [
    "EXAMPLES",
    "MALFORMATIONS",
    "REFUSED_PREFIX",
    "SEED_FILE",
    "Expectation",
    "GeneratedRecord",
    "Kind",
    "Workload",
    "activation_payload",
    "install_refusal",
    "publish",
    "sibling_event_type",
    "sibling_files",
]

TARGET: Final = "voucher.loyalty_card.pending_points.activated"
EXAMPLES: Final = (
    Path(__file__).resolve().parents[1].parent / "shared" / "contracts" / "voucherify" / "examples"
)
SEED_NAME: Final = "seed-voucher-loyalty-card-pending-points-activated.json"
SEED_FILE: Final = EXAMPLES / SEED_NAME

Kind = Literal["new", "duplicate", "sibling", "malformed", "refused"]

# Valid activations whose ids start with this are refused by a store that `install_refusal`
# prepared: records that pass validation and that the database still will not take.
REFUSED_PREFIX: Final = "vtx_refused_"

_ALNUM: Final = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_EPOCH: Final = datetime(2025, 1, 1, tzinfo=UTC)
_NEAR_DUPLICATE: Final = 50  # a "soon" retry lands within this many records of the original


@dataclass(frozen=True, slots=True)
class GeneratedRecord:
    """One record to publish, and what the worker must make of it."""

    key: bytes | None
    value: bytes | None
    partition: int | None  # None: the producer picks by key
    kind: Kind
    transaction_id: str | None  # set for "new", "duplicate" and "refused" only
    voucher_id: str | None
    points: int  # 0 unless "new" or "duplicate"
    detail: str = ""  # the malformation or the sibling example it came from


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a correct worker leaves behind once the whole stream is consumed."""

    records: int
    kinds: dict[str, int]  # records per kind
    transaction_ids: frozenset[str]  # distinct ids to apply (and notify) exactly once
    points_by_card: dict[str, int]  # activated points per voucher id
    balance_by_card: dict[str, int]  # Voucherify's balance after the card's newest activation

    @property
    def distinct(self) -> int:
        return len(self.transaction_ids)

    @property
    def points(self) -> int:
        return sum(self.points_by_card.values())


@dataclass(frozen=True, slots=True)
class _Activation:
    """The parameters of one distinct activation; its bytes are rendered from them."""

    transaction_id: str
    voucher_id: str
    voucher_code: str
    customer_id: str
    points: int
    balance: int
    pending: int
    created_at: datetime
    envelope: bool


@dataclass(frozen=True, slots=True)
class _Planned:
    """A slot of the stream before rendering."""

    kind: Kind
    activation: _Activation | None
    partition: int | None
    key_by_customer: bool = False
    detail: str = ""
    salt: int = 0  # feeds the malformation's own randomness


@cache
def _template(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"the reference payload {path.name} is not at {path}; it comes with the shared "
            "contracts folder (shared/contracts/voucherify/examples beside the repository). "
            "Pass its location explicitly (Workload(..., examples=Path(...)))."
        )
    loaded: dict[str, Any] = orjson.loads(path.read_bytes())
    return loaded


@cache
def _template_bytes(path: Path) -> bytes:
    return orjson.dumps(_template(path))


def _fresh_template(path: Path) -> dict[str, Any]:
    """A private copy of the reference document to fill in.

    Parsed again from its compact bytes rather than `copy.deepcopy`-ed: the same document
    (orjson writes back exactly what it read), ten times faster, which is most of the
    time it takes to render a stream (150 -> 15 us a record; the bench loads millions).
    """
    fresh: dict[str, Any] = orjson.loads(_template_bytes(path))
    return fresh


def sibling_files(examples: Path = EXAMPLES) -> list[Path]:
    """The vendor's examples of the other loyalty-card events, in a stable order."""
    return sorted(p for p in examples.glob("*.json") if p.name != SEED_NAME)


def sibling_event_type(path: Path) -> str:
    """The webhook type an example file stands for: `voucher-loyalty-card-points-added.json`
    is `voucher.loyalty_card.points_added`."""
    stem = path.stem
    owner = ""
    if stem.startswith("customer-"):
        owner, stem = "customer.", stem.removeprefix("customer-")
    rest = stem.removeprefix("voucher-loyalty-card-")
    for group in ("pending-points-", "transaction-"):
        if rest.startswith(group):
            rest = group[:-1].replace("-", "_") + "." + rest.removeprefix(group)
            break
    else:
        rest = rest.replace("-", "_")
    return f"{owner}voucher.loyalty_card.{rest}"


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def activation_payload(
    transaction_id: str,
    *,
    voucher_id: str,
    customer_id: str,
    points: int,
    balance: int,
    pending: int,
    created_at: datetime,
    voucher_code: str = "67028386",
    envelope: bool = True,
    examples: Path = EXAMPLES,
) -> dict[str, Any]:
    """The reference event with every field the worker relies on replaced, as a document."""
    data = _fresh_template(examples / SEED_NAME)
    stamp = _stamp(created_at.astimezone(UTC))
    transaction = data["transaction"]
    transaction["id"] = transaction_id
    transaction["voucher_id"] = voucher_id
    transaction["created_at"] = stamp
    details = transaction.get("details") or {}
    if isinstance(details.get("balance"), dict):
        details["balance"].update(points=points, balance=balance, total=balance)
        details["balance"]["related_object"]["id"] = voucher_id
    voucher = data["voucher"]
    voucher.update(id=voucher_id, code=voucher_code, holder_id=customer_id, updated_at=stamp)
    voucher["loyalty_card"].update(points=balance, balance=balance, pending_points=pending)
    data["pending_points"].update(voucher_id=voucher_id, customer_id=customer_id, points=points)
    data["balance"].update(points=points, balance=balance, total=balance)
    data["balance"]["related_object"]["id"] = voucher_id
    data["customer"]["id"] = customer_id
    if isinstance(data.get("order"), dict):
        data["order"]["customer_id"] = customer_id
    if not envelope:
        return data
    return {
        "id": "whs_" + transaction_id.removeprefix("vtx_"),
        "project_id": "proj_workload",
        "created_at": _stamp(created_at.astimezone(UTC) + timedelta(seconds=1)),
        "type": TARGET,
        "data": data,
        "source": {"id": "wh_workload", "object": "webhook"},
        "event": {"id": "ev_" + transaction_id.removeprefix("vtx_"), "type": TARGET},
    }


# --------------------------------------------------------------------------- malformations
#
# Each takes a valid document (envelope or bare data) and a random source and returns the
# bytes (or None) of a record the worker must dead-letter. The document is the worker's
# problem to reject, never ours to fix: each is checked against `classify` in the tests.


def _data(document: dict[str, Any]) -> dict[str, Any]:
    inner = document.get("data")
    return inner if isinstance(inner, dict) else document


def _dumped(document: object) -> bytes:
    return orjson.dumps(document)


def _dumped_any(document: object) -> bytes:
    """The standard library's encoder: unlike orjson it writes integers beyond 64 bits."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _set_points(value: object) -> Callable[[dict[str, Any], random.Random], bytes | None]:
    def damage(document: dict[str, Any], _rng: random.Random) -> bytes:
        _data(document)["pending_points"]["points"] = value
        return _dumped_any(document)

    return damage


def _not_json(_document: dict[str, Any], rng: random.Random) -> bytes:
    return f"webhook body lost in transit #{rng.randrange(10**6)} {{".encode()


def _truncated(document: dict[str, Any], rng: random.Random) -> bytes:
    raw = _dumped(document)
    return raw[: rng.randrange(1, len(raw) - 1)]


def _not_utf8(document: dict[str, Any], rng: random.Random) -> bytes:
    raw = _dumped(document)
    cut = raw.index(b'"name"') + 9  # inside the customer's name
    return raw[:cut] + bytes([rng.choice((0xFF, 0xC3, 0xFE, 0x80))]) + raw[cut:]


def _latin1(document: dict[str, Any], _rng: random.Random) -> bytes:
    _data(document)["customer"]["name"] = "Zoë Müller"
    return orjson.dumps(document).decode().encode("latin-1")


def _byte_order_mark(document: dict[str, Any], _rng: random.Random) -> bytes:
    return b"\xef\xbb\xbf" + _dumped(document)


def _missing_transaction_id(document: dict[str, Any], _rng: random.Random) -> bytes:
    del _data(document)["transaction"]["id"]
    return _dumped(document)


def _empty_transaction_id(document: dict[str, Any], _rng: random.Random) -> bytes:
    _data(document)["transaction"]["id"] = ""
    return _dumped(document)


def _numeric_customer_id(document: dict[str, Any], rng: random.Random) -> bytes:
    _data(document)["customer"]["id"] = rng.randrange(1, 10**9)
    return _dumped(document)


def _other_card(document: dict[str, Any], _rng: random.Random) -> bytes:
    _data(document)["transaction"]["voucher_id"] = "v_someoneelse"
    return _dumped(document)


def _naive_time(document: dict[str, Any], _rng: random.Random) -> bytes:
    _data(document)["transaction"]["created_at"] = "2025-01-08T14:08:34"
    return _dumped(document)


def _missing_type(document: dict[str, Any], _rng: random.Random) -> bytes:
    outer = {"data": _data(document), "id": "whs_untyped"}
    return _dumped(outer)


def _null_value(_document: dict[str, Any], _rng: random.Random) -> None:
    return None


def _empty_value(_document: dict[str, Any], _rng: random.Random) -> bytes:
    return b""


def _array(_document: dict[str, Any], rng: random.Random) -> bytes:
    return _dumped([rng.randrange(100) for _ in range(3)])


def _deep(_document: dict[str, Any], rng: random.Random) -> bytes:
    depth = rng.randrange(65, 400)
    return b'{"data":' * depth + b"{}" + b"}" * depth


def _duplicate_keys(document: dict[str, Any], _rng: random.Random) -> bytes:
    # A second `type` (envelope) or `transaction` (bare data): parsers disagree on the winner.
    repeated = (
        b'"type":"voucher.loyalty_card.points_added"'
        if "data" in document
        else (b'"transaction":{}')
    )
    return _dumped(document)[:-1] + b"," + repeated + b"}"


def _not_a_number(_document: dict[str, Any], _rng: random.Random) -> bytes:
    return b'{"type":"' + TARGET.encode() + b'","data":{"pending_points":{"points":NaN}}}'


def _unknown_shape(_document: dict[str, Any], rng: random.Random) -> bytes:
    return _dumped({"hello": "world", "n": rng.randrange(1000)})


def _lone_surrogate(document: dict[str, Any], _rng: random.Random) -> bytes:
    raw = _dumped(document)
    cut = raw.index(b'"code":"') + 8
    return raw[:cut] + b"\\ud800" + raw[cut:]


MALFORMATIONS: Final[dict[str, Callable[[dict[str, Any], random.Random], bytes | None]]] = {
    "not-json": _not_json,
    "truncated-json": _truncated,
    "not-utf8": _not_utf8,
    "latin-1": _latin1,
    "byte-order-mark": _byte_order_mark,
    "negative-points": _set_points(-5),
    "zero-points": _set_points(0),
    "string-points": _set_points("23"),
    "fractional-points": _set_points(2.5),
    "boolean-points": _set_points(True),
    "huge-points": _set_points(2**70),
    "missing-transaction-id": _missing_transaction_id,
    "empty-transaction-id": _empty_transaction_id,
    "numeric-customer-id": _numeric_customer_id,
    "voucher-mismatch": _other_card,
    "naive-timestamp": _naive_time,
    "envelope-without-type": _missing_type,
    "null-value": _null_value,
    "empty-value": _empty_value,
    "json-array": _array,
    "deep-nesting": _deep,
    "duplicate-keys": _duplicate_keys,
    "nan": _not_a_number,
    "unknown-shape": _unknown_shape,
    "lone-surrogate": _lone_surrogate,
}


# --------------------------------------------------------------------------- the workload


@dataclass
class Workload:
    """A reproducible stream: `records()` yields the same bytes for the same arguments.

    `events` counts every record of the stream; the shares say which part of it are
    duplicates (re-deliveries of earlier activations, some soon after, some much later, some
    into another partition), sibling event types, and malformed records. The rest are new
    activations spread over `cards` loyalty cards (many activations per card).
    With `partitions`, each record names its partition (new ones by a hash of their key);
    without, the producer picks by key and re-deliveries change key half of the time.
    """

    seed: int
    events: int
    duplicate_share: float = 0.2
    sibling_share: float = 0.05
    malformed_share: float = 0.02
    refused_share: float = 0.0
    cards: int | None = None  # default: one card per ~20 activations
    partitions: int | None = None
    bare_share: float = 0.1  # activations sent as bare `data` (as in the seed) not enveloped
    examples: Path = EXAMPLES
    _plan: list[_Planned] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        shares = (
            self.duplicate_share,
            self.sibling_share,
            self.malformed_share,
            self.refused_share,
        )
        if self.events < 0 or any(not 0 <= share <= 1 for share in shares) or sum(shares) > 1:
            raise ValueError("events must be ≥ 0 and the shares within [0, 1], together ≤ 1")
        if self.partitions is not None and self.partitions < 1:
            raise ValueError("partitions must be ≥ 1")
        _template(self.examples / SEED_NAME)  # fail now, with the message, if it is missing
        self._plan = self._build_plan()

    def __len__(self) -> int:
        return len(self._plan)

    # -- planning: cheap parameters only, rendered lazily ---------------------------------

    def _build_plan(self) -> list[_Planned]:
        rng = random.Random(self.seed)
        duplicates = round(self.events * self.duplicate_share)
        siblings = round(self.events * self.sibling_share)
        malformed = round(self.events * self.malformed_share)
        refused = round(self.events * self.refused_share)
        new = self.events - duplicates - siblings - malformed - refused
        if duplicates and not new:
            raise ValueError("duplicates need at least one new activation to repeat")
        activations = self._activations(rng, new)
        base: list[_Planned] = [
            _Planned("new", a, self._partition_of(a.voucher_id)) for a in activations
        ]
        siblings_of = sibling_files(self.examples)
        base += [
            _Planned(
                "sibling",
                None,
                self._any_partition(rng),
                detail=siblings_of[rng.randrange(len(siblings_of))].name,
                salt=rng.getrandbits(32),
            )
            for _ in range(siblings if siblings_of else 0)
        ]
        names = sorted(MALFORMATIONS)
        damaged = self._activations(rng, malformed, prefix="vtx_bad", like=activations)
        base += [
            _Planned(
                "malformed",
                activation,
                self._any_partition(rng),
                detail=names[i % len(names)],
                salt=rng.getrandbits(32),
            )
            for i, activation in enumerate(damaged)
        ]
        if refused:
            base += [
                _Planned("refused", activation, self._partition_of(activation.voucher_id))
                for activation in self._activations(
                    rng, refused, prefix=REFUSED_PREFIX, like=activations
                )
            ]
        rng.shuffle(base)
        # New activations keep their relative order (their times increase per card).
        order = iter(p for p in base if p.kind == "new")
        base = [next(order) if p.kind == "new" else p for p in base]
        return self._with_duplicates(rng, base, duplicates)

    def _activations(
        self,
        rng: random.Random,
        count: int,
        prefix: str = "vtx_",
        like: list[_Activation] | None = None,
    ) -> list[_Activation]:
        """`count` activations over the workload's cards (or over the cards of `like`)."""
        if like:
            vouchers = sorted({(a.voucher_id, a.voucher_code, a.customer_id) for a in like})
        else:
            cards = self.cards or max(1, count // 20)
            customers = [f"cust_{_token(rng, 24)}" for _ in range(max(1, cards * 3 // 4))]
            vouchers = [
                (f"v_{_token(rng, 32)}", f"{rng.randrange(10**8):08d}", rng.choice(customers))
                for _ in range(cards)
            ]
        cards = len(vouchers)
        balances = [0] * cards
        moments = [_EPOCH + timedelta(seconds=rng.randrange(86_400)) for _ in range(cards)]
        seen: set[str] = set()
        made = []
        for _ in range(count):
            card = rng.randrange(cards)
            voucher_id, code, customer_id = vouchers[card]
            points = rng.randrange(1, 500)
            balances[card] += points
            moments[card] += timedelta(milliseconds=rng.randrange(1, 3_600_000))
            transaction_id = f"{prefix}{rng.getrandbits(72):018x}"
            while transaction_id in seen:
                transaction_id = f"{prefix}{rng.getrandbits(72):018x}"
            seen.add(transaction_id)
            made.append(
                _Activation(
                    transaction_id=transaction_id,
                    voucher_id=voucher_id,
                    voucher_code=code,
                    customer_id=customer_id,
                    points=points,
                    balance=balances[card],
                    pending=rng.randrange(0, 1000),
                    created_at=moments[card],
                    envelope=rng.random() >= self.bare_share,
                )
            )
        return made

    def _with_duplicates(
        self, rng: random.Random, base: list[_Planned], duplicates: int
    ) -> list[_Planned]:
        originals = [i for i, p in enumerate(base) if p.kind == "new"]
        placed: list[tuple[float, int, _Planned]] = [(float(i), 0, p) for i, p in enumerate(base)]
        for n in range(duplicates):
            at = rng.choice(originals)
            original = base[at]
            if rng.random() < 0.5:
                position = at + rng.uniform(0.5, _NEAR_DUPLICATE)  # a quick retry
            else:
                position = rng.uniform(at + 0.5, len(base))  # hours later, after newer events
            partition = original.partition
            moved = rng.random() < 0.5
            if moved and self.partitions is not None and self.partitions > 1:
                partition = (partition or 0) + rng.randrange(1, self.partitions)
                partition %= self.partitions
            placed.append(
                (
                    position,
                    n + 1,
                    _Planned(
                        "duplicate",
                        original.activation,
                        partition,
                        key_by_customer=moved and self.partitions is None,
                        detail="later" if position - at > _NEAR_DUPLICATE else "soon",
                    ),
                )
            )
        placed.sort(key=lambda item: (item[0], item[1]))
        return [planned for _, _, planned in placed]

    def _partition_of(self, key: str) -> int | None:
        if self.partitions is None:
            return None
        return zlib.crc32(key.encode()) % self.partitions

    def _any_partition(self, rng: random.Random) -> int | None:
        return None if self.partitions is None else rng.randrange(self.partitions)

    # -- rendering ------------------------------------------------------------------------

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[GeneratedRecord]:
        """The stream (or a slice of it, for publishing in waves), rendered as it goes."""
        for planned in self._plan[start:stop]:
            yield self._render(planned)

    def _document(self, a: _Activation) -> dict[str, Any]:
        return activation_payload(
            a.transaction_id,
            voucher_id=a.voucher_id,
            customer_id=a.customer_id,
            points=a.points,
            balance=a.balance,
            pending=a.pending,
            created_at=a.created_at,
            voucher_code=a.voucher_code,
            envelope=a.envelope,
            examples=self.examples,
        )

    def _render(self, planned: _Planned) -> GeneratedRecord:
        a = planned.activation
        if planned.kind == "sibling":
            return self._render_sibling(planned)
        assert a is not None
        if planned.kind == "malformed":
            damage = MALFORMATIONS[planned.detail]
            value = damage(self._document(a), random.Random(planned.salt))
            return GeneratedRecord(
                key=a.voucher_id.encode(),
                value=value,
                partition=planned.partition,
                kind="malformed",
                transaction_id=None,
                voucher_id=None,
                points=0,
                detail=planned.detail,
            )
        key = a.customer_id if planned.key_by_customer else a.voucher_id
        return GeneratedRecord(  # new, duplicate and refused: a valid activation
            key=key.encode(),
            value=_dumped(self._document(a)),
            partition=planned.partition,
            kind=planned.kind,
            transaction_id=a.transaction_id,
            voucher_id=a.voucher_id,
            points=a.points,
            detail=planned.detail,
        )

    def _render_sibling(self, planned: _Planned) -> GeneratedRecord:
        path = self.examples / planned.detail
        rng = random.Random(planned.salt)
        if rng.random() < 0.5:
            value = path.read_bytes()  # bare, exactly as the vendor shows it
        else:
            data = orjson.loads(path.read_bytes())
            value = _dumped(
                {
                    "id": f"whs_{rng.getrandbits(64):016x}",
                    "project_id": "proj_workload",
                    "created_at": _stamp(_EPOCH),
                    "type": sibling_event_type(path),
                    "data": data,
                }
            )
        return GeneratedRecord(
            key=f"v_{_token(rng, 32)}".encode(),
            value=value,
            partition=planned.partition,
            kind="sibling",
            transaction_id=None,
            voucher_id=None,
            points=0,
            detail=planned.detail,
        )

    # -- what a correct worker must end with ----------------------------------------------

    def expectation(self) -> Expectation:
        kinds = Counter[str](p.kind for p in self._plan)
        ids: set[str] = set()
        points: dict[str, int] = {}
        newest: dict[str, _Activation] = {}
        for planned in self._plan:
            a = planned.activation
            if planned.kind != "new" or a is None:
                continue
            ids.add(a.transaction_id)
            points[a.voucher_id] = points.get(a.voucher_id, 0) + a.points
            current = newest.get(a.voucher_id)
            if current is None or (a.created_at, a.transaction_id) > (
                current.created_at,
                current.transaction_id,
            ):
                newest[a.voucher_id] = a
        return Expectation(
            records=len(self._plan),
            kinds=dict(kinds),
            transaction_ids=frozenset(ids),
            points_by_card=points,
            balance_by_card={voucher: a.balance for voucher, a in newest.items()},
        )


def _token(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(_ALNUM) for _ in range(length))


# --------------------------------------------------------------------------- publishing


async def publish(
    records: Iterable[GeneratedRecord],
    topic: str,
    *,
    bootstrap_servers: str | None = None,
    producer: AIOKafkaProducer | None = None,
    chunk: int = 2_000,
) -> int:
    """Send the records in order with an idempotent producer, `chunk` in flight at a time.

    Give `bootstrap_servers` (a producer is made and closed here) or a started `producer`
    (for security options, build it with `consumer.kafka.producer(settings)`). Returns how
    many records were sent; raises the producer's error if one was not acknowledged.
    """
    own = producer is None
    if producer is None:
        if bootstrap_servers is None:
            raise ValueError("give bootstrap_servers or a started producer")
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers.split(","),
            enable_idempotence=True,
            acks="all",
            linger_ms=20,
            max_batch_size=512 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        await producer.start()
    sent = 0
    try:
        in_flight: list[asyncio.Future[Any]] = []
        for record in records:
            in_flight.append(
                await producer.send(
                    topic, value=record.value, key=record.key, partition=record.partition
                )
            )
            if len(in_flight) >= chunk:
                await asyncio.gather(*in_flight)
                sent += len(in_flight)
                in_flight = []
        await asyncio.gather(*in_flight)
        sent += len(in_flight)
    finally:
        if own:
            await producer.stop()
    return sent


# --------------------------------------------------------------------------- refusals

_REFUSAL_NAME: Final = "workload_refuses_marked_ids"


async def install_refusal(database_url: str) -> None:
    """Make the migrated store at `database_url` refuse ledger rows of `REFUSED_PREFIX` ids.

    For tests, the chaos run and the benchmarks only: a real refusal by the real database (a
    CHECK constraint on PostgreSQL, a trigger on SQLite, which cannot add constraints), so
    that the worker's isolation and dead-letter paths meet what production would send them.
    Idempotent.
    """
    pattern = REFUSED_PREFIX.replace("_", "\\_") + "%"
    scheme, _, rest = database_url.partition("://")
    if scheme in {"postgresql", "postgres"}:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]

        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                f"ALTER TABLE ledger DROP CONSTRAINT IF EXISTS {_REFUSAL_NAME};"
                f"ALTER TABLE ledger ADD CONSTRAINT {_REFUSAL_NAME} "
                f"CHECK (transaction_id NOT LIKE '{pattern}')"
            )
        finally:
            await conn.close()
        return
    if scheme != "sqlite":
        raise ValueError(f"install_refusal: unsupported store URL scheme {scheme!r}")
    import aiosqlite

    async with aiosqlite.connect(rest[1:]) as db:
        await db.executescript(
            f"DROP TRIGGER IF EXISTS {_REFUSAL_NAME};"
            f"CREATE TRIGGER {_REFUSAL_NAME} BEFORE INSERT ON ledger "
            f"WHEN NEW.transaction_id LIKE '{pattern}' ESCAPE '\\' "
            "BEGIN SELECT RAISE(ABORT, 'refused: a workload-marked id'); END;"
        )
