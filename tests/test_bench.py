"""The bench's method, in pure code: what a prefix must give, the check's verdict, the rounds."""

from __future__ import annotations

import pytest

from bench.expect import Expected, InputIndex, Observed, compare
from bench.rounds import orders, summarise
from consumer.workload import GeneratedRecord, Workload


def _record(kind: str, partition: int, transaction_id: str | None = None) -> GeneratedRecord:
    return GeneratedRecord(
        key=b"k",
        value=b"{}",
        partition=partition,
        kind=kind,  # type: ignore[arg-type]
        transaction_id=transaction_id,
        voucher_id=None,
        points=0,
    )


def _correct(expected: Expected, ledger_rows: int | None = None) -> Observed:
    """What a correct worker run shows for `expected`."""
    return Observed(
        records=expected.records,
        counts={
            "applied": expected.applied,
            "duplicates": expected.duplicates,
            "skipped": expected.skipped,
            "dead_lettered": expected.dead_lettered,
        },
        outputs=expected.applied,
        distinct_output_ids=expected.applied,
        dead_letters=expected.dead_lettered,
        ledger_rows=expected.applied if ledger_rows is None else ledger_rows,
    )


def test_the_whole_topic_gives_the_workloads_own_expectation() -> None:
    workload = Workload(seed=8, events=3_000, duplicate_share=0.2, partitions=4, refused_share=0.01)
    index = InputIndex(4)
    index.add(workload.records())
    whole = workload.expectation()

    got = index.expectation(index.ends())

    assert got == Expected(
        records=len(workload),
        applied=whole.distinct,
        duplicates=whole.kinds["duplicate"],
        skipped=whole.kinds["sibling"],
        dead_lettered=whole.kinds["malformed"] + whole.kinds["refused"],
    )


def test_a_redelivery_read_before_its_original_is_the_one_applied() -> None:
    index = InputIndex(2)
    index.add(
        [
            _record("new", 0, "vtx_a"),
            _record("duplicate", 1, "vtx_a"),
            _record("sibling", 1),
            _record("malformed", 0),
        ]
    )

    assert index.expectation({0: 0, 1: 2}) == Expected(2, 1, 0, 1, 0)
    assert index.expectation({0: 1, 1: 1}) == Expected(2, 1, 1, 0, 0)
    assert index.expectation({0: 2, 1: 2}) == Expected(4, 1, 1, 1, 1)


def test_an_offset_beyond_the_loaded_records_is_refused() -> None:
    index = InputIndex(1)
    index.add([_record("new", 0, "vtx_a")])

    with pytest.raises(ValueError, match="outside the loaded"):
        index.expectation({0: 2})


def test_a_correct_run_has_no_differences() -> None:
    expected = Expected(records=100, applied=80, duplicates=8, skipped=2, dead_lettered=10)

    assert compare("ours", expected, _correct(expected)) == {}


@pytest.mark.parametrize(
    ("field", "value", "name"),
    [
        ("outputs", 79, "outputs"),  # a notification lost
        ("distinct_output_ids", 79, "distinct_output_ids"),  # one notified twice
        ("dead_letters", 11, "dead_letters"),
        ("records", 99, "records"),  # counted one more than it committed
    ],
)
def test_each_kind_of_lost_or_doubled_work_is_a_difference(
    field: str, value: int, name: str
) -> None:
    expected = Expected(records=100, applied=80, duplicates=8, skipped=2, dead_lettered=10)
    observed = _correct(expected)
    wrong = _replace(observed, field, value)

    differences = compare("faststream", expected, wrong)

    assert list(differences) == [name]
    assert differences[name][0] == value


def test_a_ledger_row_too_many_is_a_difference() -> None:
    expected = Expected(records=100, applied=80, duplicates=8, skipped=2, dead_lettered=10)

    assert compare("naive", expected, _correct(expected, ledger_rows=81)) == {
        "ledger_rows": (81, 80)
    }


def test_the_passthrough_must_copy_every_committed_record() -> None:
    expected = Expected(records=100, applied=80, duplicates=8, skipped=2, dead_lettered=10)
    copied = Observed(
        records=100,
        counts={"passed": 100},
        outputs=99,
        distinct_output_ids=None,
        dead_letters=0,
        ledger_rows=None,
    )

    assert compare("limit", expected, copied) == {"outputs": (99, 100)}


def _replace(observed: Observed, field: str, value: int) -> Observed:
    values = {name: getattr(observed, name) for name in Observed.__slots__}
    values[field] = value
    return Observed(**values)


def test_rounds_run_forward_backward_then_rotated_by_half() -> None:
    assert orders(["a", "b", "c", "d"], 4) == [
        ["a", "b", "c", "d"],
        ["d", "c", "b", "a"],
        ["c", "d", "a", "b"],
        ["b", "a", "d", "c"],
    ]


@pytest.mark.parametrize("count", [2, 3, 4, 5, 9])
def test_no_item_holds_the_same_place_in_every_one_of_three_rounds(count: int) -> None:
    rounds = orders(list(range(count)), 3)

    assert all(sorted(order) == list(range(count)) for order in rounds)
    for item in range(count):
        assert len({order.index(item) for order in rounds}) > 1


def test_a_figure_is_the_median_of_its_rounds_kept_in_running_order() -> None:
    summary = summarise([12_000.0, 9_000.0, 15_500.0])

    assert summary == {
        "median": 12_000.0,
        "rounds": [12_000.0, 9_000.0, 15_500.0],
        "min": 9_000.0,
        "max": 15_500.0,
    }
