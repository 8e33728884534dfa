"""The event clock of each partition a stateless stage re-keys from (purchases by merchant,
page views by session), and its announcements to every partition of the topic it re-keys
into, so their watermarks follow the slowest source partition (runtime.routing.announce).

A batch's times move its clock only once the broker has acknowledged its records
(routing.Forwarded): the idle timer may announce at any await in between, and neither an
announcement nor the stored clock may cover records not sent yet (the merchants e2e once lost
hours after a SIGKILL that way).
"""

from __future__ import annotations

from faust.types import CollectionT, TopicT

from tally.app import app
from tally.core.clock import now_ms
from tally.core.windowing import EventClock
from tally.runtime.cells import read_cell, write_cell
from tally.runtime.intake import PartitionWork, caught_up
from tally.runtime.routing import Forwarded, announce
from tally.runtime.state import StoredClocks
from tally.runtime.store import partition_key


class RekeyingClocks:
    """Clocks of `source`'s partitions, kept in `table` ("<partition>"), announced to every
    partition of `to` with `grace_ms`; `reader` is the stage's work (what caught up means)."""

    def __init__(
        self,
        source: TopicT,
        table: CollectionT,
        to: TopicT,
        reader: PartitionWork,
        grace_ms: int = 0,
    ) -> None:
        self.source, self.table, self.to, self.reader = source, table, to, reader
        self.grace_ms = grace_ms
        self.clocks = StoredClocks(
            source.get_topic_name(), lambda p: read_cell(table, partition_key(p), p)
        )

    def clock(self, partition: int) -> EventClock:
        return self.clocks.clock(partition)

    async def handed_over(self, partition: int, wall_ms: int, handed: Forwarded) -> None:
        """A batch's records are handed over: once the broker has them all, the clock takes
        their times, is kept, and announced."""
        await handed.acknowledged()
        clock = self.clock(partition)
        clock.settle(wall_ms, idle=False)
        handed.move(clock, wall_ms)
        write_cell(self.table, partition_key(partition), clock.record(), partition)
        watermark = clock.own_watermark(wall_ms, self.grace_ms)
        await announce(self.source, partition, watermark, False, to=self.to)

    async def announce_idle(self) -> None:
        """Every owned partition's watermark, busy or idle (a caught-up one follows the wall
        clock and holds no one back): what the stage re-keys into moves on with no traffic."""
        if not app.ready:
            return
        wall = now_ms()
        marks = []
        for tp in app.assignor.assigned_actives():  # no await in here: ownership cannot change
            if tp.topic == self.source.get_topic_name():
                idle = caught_up(self.source, tp.partition, None, self.reader)
                if idle is not None:
                    clock = self.clock(tp.partition)
                    clock.settle(wall, idle)
                    marks.append((tp.partition, clock.own_watermark(wall, self.grace_ms), idle))
        for partition, watermark, idle in marks:
            await announce(self.source, partition, watermark, idle, to=self.to)
