"""Which offsets a partition's log itself lacks, told apart from offsets a consumer dropped.

A hole in what a stream delivers (core.applied.Unread) is either an offset the log has no
message at (a transaction marker, a compacted record), to be passed, or a message fetched and
then dropped before delivery, to be read again. Faust records every jump in the offsets it
*delivers* as a gap, so its own drops (a fetch cut short by a rebalance, a partition paused
mid-fetch) look like gaps in the log, and passing them loses the dropped messages (seen in the
chaos soak: two purchases, offsets 2101-2102 of a partition, missing from every answer). Here
the judge is what the client *fetched*, before anything is dropped: an offset skipped between
two consecutive fetched records of a partition is not in the log. No Faust in here.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable

#: Gaps kept per partition: a hole is judged within moments of its fetch, so the recent ones
#: are all that is ever asked about (a transactional producer leaves one per transaction).
KEPT_GAPS = 10_000


class LogGaps:
    """Gaps seen in fetched offsets, per partition. Fed by the consumer's fetching thread
    and read by the processing one, hence the lock."""

    def __init__(self, kept: int = KEPT_GAPS) -> None:
        self._last: dict[Hashable, int] = {}
        self._gaps: dict[Hashable, deque[tuple[int, int]]] = {}
        #: The stretch fetched: (first, highest) offsets.
        self._span: dict[Hashable, tuple[int, int]] = {}
        #: Where the gaps kept begin (the end of the last one dropped for room).
        self._floor: dict[Hashable, int] = {}
        #: Where reading began after a seek back before the stretch: part of it once joined.
        self._below: dict[Hashable, int] = {}
        self._kept = kept
        self._lock = threading.Lock()

    def fetched(self, key: Hashable, offsets: Iterable[int]) -> None:
        """One fetch's offsets of a partition, in the order fetched. A jump forward from the
        previous one (of this fetch or the last) is a gap where it crosses offsets never
        fetched; a step back is a seek (a reread), after which fetching goes on from there
        (the gaps it crosses again are known already)."""
        with self._lock:
            last = self._last.get(key)
            first, highest = self._span.get(key, (None, None))
            below = self._below.get(key)
            for offset in offsets:
                if first is None or highest is None:
                    first = highest = offset
                else:
                    if last is not None and offset > last + 1:
                        for start, end in unfetched(last + 1, offset, first, highest):
                            self._keep_gap(key, start, end)
                    if last is not None and offset <= last:  # a seek back
                        below = offset if offset < first else None
                    if below is not None and offset >= first:  # read up to the known stretch
                        first, below = below, None
                    highest = max(highest, offset)
                last = offset
            if last is not None:
                self._last[key] = last
            if first is not None and highest is not None:
                self._span[key] = (first, highest)
            if below is None:
                self._below.pop(key, None)
            else:
                self._below[key] = below

    def _keep_gap(self, key: Hashable, start: int, end: int) -> None:
        gaps = self._gaps.setdefault(key, deque(maxlen=self._kept))
        if len(gaps) == self._kept:  # the oldest goes: what it covered is unknown again
            self._floor[key] = max(self._floor.get(key, gaps[0][1]), gaps[0][1])
        gaps.append((start, end))

    def forget(self, key: Hashable) -> None:
        """The partition left this worker: what is fetched when it comes back starts over."""
        with self._lock:
            self._last.pop(key, None)
            self._gaps.pop(key, None)
            self._span.pop(key, None)
            self._floor.pop(key, None)
            self._below.pop(key, None)

    def first(self, key: Hashable) -> int | None:
        """The lowest offset of the stretch fetched (None: nothing fetched since the partition
        came, or a reread back before the stretch has not joined it yet)."""
        with self._lock:
            span = self._span.get(key)
            return None if span is None or key in self._below else span[0]

    def holds(self, key: Hashable) -> Callable[[int, int], bool]:
        """Whether any offset from `start` up to `stop` (excluded) is known to be a message in
        the partition's log: fetched (between the first and the highest offsets fetched, in no
        gap). False where the fetches do not tell (before the first, after the highest,
        before a gap no longer kept)."""

        def held(start: int, stop: int) -> bool:
            with self._lock:
                first, highest = self._span.get(key, (0, -1))
                low = max(start, first, self._floor.get(key, first))
                high = min(stop, highest + 1)
                crossing = [g for g in self._gaps.get(key, ()) if g[0] < high and g[1] > low]
            for gap_start, gap_end in sorted(crossing):
                if gap_start > low:
                    break  # `low` is fetched, in no gap
                low = max(low, gap_end)
            return low < high

        return held

    def lacks(self, key: Hashable) -> Callable[[int], bool]:
        """Whether an offset of the partition is one the log has no message at (as far as
        the fetches so far show). Asked only where a batch skips an offset (a hole or a
        marker): a scan, newest gaps first."""

        def lacked(offset: int) -> bool:
            with self._lock:
                return self._lacked(key, offset)

        return lacked

    def _lacked(self, key: Hashable, offset: int) -> bool:
        gaps = self._gaps.get(key, ())
        return any(start <= offset < end for start, end in reversed(gaps))


def unfetched(
    start: int, end: int, first: int | None, highest: int | None
) -> list[tuple[int, int]]:
    """The parts of offsets `start` up to `end` (excluded) outside the stretch fetched so far,
    `first` to `highest` (None: nothing fetched)."""
    if first is None or highest is None:
        return [(start, end)]
    parts = [(start, min(end, first))] if start < first else []
    if end > highest + 1:
        parts.append((max(start, highest + 1), end))
    return parts
