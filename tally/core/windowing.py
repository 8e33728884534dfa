"""Pane arithmetic and event time: plain functions and classes, no Faust.

A sliding window of `window_panes` panes of `pane_ms` each (24 panes of 1 h for sales) is the sum of
its panes; it slides one pane at a time. Time is event time, per partition:

- `EventClock.now` follows the newest event time, and while the partition is caught up with its
  topic (idle) it advances at wall-clock speed, so windows slide with no traffic (freshness);
  while the partition has a backlog it does not, so a slow, paused or restarted worker never
  makes its own backlog late; a replay of old data, faster than real time, still runs on the
  data's own time. It never goes back.
- The watermark trails the clock by `grace_ms`. An event whose pane is older than the window
  ending at the watermark's pane can no longer count anywhere: it is *late*.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PaneSpec:
    """How a window is cut into panes (validated, immutable)."""

    pane_ms: int
    window_panes: int
    grace_ms: int = 0
    #: Panes kept after they leave the window, for queries of past windows (`?at=`).
    extra_retained_panes: int = 0

    def __post_init__(self) -> None:
        if self.pane_ms <= 0 or self.window_panes <= 0:
            raise ValueError("pane_ms and window_panes must be positive")
        if self.grace_ms < 0 or self.extra_retained_panes < 0:
            raise ValueError("grace_ms and extra_retained_panes must be >= 0")

    def pane_of(self, ts_ms: int) -> int:
        return ts_ms // self.pane_ms

    def first_pane(self, last_pane: int) -> int:
        """The oldest pane of the window whose newest pane is `last_pane`."""
        return last_pane - self.window_panes + 1

    def start_ms(self, pane: int) -> int:
        return pane * self.pane_ms

    def late_before(self, watermark_ms: int) -> int:
        """Events in panes below this are late: the window at the watermark excludes them."""
        return self.first_pane(self.pane_of(watermark_ms))

    def retained_from(self, watermark_ms: int) -> int:
        """The oldest pane still kept in storage; older panes are deleted."""
        return self.late_before(watermark_ms) - self.extra_retained_panes


@dataclass
class EventClock:
    """Event time of one partition: the newest event time, advancing at wall speed between
    arrivals, never going back and never ahead of the wall clock (an event stamped in the
    future moves it to now, not beyond: one fast clock must not make everyone else late).
    `event_ms` was the clock's reading at wall time `wall_ms`."""

    event_ms: int | None = None
    wall_ms: int = 0

    def observe(self, event_ms: int, wall_ms: int) -> None:
        current = self.now(wall_ms)
        event_ms = min(event_ms, wall_ms)
        self.event_ms = event_ms if current is None else max(current, event_ms)
        self.wall_ms = max(self.wall_ms, wall_ms)

    def settle(self, wall_ms: int, idle: bool) -> None:
        """Fix the reading at `wall_ms`. The wall time since the last reading passes as event
        time only if the partition was `idle` (caught up); with a backlog, the queued events
        will move the clock instead. Readers call this before reading, so between settles the
        clock runs ahead of the data by at most one settle interval."""
        if self.event_ms is not None and idle:
            self.event_ms = self.now(wall_ms)
        self.wall_ms = max(self.wall_ms, wall_ms)

    def now(self, wall_ms: int) -> int | None:
        if self.event_ms is None:
            return None
        return self.event_ms + max(0, wall_ms - self.wall_ms)

    def watermark(self, wall_ms: int, grace_ms: int) -> int | None:
        now = self.now(wall_ms)
        return None if now is None else now - grace_ms

    def record(self) -> dict[str, Any]:
        """The stored form (inside a partition's clock record)."""
        return {"event_ms": self.event_ms, "wall_ms": self.wall_ms}

    @classmethod
    def from_record(cls, saved: Mapping[str, Any] | None) -> EventClock:
        saved = saved or {}
        return cls(saved.get("event_ms"), saved.get("wall_ms", 0))
