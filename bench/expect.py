"""What a correct contender must have produced from any prefix of a loaded input topic.

The bench stops a contender after a measuring window, wherever it is, so its outputs are
checked against the records it committed (the group's offsets), not against the whole
stream. `InputIndex` keeps, per partition and offset, the kind of each record and a number
for its transaction id (a byte and four bytes a record, so millions fit), and turns the
committed offsets into the counts every contender must show. `compare` lists the
differences; the harness fails the run on any.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Final

from consumer.workload import GeneratedRecord

__all__ = ["Expected", "InputIndex", "Observed", "compare"]

_CODES: Final = {"new": ord("n"), "duplicate": ord("d"), "sibling": ord("s")}
_MALFORMED: Final = ord("m")
_REFUSED: Final = ord("r")
_NO_ID: Final = -1


@dataclass(frozen=True, slots=True)
class Expected:
    """Counts a correct contender shows after committing a given prefix of the input."""

    records: int
    applied: int  # distinct transaction ids of valid activations (refused ones aside)
    duplicates: int  # further records of an id already applied
    skipped: int  # other event types
    dead_lettered: int  # malformed records and activations the store refuses


@dataclass(frozen=True, slots=True)
class Observed:
    """What a contender's run left behind, counted from outside it where possible.

    `records` and the outcome counts are the contender's own; the rest is read afterwards:
    the notification topic and the dead-letter topic as a `read_committed` consumer sees
    them, and the ledger rows in its database (None where the contender has none).
    """

    records: int
    counts: Mapping[str, int]
    outputs: int
    distinct_output_ids: int | None  # distinct `ce_id` headers; None if not read
    dead_letters: int
    ledger_rows: int | None


class InputIndex:
    """The kind and the transaction id of every record of one input topic, by position."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._kinds = [bytearray() for _ in range(partitions)]
        self._ids = [array("l") for _ in range(partitions)]
        self._numbers: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(kinds) for kinds in self._kinds)

    def add(self, records: Iterable[GeneratedRecord]) -> None:
        """Records in the order they were published; each must name its partition."""
        for record in records:
            if record.partition is None:
                raise ValueError("the bench's workloads name each record's partition")
            if record.kind == "malformed":
                code, number = _MALFORMED, _NO_ID
            elif record.kind == "refused":
                code, number = _REFUSED, _NO_ID
            else:
                code = _CODES[record.kind]
                number = _NO_ID
                if record.transaction_id is not None and record.kind != "sibling":
                    number = self._numbers.setdefault(record.transaction_id, len(self._numbers))
            self._kinds[record.partition].append(code)
            self._ids[record.partition].append(number)

    def ends(self) -> dict[int, int]:
        """The end offset of every partition of a freshly loaded topic."""
        return {partition: len(kinds) for partition, kinds in enumerate(self._kinds)}

    def expectation(self, positions: Mapping[int, int]) -> Expected:
        """The counts for the records before `positions` (partition -> next offset)."""
        seen = bytearray(len(self._numbers))
        counts = dict.fromkeys((*_CODES.values(), _MALFORMED, _REFUSED), 0)
        distinct = 0
        for partition, position in positions.items():
            kinds = self._kinds[partition]
            if not 0 <= position <= len(kinds):
                raise ValueError(
                    f"partition {partition}: offset {position} is outside the loaded "
                    f"0..{len(kinds)}; was the topic written by anyone but the bench?"
                )
            ids = self._ids[partition]
            for offset in range(position):
                counts[kinds[offset]] += 1
                number = ids[offset]
                if number != _NO_ID and not seen[number]:
                    seen[number] = 1
                    distinct += 1
        activations = counts[_CODES["new"]] + counts[_CODES["duplicate"]]
        return Expected(
            records=sum(counts.values()),
            applied=distinct,
            duplicates=activations - distinct,
            skipped=counts[_CODES["sibling"]],
            dead_lettered=counts[_MALFORMED] + counts[_REFUSED],
        )


def compare(kind: str, expected: Expected, observed: Observed) -> dict[str, tuple[int, int]]:
    """Every count that differs, as name -> (got, wanted); empty when all agree.

    The worker, the naive loop and the FastStream job apply each distinct activation once,
    notify it once (distinct `ce_id`s), count the rest as duplicates, skipped or
    dead-lettered, and hold one ledger row per applied id. The passthrough (`limit`) copies
    every record it committed to its output and dead-letters nothing.
    """
    wanted: dict[str, int] = {"records": expected.records}
    got: dict[str, int | None] = {"records": observed.records}
    if kind == "limit":
        wanted |= {"outputs": expected.records, "dead_letters": 0}
        got |= {"outputs": observed.outputs, "dead_letters": observed.dead_letters}
    else:
        for name, value in asdict(expected).items():
            if name != "records":
                wanted[name] = value
                got[name] = observed.counts.get(name, 0)
        wanted |= {
            "outputs": expected.applied,
            "distinct_output_ids": expected.applied,
            "dead_letters": expected.dead_lettered,
            "ledger_rows": expected.applied,
        }
        got |= {
            "outputs": observed.outputs,
            "distinct_output_ids": observed.distinct_output_ids,
            "dead_letters": observed.dead_letters,
            "ledger_rows": observed.ledger_rows,
        }
    return {
        name: (-1 if got[name] is None else int(got[name] or 0), value)
        for name, value in wanted.items()
        if got[name] != value
    }
