"""Which input partitions this replica owns, in which epoch, and where their unfinished work
starts.

An epoch begins with each assignment and ends with the revocation that follows it (or when
the group coordinator refuses this replica's offsets). Work belongs to the epoch it was
fetched in: a batch of an ended epoch touches neither the store nor Kafka, and its
transactional offsets name the epoch's group generation, so the group coordinator refuses
them if the group has moved on (see consumer/kip447.py).

Positions are the next offsets to process: read once a partition is assigned, from the
group's stable committed offsets, and then advanced by this replica's own commits, never
read back (a read right after a commit can return the offset before it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

from consumer.kip447 import GroupMember

__all__ = ["Epoch", "Ownership"]


@dataclass(frozen=True, slots=True)
class Epoch:
    """One assignment: our own count, and the group generation it came with (None in
    at-least-once mode, whose offsets go through the consumer's own commit)."""

    number: int
    member: GroupMember | None


class Ownership:
    """The current epoch, its partitions, and their positions. Changed by the rebalance
    callbacks (begin, revoking, end), by the position reads (established) and by commits
    (advance); read by the loop and the committer."""

    def __init__(self) -> None:
        self._count = 0
        self.epoch: Epoch | None = None
        self.revoking = False  # a revocation waits for the batch in flight: start no other
        self.assigned: frozenset[TopicPartition] = frozenset()
        self._positions: dict[TopicPartition, int] = {}

    def begin(self, member: GroupMember | None, assigned: Iterable[TopicPartition]) -> Epoch:
        """A new assignment: no partition has a position until it is established."""
        self._count += 1
        self.epoch = Epoch(self._count, member)
        self.revoking = False
        self.assigned = frozenset(assigned)
        self._positions = {}
        return self.epoch

    def end(self) -> None:
        """The epoch is over: nothing of it may start, apply or commit any more."""
        self.epoch = None
        self.revoking = False
        self.assigned = frozenset()
        self._positions = {}

    def holds(self, epoch: Epoch) -> bool:
        """Whether work of `epoch` may still touch the store and Kafka."""
        return self.epoch is epoch

    def accepts(self, epoch: Epoch) -> bool:
        """Whether new work of `epoch` may start (not while a revocation waits)."""
        return self.epoch is epoch and not self.revoking

    def established(self, epoch: Epoch, positions: Mapping[TopicPartition, int]) -> bool:
        """Positions read for partitions of `epoch`; False (and ignored) if it ended."""
        if not self.holds(epoch):
            return False
        self._positions.update(
            {tp: offset for tp, offset in positions.items() if tp in self.assigned}
        )
        return True

    def advance(self, epoch: Epoch, offsets: Mapping[TopicPartition, int]) -> None:
        """Our own commit of `epoch` moved these partitions on."""
        if self.holds(epoch):
            self._positions.update(
                {tp: offset for tp, offset in offsets.items() if tp in self._positions}
            )

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset to process, once established in this epoch."""
        return self._positions.get(tp)

    @property
    def pending(self) -> frozenset[TopicPartition]:
        """Assigned partitions whose positions are not established yet."""
        return self.assigned - self._positions.keys()
