"""Interleaved rounds and their medians: how every figure of the bench is taken.

A contender's figure moves by a fifth from one minute to the next on a shared two-core VM,
so one measurement each would make a ratio depend on which minute each landed in. Each
figure is the median of several rounds, and the rounds interleave the contenders in a
different order each time, so that a slow minute touches all of them alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = ["orders", "summarise"]

T = TypeVar("T")


def orders(items: Sequence[T], rounds: int) -> list[list[T]]:
    """The running order of each round: forward, backward, then rotated by half, backward...

    A B C D, D C B A, C D A B, B A D C: an item runs early in one round and late in another,
    and after another neighbour, so neither a slow stretch of minutes nor the state a heavy
    contender leaves behind (the broker's caches, PostgreSQL's checkpoints) falls on it alone.
    """
    found = []
    for number in range(rounds):
        shift = (number // 2) * max(1, len(items) // 2) % max(1, len(items))
        rotated = list(items[shift:]) + list(items[:shift])
        found.append(rotated[::-1] if number % 2 else rotated)
    return found


def summarise(values: Sequence[float], digits: int = 1) -> dict[str, Any]:
    """The median of the rounds, the rounds themselves (in running order), their spread."""
    if not values:
        raise ValueError("no rounds to summarise")
    return {
        "median": round(statistics.median(values), digits),
        "rounds": [round(value, digits) for value in values],
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }
