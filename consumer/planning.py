"""Batch planning, pure: records to verdicts, verdicts to ledger entries, outcomes to outputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from aiokafka import TopicPartition

from consumer.deadletter import ReasonClass, bounded_dead_letter, dead_letter
from consumer.events import Activation, Apply, Invalid, Skip, classify
from consumer.ownership import Epoch
from consumer.store.base import BatchResult, LedgerEntry, SourceOffset
from consumer.transform import notification_record, to_ledger_entry

if TYPE_CHECKING:  # only imported when tracing is on (consumer.tracing decides)
    from consumer.signature import SignatureVerifier
    from consumer.spans import BatchTrace, RecordSpan

__all__ = ["Output", "Plan", "Record", "Step", "classify_record", "dead_letter_output"]


class Record(Protocol):
    """What we read of aiokafka's ConsumerRecord (aiokafka ships no type information)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class Output(NamedTuple):
    """One record to produce in the batch's Kafka transaction (a tuple: one a record, built
    in half the time of a frozen dataclass)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(slots=True)
class Step:
    """One input record and what classification made of it."""

    record: Record
    activation: Activation | None = None  # to the store; its outcome decides the output
    dead_letter: Output | None = None  # dead-lettered in the batch's transaction
    reasons: Sequence[str] = ()  # of the dead letter
    reason_class: ReasonClass = "invalid"
    skipped: bool = False
    outcome: str | None = None  # the store's verdict on the activation, once applied
    span: RecordSpan | None = None  # when tracing is on


@dataclass(slots=True)
class Plan:
    """The classified records of one poll, partition by partition in offset order, and the
    ownership epoch they were fetched in."""

    epoch: Epoch
    steps: list[Step]
    counts: Counter[str] = field(default_factory=Counter)  # outcomes, once committed
    stored: BatchResult | None = None  # what the store decided, once it committed
    trace: BatchTrace | None = None  # when tracing is on
    _offsets: dict[TopicPartition, int] | None = None

    def __len__(self) -> int:
        return len(self.steps)

    def records(self) -> Iterator[Record]:
        return (step.record for step in self.steps)

    def offsets(self) -> dict[TopicPartition, int]:
        """The offset to commit for each partition: after its last record here."""
        if self._offsets is None:
            ends: dict[tuple[str, int], int] = {}
            for step in self.steps:
                record = step.record
                ends[record.topic, record.partition] = record.offset + 1
            self._offsets = {TopicPartition(*where): end for where, end in ends.items()}
        return self._offsets

    def split(self) -> tuple[Plan, Plan]:
        """Two halves; each partition's records in the first precede its records in the
        second, so committing the halves in order commits every partition in order."""
        middle = len(self.steps) // 2
        return Plan(self.epoch, self.steps[:middle]), Plan(self.epoch, self.steps[middle:])

    def end_spans(self) -> None:
        """Tracing: each record's span ends with the outcome that is now committed."""
        for step in self.steps:
            span = step.span
            if span is None:
                continue
            if step.dead_letter is not None:
                span.end("dead_lettered", reason_class=step.reason_class)
            elif step.skipped:
                span.end("skipped")
            elif step.activation is not None and step.outcome is not None:
                span.end(
                    step.outcome,  # type: ignore[arg-type]  # the store's kinds are outcomes
                    transaction_id=step.activation.transaction_id,
                )

    def entries(self) -> list[LedgerEntry]:
        """The ledger entries of the activations, each with the record it came from."""
        return [
            to_ledger_entry(
                step.activation,
                SourceOffset(step.record.topic, step.record.partition, step.record.offset),
            )
            for step in self.steps
            if step.activation is not None
        ]

    def outputs(self, result: BatchResult, *, notification_topic: str, source: str) -> list[Output]:
        """The batch's outputs in record order once the store decided each activation, and
        the outcome counts (`counts`) they stand for."""
        counts: Counter[str] = Counter()
        outputs: list[Output] = []
        outcomes = iter(result.outcomes)
        for step in self.steps:
            if step.activation is not None:
                outcome = next(outcomes)
                step.outcome = outcome.kind
                counts[outcome.kind] += 1
                if outcome.notifies:
                    key, value, headers = notification_record(step.activation, source=source)
                    if step.span is not None:  # the notification continues the record's trace
                        headers = [*headers, *step.span.headers()]
                    outputs.append(Output(notification_topic, key, value, headers))
            elif step.dead_letter is not None:
                counts[f"dead_lettered_{step.reason_class}"] += 1
                outputs.append(step.dead_letter)
            elif step.skipped:
                counts["skipped"] += 1
        self.counts = counts
        return outputs


def classify_record(
    record: Record, dead_letter_topic: str, verifier: SignatureVerifier | None = None
) -> Step:
    """The step of one record: an activation for the store, a skip, or a dead letter. With
    a verifier, the webhook signature is checked first, on the value's exact bytes."""
    if verifier is not None:
        problem = verifier.check(record.value, record.headers or ())
        if problem is not None:
            letter = dead_letter_output(record, [problem], "invalid", 1, dead_letter_topic)
            return Step(record, dead_letter=letter, reasons=[problem])
    verdict = classify(record.value)
    if isinstance(verdict, Apply):
        return Step(record, activation=verdict.activation)
    if isinstance(verdict, Skip):
        return Step(record, skipped=True)
    assert isinstance(verdict, Invalid)
    letter = dead_letter_output(record, verdict.reasons, "invalid", 1, dead_letter_topic)
    return Step(record, dead_letter=letter, reasons=verdict.reasons)


def dead_letter_output(
    record: Record,
    reasons: Sequence[str],
    reason_class: ReasonClass,
    attempts: int,
    topic: str,
    *,
    bounded: bool = False,
) -> Output:
    """The dead letter of `record`: the original bytes kept, or, when Kafka refused that,
    a bounded record that still says why, from where, and what the original was."""
    make = bounded_dead_letter if bounded else dead_letter
    letter = make(
        key=record.key,
        value=record.value,
        headers=list(record.headers or ()),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reasons=reasons,
        reason_class=reason_class,
        attempts=attempts,
    )
    return Output(topic, letter.key, letter.value, letter.headers)
