"""How far a table partition is known to hold its changelog without a hole. No Faust in here.

A table partition records the changelog offset it holds records through, and a restore reads
on from there: an offset recorded past records never applied loses them for good. Faust's
recovery can skip records: when it starts reading a standby partition it seeks, then resumes
its flow, and resuming empties the queue of changelog events, dropping what was fetched from
the new position in between (seen in the chaos soak: the first records after the seek, or a
fresh standby's first thousand). So each batch Faust applies is checked against the one before:
while a partition has a hole, the offset recorded stays before it, and the next restore reads
the hole again. A drop can repeat exactly, so no reread through Faust's path passes a hole;
a read that cannot drop (Tally's bulk reader, its own consumer) does: whatever it skips is
not in the log (compaction, transaction markers).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


class ChangelogContinuity:
    """Per table partition (`key`): the last offset applied, the first offset of an open
    hole, and how far it had read before it went back to read a stretch again."""

    def __init__(self) -> None:
        self._last: dict[Hashable, int] = {}
        self._open: dict[Hashable, int] = {}
        self._reread_to: dict[Hashable, int] = {}

    def whole(self, key: Hashable) -> bool:
        """Whether the partition holds what it applied without an open hole, and has read
        again as far as it had read before (a copy fit to answer from: while it reads a
        stretch again, keys written later in it hold older values than before)."""
        return key not in self._open and key not in self._reread_to

    def last(self, key: Hashable) -> int | None:
        """The last offset the partition applied or wrote (None: none yet)."""
        return self._last.get(key)

    def hole(self, key: Hashable) -> int | None:
        """The first offset of the partition's open hole (None: none)."""
        return self._open.get(key)

    def wrote(self, key: Hashable, offset: int) -> int:
        """The partition's own write at `offset` was acknowledged: returns the offset that may
        be recorded (before an open hole, which its writes do not mend)."""
        self._last[key] = offset
        self._reread_to.pop(key, None)
        hole = self._open.get(key)
        return offset if hole is None else hole - 1

    def read_through(self, key: Hashable, offset: int) -> int:
        """A read that cannot drop records covered the log from the recorded offset through
        `offset`: any hole before is mended. Returns `offset`, to record."""
        self._open.pop(key, None)
        self._read_to(key, self._last.get(key, offset), offset)
        self._last[key] = offset
        return offset

    def applied(self, key: Hashable, offsets: Sequence[int], persisted: int | None) -> int:
        """A batch of changelog `offsets` (ascending) applied through Faust's recovery;
        `persisted`: the offset recorded before it (None: none, reading began at the log's
        start). Returns the offset that may be recorded: the batch's last, or the one before
        an open hole (-1: before all)."""
        recorded = -1 if persisted is None else persisted
        previous = self._last.get(key, recorded)
        for offset in offsets:
            if offset <= previous:  # reading went back: it restarted from the recorded offset
                self._read_to(key, previous, offset)
                previous = min(recorded, offset - 1)
            hole = self._open.get(key)
            if offset > previous + 1:
                self._open[key] = previous + 1 if hole is None else min(hole, previous + 1)
            elif hole is not None and offset <= hole:  # read on from before the hole
                del self._open[key]
            previous = offset
        self._last[key] = previous
        self._read_to(key, previous, previous)
        hole = self._open.get(key)
        return previous if hole is None else hole - 1

    def _read_to(self, key: Hashable, last: int, offset: int) -> None:
        """Reading reached `offset`, having read up to `last` before: a step back is a
        reread, unfinished until it reaches `last` again."""
        if offset < last:
            self._reread_to[key] = max(self._reread_to.get(key, last), last)
        elif offset >= self._reread_to.get(key, offset):
            self._reread_to.pop(key, None)
