"""Bisection and the dead-letter policy, as pure logic: the apply step and the committer are
stand-ins recording what was asked of them (the real ones are exercised over the real broker
and databases in tests/test_eo_*.py and tests/test_worker.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition

from consumer.config import Settings
from consumer.errors import BatchRefused, Fenced, StoreError
from consumer.isolation import Isolation
from consumer.ownership import Epoch
from consumer.planning import Output, Plan, Step
from consumer.retrier import Retrier
from consumer.store.base import SourceOffset

TOPIC = "in"


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int = 0
    key: bytes | None = None
    value: bytes | None = b"{}"
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass
class Recorder:
    """Applies plans unless they hold a refused record; commits dead letters."""

    refused: set[tuple[int, int]]
    applied: list[list[tuple[int, int]]] = field(default_factory=list)
    attempts: int = 0
    letters: list[Output] = field(default_factory=list)
    refuse_letters: int = 0  # the first n dead-letter commits are refused too

    async def apply(self, plan: Plan) -> None:
        self.attempts += 1
        where = [(s.record.partition, s.record.offset) for s in plan.steps]
        if self.refused & set(where):
            raise StoreError("refused by the stand-in store")
        self.applied.append(where)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def commit(self, plan: Plan, outputs: list[Output]) -> None:
        if self.refuse_letters:
            self.refuse_letters -= 1
            raise BatchRefused("too large")
        self.letters.extend(outputs)


class NoStore:
    async def mark_owed(self, sources: Sequence[tuple[str, SourceOffset]]) -> int:
        raise AssertionError("nothing was applied, nothing can be owed")


def plan_of(partitions: int, per_partition: int) -> Plan:
    steps = [Step(FakeRecord(TOPIC, p, o)) for p in range(partitions) for o in range(per_partition)]
    return Plan(Epoch(1, None), steps)


def isolation(recorder: Recorder, committed: list[Plan], **settings: Any) -> Isolation:
    config = Settings(max_record_attempts=3, **settings)
    retrier = Retrier(config, on_retry=lambda *_: None, on_recovered=lambda: None)
    return Isolation(
        config,
        NoStore(),  # type: ignore[arg-type]
        recorder,
        retrier,
        recorder.apply,
        committed.append,
    )


@pytest.mark.parametrize(("bad", "size"), [(1, 2000), (2, 2000), (8, 2000), (3, 97)])
async def test_k_refused_records_cost_about_k_log_n_attempts_not_n(bad: int, size: int) -> None:
    plan = plan_of(partitions=4, per_partition=size // 4)
    positions = [(s.record.partition, s.record.offset) for s in plan.steps]
    refused = set(positions[7 :: len(positions) // bad][:bad])
    recorder = Recorder(refused)
    committed: list[Plan] = []

    pieces = await isolation(recorder, committed).process(plan)

    bound = bad * (2 * math.ceil(math.log2(len(plan))) + 3) + 1
    assert recorder.attempts <= bound, (recorder.attempts, bound)
    assert recorder.attempts < len(plan)  # isolating record by record costs one each
    # Every good record applied once, in order; every refused one dead-lettered once.
    applied = [where for piece in recorder.applied for where in piece]
    assert applied == [where for where in positions if where not in refused]
    assert len(recorder.letters) == len(refused)
    assert [p.counts["dead_lettered_persistent"] for p in pieces].count(1) == len(refused)


async def test_pieces_commit_every_partition_in_offset_order() -> None:
    plan = plan_of(partitions=3, per_partition=10)
    recorder = Recorder({(1, 4), (2, 9)})
    committed: list[Plan] = []

    await isolation(recorder, committed).process(plan)

    last: dict[TopicPartition, int] = {}
    for piece in committed:
        for tp, offset in piece.offsets().items():
            assert offset > last.get(tp, -1)
            last[tp] = offset
    assert last == {TopicPartition(TOPIC, p): 10 for p in range(3)}


async def test_a_lone_refused_record_is_tried_max_attempts_times_then_dead_lettered() -> None:
    plan = plan_of(partitions=1, per_partition=1)
    recorder = Recorder({(0, 0)})

    await isolation(recorder, []).process(plan)

    assert recorder.attempts == 3  # the batch's try, then two more alone
    [letter] = recorder.letters
    assert dict(letter.headers)["dlq.attempts"] == b"3"
    assert dict(letter.headers)["dlq.reason_class"] == b"persistent"


async def test_when_the_full_dead_letter_is_refused_the_bounded_one_is_written() -> None:
    plan = plan_of(partitions=1, per_partition=1)
    recorder = Recorder({(0, 0)}, refuse_letters=1)

    await isolation(recorder, []).process(plan)

    [letter] = recorder.letters
    assert dict(letter.headers)["dlq.truncated"] == b"true"


async def test_when_even_the_bounded_dead_letter_is_refused_the_worker_stops_with_the_fix() -> None:
    recorder = Recorder({(0, 0)}, refuse_letters=2)

    with pytest.raises(Exception, match="DEAD_LETTER_TOPIC"):
        await isolation(recorder, []).process(plan_of(partitions=1, per_partition=1))


async def test_a_fenced_batch_is_not_isolated() -> None:
    class FencedRecorder(Recorder):
        async def apply(self, plan: Plan) -> None:
            self.attempts += 1
            raise Fenced("the group moved on")

    recorder = FencedRecorder(set())

    with pytest.raises(Fenced):
        await isolation(recorder, []).process(plan_of(partitions=2, per_partition=50))
    assert recorder.attempts == 1
    assert recorder.letters == []
