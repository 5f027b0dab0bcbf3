"""Process tuning: the garbage collector's threshold, and that garbage is still collected.

Each case runs in a child interpreter: the collector's state is process-wide, and the test
run's own must stay as Python sets it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


def _child(body: str) -> dict[str, object]:
    script = "import gc, json, weakref\nfrom consumer.runtime import tune_garbage_collector\n"
    completed = subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(completed.stdout.splitlines()[-1])
    return result


def _tuned(threshold: int) -> tuple[object, object, object]:
    """The thresholds before and after `tune_garbage_collector(threshold)`, and how many
    objects it froze."""
    seen = _child(
        f"""
        before = gc.get_threshold()
        tune_garbage_collector({threshold})
        print(json.dumps({{"before": before, "after": gc.get_threshold(),
                          "frozen": gc.get_freeze_count()}}))
        """
    )
    return seen["before"], seen["after"], seen["frozen"]


def test_tuning_freezes_start_up_and_raises_the_youngest_threshold() -> None:
    before, after, frozen = _tuned(50_000)

    assert isinstance(before, list) and isinstance(after, list)
    assert after == [50_000, *before[1:]]
    assert isinstance(frozen, int) and frozen > 1_000  # the imported modules


def test_zero_leaves_the_collector_as_python_sets_it() -> None:
    before, after, frozen = _tuned(0)

    assert after == before
    assert frozen == 0


@pytest.mark.parametrize("threshold", [1_000, 50_000])
def test_cyclic_garbage_is_collected_once_the_threshold_is_passed(threshold: int) -> None:
    seen = _child(
        f"""
        tune_garbage_collector({threshold})

        class Node:
            pass

        node = Node()
        node.self = node  # a cycle: reference counting alone never frees it
        alive = weakref.ref(node)
        del node
        kept = []
        for _ in range({threshold} // 2):
            kept.append([])
        after_half = alive() is not None
        for _ in range({threshold}):
            kept.append([])
        print(json.dumps({{"after_half": after_half, "after_threshold": alive() is not None}}))
        """
    )

    assert seen == {"after_half": True, "after_threshold": False}
