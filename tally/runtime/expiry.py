"""Keyed state with a time to live by event time (the arithmetic is core.ttl's), on two tables
of the same partitions as the pipeline's source topic:

    state  "<key>"                   → {"last_ms": newest event time, "value": the pipeline's}
    index  "<expires at:013d>|<key>" → 1, one entry per live key
           CLOCK_KEY                 → the partition's event clock (core.windowing.EventClock),
                                       "offset" processed through, "applied" (below)

The clock is the partition's watermark (core.windowing.EventClock): the slowest announced
watermark of the partitions its events are re-keyed from (a session's views), so a backlog
read faster on one partition than on another expires nothing early and finds nothing stale
that was not.

The clock record also keeps how far the partition has processed each source partition
(`applied`: core.applied's stamp, the highest origin offset per source, taken or set aside).
A message delivered again (by a rebalance, or by a forwarder that died before committing) is
judged again by a clock that may have moved on since: stale now, though its first delivery
was taken. Its origin tells a repeat from a first delivery (`core.applied.holds`, which
assumes a source partition's messages arrive in its order, as forwards do): a repeat is
skipped, not set aside again. Only the letter depends on it: a stale message is never
processed either way (its key would be expired by the same clock), and a fresh one is
processed again, which the pipelines make harmless. A batch's letters are acknowledged
before its record is written, so none is lost to a crash in between.

Reads treat a key past its expiry as gone at once; a bounded sweep on the partition's active
worker deletes it later through the cell cache, whose tombstones remove it from the changelog,
so a standby and a worker restored from the changelog lose it too. The clock is stored with
the index, so a restarted or failed-over worker goes on expiring from where the other stopped.

Messages have a time to live too: one too old to act on is set aside (`set_aside_stale`),
counted and kept on late-events, never processed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from aiokafka.structs import RecordMetadata
from faust.types import CollectionT, EventT, TopicT

from tally.app import app
from tally.core.applied import Stamped, Through, stamp
from tally.core.clock import now_ms
from tally.core.errors import TallyError
from tally.core.ttl import Sweep, TimeToLive, due_range, retouch, sweep
from tally.core.windowing import EventClock
from tally.runtime.cells import batch_done, delete_cells, has_cell, read_cell, write_cell
from tally.runtime.intake import PartitionWork, caught_up, reject
from tally.runtime.routing import hear_all
from tally.runtime.state import StoredClocks
from tally.runtime.store import scan
from tally.runtime.topics import late_events
from tally.telemetry import EXPIRED

logger = logging.getLogger(__name__)

#: Where the index table keeps its partition's clock: after every entry (they start with digits).
CLOCK_KEY = b"~clock"
#: Index entries one sweep step reads at most, before the loop serves others again.
SWEEP_BUDGET = 500


class StaleEvent(TallyError):
    """A message older than its pipeline's time to live when it arrived: not processed."""

    rule = "stale"


class ExpiringState:
    """The `state` and `index` tables of one pipeline's keys living `ttl` past their newest
    event, partitioned as `topic`, whose messages `reader` (an agent's work) processes;
    `awaited(partition)`: the partitions whose announced watermarks its clock waits for."""

    def __init__(
        self,
        topic: TopicT,
        state: CollectionT,
        index: CollectionT,
        ttl: TimeToLive,
        reader: PartitionWork,
        awaited: Callable[[int], frozenset[int]],
    ) -> None:
        self.topic, self.state, self.index, self.ttl, self.reader = topic, state, index, ttl, reader
        self.clocks = StoredClocks(
            topic.get_topic_name(), lambda p: read_cell(index, CLOCK_KEY, p), awaited
        )

    def clock(self, partition: int) -> EventClock:
        """The partition's event clock (loaded from the index table on first use)."""
        return self.clocks.clock(partition)

    def now(self, partition: int, wall_ms: int) -> int | None:
        """The partition's watermark: what expires keys (None: none yet, nothing expires)."""
        return self.clock(partition).watermark(wall_ms, 0)

    def get(self, key: bytes, partition: int, wall_ms: int) -> Any:
        """The key's value, None when it has none or its time to live has passed."""
        stored = self.live(key, partition, wall_ms)
        return None if stored is None else stored["value"]

    def live(self, key: bytes, partition: int, wall_ms: int) -> dict[str, Any] | None:
        """The key's stored record ({"last_ms", "value"}), None when it has none or its time
        to live has passed (swept or not: an expired key reads as gone the moment its
        partition's clock passes it)."""
        stored: dict[str, Any] | None = read_cell(self.state, key, partition)
        if stored is None:
            return None
        now = self.now(partition, wall_ms)
        return None if now is not None and self.ttl.expired(stored["last_ms"], now) else stored

    def stale(self, event_ms: int, partition: int, wall_ms: int) -> bool:
        """Whether an event at `event_ms` would be expired on arrival by the partition's
        clock (its state would be gone before it is written)."""
        now = self.now(partition, wall_ms)
        return now is not None and self.ttl.expired(event_ms, now)

    def hear(self, partition: int, events: Sequence[EventT]) -> None:
        """The watermarks announced among `events` (after the batch they follow)."""
        hear_all(self.clock(partition), events)

    def put(self, key: bytes, value: Any, event_ms: int, partition: int) -> None:
        """Set the key's value, touched by an event at `event_ms`: it lives `ttl` past its
        newest event (an older event does not shorten its life)."""
        stored = read_cell(self.state, key, partition)
        touch = retouch(self.ttl, key, None if stored is None else stored["last_ms"], event_ms)
        write_cell(self.state, key, {"last_ms": touch.last_ms, "value": value}, partition)
        if touch.drop is not None:
            delete_cells(self.index, [touch.drop], partition)
        if touch.write is not None:
            write_cell(self.index, touch.write, 1, partition)

    def applied(self, partition: int) -> Stamped | None:
        """How far the partition has processed each source (read once per batch, checked
        with `core.applied.holds`)."""
        saved = read_cell(self.index, CLOCK_KEY, partition) or {}
        applied: Stamped | None = saved.get("applied")
        return applied

    def save_clock(
        self, partition: int, offset: int | None, through: Through | None = None
    ) -> None:
        """Store the clock; the offset of the source topic processed through (None: keep
        the stored one), what tells the sweep whether the partition is caught up; and
        `through`, how far a batch reached in each source (core.applied.reach), merged into
        `applied`."""
        saved = read_cell(self.index, CLOCK_KEY, partition) or {}
        applied = saved.get("applied")
        record = {
            **self.clock(partition).record(),
            "offset": saved.get("offset") if offset is None else offset,
            "applied": stamp(None, through, applied) if through else applied,
        }
        write_cell(self.index, CLOCK_KEY, record, partition)

    def sweep(
        self,
        partition: int,
        wall_ms: int,
        idle: bool,
        budget: int = SWEEP_BUDGET,
        after: bytes = b"",
    ) -> Sweep:
        """Delete up to `budget` due index entries from `after` on, and the expired keys they
        name. The clock runs on with the wall clock only while the partition is `idle`
        (caught up): with a backlog, the events waiting will move it instead."""
        self.clock(partition).settle(wall_ms, idle)
        now = self.now(partition, wall_ms)
        if now is None:
            return Sweep()

        def expiry_of(key: bytes) -> int | None:
            stored = read_cell(self.state, key, partition)
            return None if stored is None else self.ttl.expires_at(stored["last_ms"])

        found = sweep(self.due(partition, now, after), expiry_of, now, budget)
        delete_cells(self.state, found.expired, partition)
        delete_cells(self.index, found.dropped, partition)
        if found.dropped:
            self.save_clock(partition, None)
        EXPIRED.labels(self.state.name).inc(len(found.expired))
        return found

    def due(self, partition: int, now: int, after: bytes) -> Iterator[bytes]:
        start, stop = due_range(now)
        return (entry for entry, _ in scan(self.index, partition, max(start, after), stop))

    def owned(self) -> list[int]:
        """The partitions this worker holds as active that have had an event."""
        name = self.topic.get_topic_name()
        return sorted(
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == name
            and (tp.partition in self.clocks or has_cell(self.index, CLOCK_KEY, tp.partition))
        )

    async def sweep_owned(self) -> None:
        """Sweep every owned partition to its clock, a budget at a time, yielding the loop
        between budgets (a partition revoked meanwhile is left to its new owner). Each step
        starts after the last entry the one before swept (its deletions wait in the cell
        cache, written out when it is full, as an agent's batch's are)."""
        if not app.ready:
            return
        for partition in self.owned():
            after = b""
            while partition in self.owned():
                saved = read_cell(self.index, CLOCK_KEY, partition) or {}
                idle = caught_up(self.topic, partition, saved.get("offset"), self.reader)
                found = self.sweep(partition, now_ms(), idle is True, after=after)
                if not found.more:
                    break
                after = found.dropped[-1] + b"\x00"
                await batch_done()
                await asyncio.sleep(0)  # batch_done returns at once unless the cache is full


async def set_aside_stale(
    event: EventT,
    why: str,
    *,
    value: bytes | None = None,
    key: bytes | None = None,
    tenant: str = "",
    origin: tuple[str, int, int] | None = None,
) -> Awaitable[RecordMetadata]:
    """A message (or `value`: one record of it, first written at `origin`) too old to act
    on: to `late-events` with the reason and its origin, counted as stale
    (tally_events_total{outcome="stale"}), never processed. Returns the letter's delivery."""
    return await reject(
        event,
        StaleEvent(why),
        stage="stale",
        value=value,
        key=key,
        to=late_events,
        tenant=tenant,
        origin=origin,
    )
