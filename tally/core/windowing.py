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
from dataclasses import dataclass, field
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


#: What a partition with no message of its own announces: it holds no one back.
UNBOUNDED = 2**62


@dataclass
class EventClock:
    """Event time of one partition: the newest event time of its own messages, advancing at
    wall speed between arrivals, never going back and never ahead of the wall clock (an event
    stamped in the future moves it to now, not beyond: one fast clock must not make everyone
    else late). `event_ms` was the clock's reading at wall time `wall_ms`.

    Messages other partitions forward to this one (runtime.routing) travel one hop more and
    may be far behind its own when a backlog is read: they do not move the clock; instead
    every other partition announces its own watermark (`upstream`; `UNBOUNDED` while it has
    no message of its own), and this partition's watermark never passes the slowest of them,
    so nothing forwarded is late for the hop. An announcer that is caught up (`resting`)
    holds no one back: its clock follows the wall clock, as this one's does, so what it
    forwards next is no older than what this partition reads itself; its mark only stands in
    when this partition has no clock of its own and no busy announcer. Until each of the
    `awaited` partitions has announced once, there is no watermark (as a stream processor's
    input channel starts)."""

    event_ms: int | None = None
    wall_ms: int = 0
    #: Partition → the watermark it last announced.
    upstream: dict[int, int] = field(default_factory=dict)
    #: The announcers that were caught up when they last announced.
    resting: set[int] = field(default_factory=set)
    #: The partitions that may forward to this one (set by the glue; not stored).
    awaited: frozenset[int] = field(default=frozenset(), compare=False)

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

    def own_watermark(self, wall_ms: int, grace_ms: int) -> int | None:
        """The watermark of this partition's own messages: what it announces to the others."""
        now = self.now(wall_ms)
        return None if now is None else now - grace_ms

    def watermark(self, wall_ms: int, grace_ms: int) -> int | None:
        """The partition's watermark: its own, held back to the slowest busy other
        partition's (None until every awaited partition announced, and one of them or this
        one has messages of its own)."""
        if not self.awaited <= self.upstream.keys():
            return None
        real = {p: mark for p, mark in self.upstream.items() if mark < UNBOUNDED}
        marks = [mark for p, mark in real.items() if p not in self.resting]
        own = self.own_watermark(wall_ms, grace_ms)
        if own is not None:
            marks.append(own)
        if marks:
            return min(marks)
        return max(real.values()) if real else None

    def judging(self, wall_ms: int, grace_ms: int, own: bool) -> int | None:
        """The watermark an arrival is judged late by: `watermark`; for the partition's own
        messages, its own until every awaited partition has announced (an old event must not
        be taken into a pane that no window will read, and go nowhere), and none before its
        first: how far other partitions have read says nothing of this one's events (a
        partition starting after the others would find its first messages late by their
        marks, and, late arrivals moving no clock, every message up to those marks). A
        forwarded message waits for the announcements: its source's come after it (known
        limitation)."""
        if own and self.event_ms is None:
            return None
        gated = self.watermark(wall_ms, grace_ms)
        return gated if gated is not None or not own else self.own_watermark(wall_ms, grace_ms)

    def hear(self, partition: int, watermark_ms: int, resting: bool = False) -> None:
        """Another partition's announced watermark (a real one never goes back)."""
        old = self.upstream.get(partition, UNBOUNDED)
        self.upstream[partition] = (
            max(old, watermark_ms) if old < UNBOUNDED and watermark_ms < UNBOUNDED else watermark_ms
        )
        if resting:
            self.resting.add(partition)
        else:
            self.resting.discard(partition)

    def record(self) -> dict[str, Any]:
        """The stored form (inside a partition's clock record). Announcements are kept: after
        a restart or a failover they may be old, which only holds the watermark back until
        newer ones come, while none would leave the partition without one."""
        upstream = {str(partition): mark for partition, mark in self.upstream.items()}
        return {
            "event_ms": self.event_ms,
            "wall_ms": self.wall_ms,
            "upstream": upstream,
            "resting": sorted(self.resting),
        }

    @classmethod
    def from_record(
        cls, saved: Mapping[str, Any] | None, awaited: frozenset[int] = frozenset()
    ) -> EventClock:
        saved = saved or {}
        upstream = {
            int(partition): int(mark) for partition, mark in saved.get("upstream", {}).items()
        }
        resting = {int(partition) for partition in saved.get("resting", [])}
        return cls(saved.get("event_ms"), saved.get("wall_ms", 0), upstream, resting, awaited)
