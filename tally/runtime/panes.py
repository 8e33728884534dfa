"""Sliding windows over panes kept in a RocksDB table: the glue every windowed pipeline shares
(the site-wide top items, each merchant's top items). The arithmetic is core.sliding's.

Per partition of a pipeline's source topic: a `SlidingTotals` in memory, its panes in a table
("<pane:012d>|<key>" → [amount, offset stamps], core.applied), its event clock and late counts
in another ("<partition>"). The window is rebuilt from them on first use after a restart or a
rebalance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from faust.types import CollectionT

from tally.core.applied import Source, Stamped, holds, stamp, value_of
from tally.core.sliding import Closing, PaneReader, SlidingTotals
from tally.core.topk import late_by_group
from tally.core.windowing import EventClock, PaneSpec
from tally.runtime.cells import read_cell, write_cell
from tally.runtime.state import PartitionStates
from tally.runtime.store import delete_below, partition_key, scan, stored_value

logger = logging.getLogger(__name__)


def pane_key(pane: int, key: str) -> bytes:
    """The cell of a (`scoped`: "<tenant>|<id>") key in a pane."""
    return f"{pane:012d}|{key}".encode()


def pane_prefix(pane: int) -> bytes:
    return f"{pane:012d}|".encode()


#: One arrival to check against the cells: (its source and offset, key, event time ms).
Arrival = tuple[tuple[Source, int], str, int]


class PaneWindows:
    """The windows of one pipeline: `panes` and `clocks` tables, partitions of `topic`;
    `awaited(partition)`: the partitions whose watermark announcements it waits for."""

    def __init__(
        self,
        name: str,
        topic: str,
        spec: PaneSpec,
        panes: CollectionT,
        clocks: CollectionT,
        awaited: Callable[[int], frozenset[int]] = lambda partition: frozenset(),
    ) -> None:
        self.name, self.spec, self.panes, self.clocks = name, spec, panes, clocks
        self.awaited = awaited
        #: partition → its window.
        self.windows: PartitionStates[SlidingTotals] = PartitionStates(topic)

    def reader(self, partition: int) -> PaneReader:
        """Reads one pane of one partition back from RocksDB: one ordered scan of its cells."""

        def read(pane: int) -> Iterator[tuple[str, int]]:
            prefix = pane_prefix(pane)
            for key, value in scan(self.panes, partition, prefix, pane_prefix(pane + 1)):
                yield key[len(prefix) :].decode(), value_of(stored_value(value))

        return read

    def saved_clock(self, partition: int) -> dict[str, Any]:
        return read_cell(self.clocks, partition_key(partition), partition) or {}

    def window_for(self, partition: int, wall_ms: int, idle: bool) -> SlidingTotals:
        """The partition's window, its clock settled at `wall_ms` (`idle`: caught up)."""
        window = self.windows.get(partition)
        if window is not None:
            window.clock.settle(wall_ms, idle)
            return window
        saved = self.saved_clock(partition)
        clock = EventClock.from_record(saved, self.awaited(partition))
        clock.settle(wall_ms, idle)
        window = SlidingTotals.restore(self.spec, clock, wall_ms, self.reader(partition))
        window.late_events = late_by_group(saved.get("late_events") or {})
        self.windows[partition] = window
        self.prune(partition, window, wall_ms)
        logger.info(
            "%s partition %s: window restored, %s keys", self.name, partition, len(window.totals)
        )
        return window

    def prune(self, partition: int, window: SlidingTotals, wall_ms: int) -> None:
        """Delete panes older than retention from local storage (the changelog expires them)."""
        watermark = window.watermark(wall_ms)
        if watermark is not None:
            self.prune_below(partition, watermark)

    def prune_below(self, partition: int, watermark_ms: int) -> None:
        """Delete the panes a window at `watermark_ms` no longer retains, locally."""
        delete_below(self.panes, partition, pane_prefix(self.spec.retained_from(watermark_ms)))

    def slide(
        self, partition: int, window: SlidingTotals, wall_ms: int, keep_top: int
    ) -> Closing | None:
        """Slide the window to the watermark (storage holds the batch by now); prune if it
        moved."""
        closing = window.advance(wall_ms, self.reader(partition), keep_top)
        if closing is not None:
            self.prune(partition, window, wall_ms)
        return closing

    def unapplied(
        self, partition: int, arrivals: Sequence[Arrival]
    ) -> tuple[dict[bytes, Stamped | None], list[int]]:
        """The pane cells the arrivals touch (each read once), and the indexes of the
        arrivals those cells do not hold yet: one delivered again (after a crash or a
        rebalance) is in its cell already."""
        cells: dict[bytes, Stamped | None] = {}
        fresh = []
        for index, ((source, offset), key, event_ms) in enumerate(arrivals):
            cell = pane_key(self.spec.pane_of(event_ms), key)
            if cell not in cells:
                cells[cell] = read_cell(self.panes, cell, partition)
            if not holds(cells[cell], offset, source):
                fresh.append(index)
        return cells, fresh

    def persist(
        self,
        partition: int,
        window: SlidingTotals,
        through: Mapping[Source, int],
        pane_deltas: Mapping[tuple[int, str], int],
        cells: dict[bytes, Stamped | None],
        offset: int | None,
        **clock_fields: Any,
    ) -> None:
        """Each touched pane cell written once, stamped with how far the batch reaches in each
        source (core.applied); then the clock with its late counts, `clock_fields` and the
        offset of the partition's own topic processed (None: keep the saved one)."""
        for (pane, key), amount in pane_deltas.items():
            cell = pane_key(pane, key)
            before = cells[cell]
            write_cell(
                self.panes, cell, stamp(value_of(before, 0) + amount, through, before), partition
            )
        saved = self.saved_clock(partition)
        clock = {
            **saved,
            **window.clock.record(),
            **clock_fields,
            "late_events": window.late_events,
            "offset": saved.get("offset") if offset is None else offset,
        }
        write_cell(self.clocks, partition_key(partition), clock, partition)
