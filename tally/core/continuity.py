"""How far a table partition is known to hold its changelog without a hole. No Faust in here.

A table partition records the changelog offset it holds records through, and a restore reads
on from there: an offset recorded past records never applied loses them for good. Faust's
recovery can skip records: when it starts reading a standby partition it seeks, then resumes
its flow, and resuming empties the queue of changelog events, dropping what was fetched from
the new position in between (seen in the chaos soak: the first records after the seek, or a
fresh standby's first thousand). So each applied batch is checked against the one before:
while a partition has a hole, the offset recorded stays before it, and the next restore reads
the hole again. A hole that a reread from before it shows again, the same, is in the log itself
(compaction, transaction markers) and is passed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


class ChangelogContinuity:
    """Per table partition (`key`): the last offset applied, the first offset of an open hole,
    and the holes seen once (a second sighting from a reread accepts one)."""

    def __init__(self) -> None:
        self._last: dict[Hashable, int] = {}
        self._open: dict[Hashable, int] = {}
        self._seen: set[tuple[Hashable, int, int]] = set()

    def wrote(self, key: Hashable, offset: int) -> int:
        """The partition's own write at `offset` was acknowledged: returns the offset that may
        be recorded (before an open hole, which its writes do not mend)."""
        self._last[key] = offset
        hole = self._open.get(key)
        return offset if hole is None else hole - 1

    def applied(self, key: Hashable, offsets: Sequence[int], persisted: int | None) -> int:
        """A batch of changelog `offsets` (ascending) applied; `persisted`: the offset recorded
        before it (None: none, reading began at the log's start). Returns the offset that may
        be recorded: the batch's last, or the one before an open hole (-1: before all)."""
        recorded = -1 if persisted is None else persisted
        previous = self._last.get(key, recorded)
        for offset in offsets:
            if offset <= previous:  # reading went back: it restarted from the recorded offset
                previous = min(recorded, offset - 1)
            hole = self._open.get(key)
            if offset > previous + 1:
                sighting = (key, previous + 1, offset)
                if sighting in self._seen:  # a reread shows it again: the log has no records
                    self._seen.discard(sighting)
                    if hole == previous + 1:
                        del self._open[key]
                else:
                    self._seen.add(sighting)
                    self._open[key] = previous + 1 if hole is None else min(hole, previous + 1)
            elif hole is not None and offset <= hole:  # read on from before the hole
                del self._open[key]
            previous = offset
        self._last[key] = previous
        hole = self._open.get(key)
        return previous if hole is None else hole - 1

    def holes(self) -> dict[Hashable, int]:
        """Partitions with an open hole → its first offset."""
        return dict(self._open)
