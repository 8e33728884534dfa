"""What a worker keeps in memory per partition it owns: built on first use, dropped when the
partition leaves the worker. No Faust here (the app calls `PartitionStates.revoked`).

Every `PartitionStates` registers itself when it is made, so no pipeline has to remember to
wire its own clean-up: when partitions are revoked, every instance drops its entries for them,
and a partition that comes back (after a rebalance, a failover and a failback) is rebuilt from
the tables, which the worker that held it meanwhile kept up to date.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from tally.core.windowing import EventClock

T = TypeVar("T")


class TopicPartition(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


class PartitionStates(Generic[T]):
    """One kind of in-memory state per partition of `topic`."""

    _every: ClassVar[list[PartitionStates[object]]] = []

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._by_partition: dict[int, T] = {}
        PartitionStates._every.append(self)  # type: ignore[arg-type]

    @classmethod
    def revoked(cls, revoked: Iterable[TopicPartition]) -> None:
        """Drop every instance's state of the partitions this worker no longer holds."""
        gone = [(tp.topic, tp.partition) for tp in revoked]
        for states in cls._every:
            for topic, partition in gone:
                if topic == states.topic:
                    states._by_partition.pop(partition, None)

    def get(self, partition: int) -> T | None:
        return self._by_partition.get(partition)

    def __getitem__(self, partition: int) -> T:
        return self._by_partition[partition]

    def __setitem__(self, partition: int, state: T) -> None:
        self._by_partition[partition] = state

    def __contains__(self, partition: int) -> bool:
        return partition in self._by_partition

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_partition)

    def forget(self, partition: int) -> None:
        """Drop one partition's state (it is rebuilt from storage on next use)."""
        self._by_partition.pop(partition, None)


class StoredClocks(PartitionStates[EventClock]):
    """Each partition's event clock, rebuilt on first use from the record `stored(partition)`
    reads (None: a new clock), waiting for the announcements of `awaited(partition)`."""

    def __init__(
        self,
        topic: str,
        stored: Callable[[int], Mapping[str, Any] | None],
        awaited: Callable[[int], frozenset[int]] = lambda _: frozenset(),
    ) -> None:
        super().__init__(topic)
        self.stored, self.awaited = stored, awaited

    def clock(self, partition: int) -> EventClock:
        clock = self.get(partition)
        if clock is None:
            saved = self.stored(partition)
            clock = self[partition] = EventClock.from_record(saved, self.awaited(partition))
        return clock
