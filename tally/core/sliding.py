"""One partition's sliding-window totals per key, kept incrementally from panes. No Faust.

Storage (the glue's RocksDB table) holds the panes: (pane, key) → amount, one write per pair
touched per batch. This class holds the window's totals per key in rank order, in memory:

    totals[key] == sum(storage[pane, key] for pane in the window)      (the invariant)

The window is the one ending with the watermark's pane: an arrival in it is added at once; an
arrival ahead of it (within the grace) is only stored, and is added when its pane enters the
window. When the window slides, leaving panes are read back from storage and subtracted and
entering ones read and added, so every accepted event counts in some window. Nothing rescans
the whole window except `restore`, after a restart or a rebalance.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tally.core.topk import GroupedTotals, Ranked, group_of
from tally.core.windowing import EventClock, PaneSpec

#: Reads one pane back from storage: its (key, amount) pairs.
PaneReader = Callable[[int], Iterable[tuple[str, int]]]
#: One event: (key, amount, event time in ms).
Arrival = tuple[str, int, int]


@dataclass
class BatchOutcome:
    """What a batch did: pane deltas to write to storage, and which events were late."""

    pane_deltas: dict[tuple[int, str], int] = field(default_factory=dict)
    late: list[int] = field(default_factory=list)  # indexes into the batch


@dataclass(frozen=True)
class Closing:
    """The final top-K of a window that has just slid away, with everything it received."""

    last_pane: int
    top: list[Ranked]


class SlidingTotals:
    """The sliding window of one partition, driven by arrivals and by the passage of time."""

    def __init__(self, spec: PaneSpec, clock: EventClock | None = None) -> None:
        self.spec = spec
        self.clock = clock or EventClock()
        self.totals = GroupedTotals()
        self.last_pane: int | None = None
        #: Late events by key group (tenant, topk.group_of).
        self.late_events: dict[str, int] = {}

    @classmethod
    def restore(
        cls, spec: PaneSpec, clock: EventClock, wall_ms: int, read_pane: PaneReader
    ) -> SlidingTotals:
        """Rebuild the window at the clock's current time from the panes in storage."""
        window = cls(spec, clock)
        window.advance(wall_ms, read_pane, keep_top=0)  # opens the window, if time is known
        return window

    def watermark(self, wall_ms: int) -> int | None:
        return self.clock.watermark(wall_ms, self.spec.grace_ms)

    def ingest(self, batch: Sequence[Arrival], wall_ms: int, own: bool = True) -> BatchOutcome:
        """Classify a batch and add it to the window as it stands (no slide yet). A batch
        another partition forwarded (`own=False`) does not move the clock (EventClock).

        Then the caller writes `pane_deltas` to storage and calls `advance`, so the window
        that slides away has received this batch first and its `Closing` top-K is complete.
        """
        outcome = BatchOutcome()
        deltas: dict[tuple[int, str], int] = defaultdict(int)
        spec, clock = self.spec, self.clock
        # Only an arrival that moves the clock forward moves the horizon.
        horizon, judged_at = self.horizon(wall_ms, own), clock.event_ms
        for index, (key, amount, event_ms) in enumerate(batch):
            if own:
                clock.observe(event_ms, wall_ms)
                if clock.event_ms != judged_at:
                    horizon, judged_at = self.horizon(wall_ms, own), clock.event_ms
            pane = spec.pane_of(event_ms)
            if horizon is not None and pane < horizon:
                outcome.late.append(index)
                group = group_of(key)
                self.late_events[group] = self.late_events.get(group, 0) + 1
                continue
            deltas[(pane, key)] += amount
        if self.last_pane is not None:  # else `advance` opens the first window from storage
            first = spec.first_pane(self.last_pane)
            for (pane, key), amount in deltas.items():
                if first <= pane <= self.last_pane:
                    self.totals.add(key, amount)
        outcome.pane_deltas = dict(deltas)
        return outcome

    def horizon(self, wall_ms: int, own: bool = True) -> int | None:
        """The first pane an arrival may still be counted in: the window's at the watermark
        (EventClock.judging), and never before the window's as it stands (the watermark can
        step back when a caught-up partition it follows gets a backlog; a pane that has left
        the window stays closed while this worker holds it)."""
        watermark = self.clock.judging(wall_ms, self.spec.grace_ms, own)
        at_watermark = None if watermark is None else self.spec.late_before(watermark)
        if self.last_pane is None:
            return at_watermark
        current = self.spec.first_pane(self.last_pane)
        return current if at_watermark is None else max(current, at_watermark)

    def advance(self, wall_ms: int, read_pane: PaneReader, keep_top: int) -> Closing | None:
        """Slide to the watermark's pane, if it moved: leaving panes are read back from storage
        and subtracted, entering ones added. Returns the window that slid away, if one did."""
        watermark = self.clock.watermark(wall_ms, self.spec.grace_ms)
        if watermark is None:
            return None
        new_last = self.spec.pane_of(watermark)
        if self.last_pane is None:  # the first window this partition has: what storage holds
            self.last_pane = new_last
            for pane in range(self.spec.first_pane(new_last), new_last + 1):
                for key, amount in read_pane(pane):
                    self.totals.add(key, amount)
            return None
        old_last = self.last_pane
        if new_last <= old_last:
            return None
        closing = Closing(old_last, self.top(keep_top))
        self.last_pane = new_last
        new_first = self.spec.first_pane(new_last)
        for pane in range(self.spec.first_pane(old_last), min(old_last, new_first - 1) + 1):
            for key, amount in read_pane(pane):
                self.totals.add(key, -amount)
        for pane in range(max(old_last + 1, new_first), new_last + 1):
            for key, amount in read_pane(pane):
                self.totals.add(key, amount)
        return closing

    def top(self, k: int) -> list[Ranked]:
        return self.totals.top(k)
