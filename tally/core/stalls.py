"""Source partitions that stopped moving: messages wait and none is processed.

A stuck agent is otherwise silent: nothing fails, its lag only grows, and every answer it
owns goes stale. `Stalls` says which partitions have had messages waiting with the next
offset to process unchanged for `after_s`, so the worker can say so (log, `/api/health`).

A stall is also how a dropped tail shows: Faust drops records it fetched around a rebalance,
and a hole is seen when a later offset arrives (core.applied.Unread); when nothing follows,
none does. `Readers` says when none of a partition's agents can be holding its messages, so
that what the broker has after the last processed offset was dropped and is read again."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass
class _Watch:
    next_offset: int
    since: float  # when `next_offset` was first seen with messages waiting
    allowance_s: float  # how long its agent may hold messages on purpose (a batch window)
    warned: float | None = None
    reread: float | None = None  # when it was last read again from `next_offset`

    def stuck_for(self, now: float, after_s: float) -> float | None:
        seconds = now - self.since
        return seconds if seconds >= after_s + self.allowance_s else None


class Stalls:
    """Per partition: how long it has been stuck, and when to say so again."""

    def __init__(self, after_s: float = 30.0) -> None:
        self.after_s = after_s
        self._watches: dict[Hashable, _Watch] = {}

    def observe(
        self, key: Hashable, next_offset: int, waiting: int, now: float, allowance_s: float = 0
    ) -> None:
        """The partition's next offset to process and the messages after it, seen at `now`;
        `allowance_s`: how long its agent gathers a batch (it holds messages that long on
        purpose, e.g. the archive's minute-long flushes)."""
        watch = self._watches.get(key)
        if waiting <= 0:
            self._watches.pop(key, None)
        elif watch is None or watch.next_offset != next_offset:
            self._watches[key] = _Watch(next_offset, now, allowance_s)

    def keep_only(self, keys: Iterable[Hashable]) -> None:
        """Partitions not listed left this worker (or have no lag known): not stalled here."""
        kept = set(keys)
        for key in [k for k in self._watches if k not in kept]:
            del self._watches[key]

    def stalled(self, now: float, after_s: float | None = None) -> dict[Hashable, float]:
        """Partition → seconds stuck, for those stuck `after_s` (default: the limit; plus
        their allowance) or longer."""
        limit = self.after_s if after_s is None else after_s
        return {
            key: seconds
            for key, watch in self._watches.items()
            if (seconds := watch.stuck_for(now, limit)) is not None
        }

    def due(self, now: float) -> dict[Hashable, float]:
        """`stalled`, but each partition only every `after_s`: what to warn about now."""
        due = {}
        for key, seconds in self.stalled(now).items():
            watch = self._watches[key]
            if watch.warned is None or now - watch.warned >= self.after_s:
                watch.warned = now
                due[key] = seconds
        return due

    def reread_due(self, key: Hashable, now: float, every_s: float) -> bool:
        """Whether to read the stalled partition again from its next offset now: not if it
        was within `every_s` (a reread takes that long to come back on a busy worker); marked
        when due."""
        watch = self._watches.get(key)
        if watch is None or (watch.reread is not None and now - watch.reread < every_s):
            return False
        watch.reread = now
        return True


@dataclass
class _Reader:
    topics: frozenset[str]
    window_s: float  # how long it gathers a batch
    working: bool = False
    handed: dict[tuple[str, int], float] = field(default_factory=dict)


class Readers:
    """What each agent reading a topic does: works on a batch, or waits for one; and when it
    was last handed messages of each partition."""

    def __init__(self, margin_s: float = 1.0) -> None:
        self.margin_s = margin_s
        self._readers: dict[str, _Reader] = {}

    def reads(self, reader: str, topics: Iterable[str], window_s: float) -> None:
        """`reader` (an agent) reads `topics`, gathering batches for `window_s`."""
        self._readers[reader] = _Reader(frozenset(topics), window_s)

    def took(self, reader: str, partitions: Iterable[tuple[str, int]], now: float) -> None:
        """`reader` was handed a batch of messages of `partitions` (topic, partition) and
        works on it."""
        state = self._readers[reader]
        state.working = True
        for partition in partitions:
            state.handed[partition] = now

    def waits(self, reader: str) -> None:
        """`reader` is done with its batch and waits for the next."""
        self._readers[reader].working = False

    def hold_none_of(self, topic: str, partition: int, now: float) -> bool:
        """Whether no agent can hold a message of the partition: every reader of `topic`
        waits for a batch and was handed none of the partition's messages within its batch
        window (and `margin_s`), so none waits in its buffer. False when none reads it."""
        readers = [r for r in self._readers.values() if topic in r.topics]
        return bool(readers) and all(
            not reader.working
            and now - reader.handed.get((topic, partition), -math.inf)
            >= reader.window_s + self.margin_s
            for reader in readers
        )
