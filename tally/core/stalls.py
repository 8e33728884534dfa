"""Source partitions that stopped moving: messages wait and none is processed.

A stuck agent is otherwise silent: nothing fails, its lag only grows, and every answer it
owns goes stale. `Stalls` says which partitions have had messages waiting with the next
offset to process unchanged for `after_s`, so the worker can say so (log, `/api/health`).

A stall is also how a dropped tail shows: Faust drops records it fetched around a rebalance,
and a hole is seen when a later offset arrives (core.applied.Unread); when nothing follows,
none does. `Readers` says when no agent reading a topic can hold its messages, so that what
the broker has after a partition's last processed offset was dropped and is read again."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass


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
    """Per partition: how long it has been stuck, when to say so again, and when to read it
    again."""

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
        """Whether to read the stalled partition again from its next offset now: not within
        `every_s` plus its allowance of the last time (a reread's messages may wait that long
        in its agent's batch); marked when due."""
        watch = self._watches.get(key)
        if watch is None:
            return False
        if watch.reread is not None and now - watch.reread < every_s + watch.allowance_s:
            return False
        watch.reread = now
        return True


@dataclass
class Reading:
    """One agent reading `topics`, gathering batches for `window_s`."""

    topics: frozenset[str]
    window_s: float
    #: When it began waiting for its next batch (None: it works on one).
    idle_since: float | None

    def took(self) -> None:
        """It was handed a batch and works on it."""
        self.idle_since = None

    def waits(self, now: float) -> None:
        """It is done with its batch and waits for the next."""
        self.idle_since = now


class Readers:
    """Whether the agents reading a topic could hold any of its messages."""

    def __init__(self, margin_s: float = 1.0) -> None:
        self.margin_s = margin_s
        self._readings: list[Reading] = []

    def reads(self, topics: Iterable[str], window_s: float, now: float) -> Reading:
        """An agent reads `topics` from `now` on, gathering batches for `window_s`."""
        reading = Reading(frozenset(topics), window_s, now)
        self._readings.append(reading)
        return reading

    def gone(self, reading: Reading) -> None:
        """The agent stopped reading (a crash its supervisor restarts, a stop)."""
        self._readings.remove(reading)

    def window(self, topic: str) -> float:
        """The longest batch window of the agents reading `topic`: how long one of its
        messages may be held on purpose (0: none reads it)."""
        return max((r.window_s for r in self._readings if topic in r.topics), default=0.0)

    def all_idle(self, topic: str, now: float) -> bool:
        """Whether every agent reading `topic` has waited for a batch for its batch window
        (and `margin_s`) or longer: what was queued for it more than a window ago has been
        handed over and processed, so none holds such a message of the topic. False when
        none reads it."""
        readings = [r for r in self._readings if topic in r.topics]
        return bool(readings) and all(
            r.idle_since is not None and now - r.idle_since >= r.window_s + self.margin_s
            for r in readings
        )
