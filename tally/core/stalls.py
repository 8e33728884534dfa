"""Source partitions that stopped moving: messages wait and none is processed.

A stuck agent is otherwise silent: nothing fails, its lag only grows, and every answer it
owns goes stale. `Stalls` says which partitions have had messages waiting with the next
offset to process unchanged for `after_s`, so the worker can say so (log, `/api/health`)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass
class _Watch:
    next_offset: int
    since: float  # when `next_offset` was first seen with messages waiting
    allowance_s: float  # how long its agent may hold messages on purpose (a batch window)
    warned: float | None = None

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
