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
        self._kept = kept
        self._lock = threading.Lock()

    def fetched(self, key: Hashable, offsets: Iterable[int]) -> None:
        """One fetch's offsets of a partition, in the order fetched. A jump forward from the
        previous one (of this fetch or the last) to an offset never fetched is a gap; a step
        back is a seek (a reread), after which fetching goes on from there (the gaps it
        crosses again are known already)."""
        with self._lock:
            last = self._last.get(key)
            first, highest = self._span.get(key, (None, None))
            for offset in offsets:
                if last is not None and offset > last + 1 and (highest is None or offset > highest):
                    gaps = self._gaps.setdefault(key, deque(maxlen=self._kept))
                    if len(gaps) == self._kept:  # the oldest goes: known from its end on
                        self._floor[key] = gaps[0][1]
                    gaps.append((last + 1, offset))
                last = offset
                first = offset if first is None else min(first, offset)
                highest = offset if highest is None else max(highest, offset)
            if last is not None:
                self._last[key] = last
            if first is not None and highest is not None:
                self._span[key] = (first, highest)

    def forget(self, key: Hashable) -> None:
        """The partition left this worker: what is fetched when it comes back starts over."""
        with self._lock:
            self._last.pop(key, None)
            self._gaps.pop(key, None)
            self._span.pop(key, None)
            self._floor.pop(key, None)

    def holds(self, key: Hashable) -> Callable[[int], bool]:
        """Whether an offset of the partition is known to be a message in the log: fetched
        (between the first and the highest offsets fetched, in no gap). False where the
        fetches do not tell (before the first, after the highest, before a gap no longer
        kept)."""

        def held(offset: int) -> bool:
            with self._lock:
                first, highest = self._span.get(key, (0, -1))
                first = max(first, self._floor.get(key, first))
                return first <= offset <= highest and not self._lacked(key, offset)

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
