"""Archive glue every pipeline with a cold tier shares: final rows from a topic → Parquet day
files (tally.archive.store), compaction, retention.

A sink takes up to `size` final items or what came in TALLY_ARCHIVE_FLUSH_SECONDS, and writes
them per partition with `Archive.append` (idempotent: see tally.archive.store). Faust
acknowledges a batch only after the body returns, so the committed offset never passes what
the files hold. Once a day is settled (an hour past its end, by the partition's newest item)
its files are compacted into one per partition. A write the storage refuses is retried (never
dead-lettered: the items would be lost once the hot tables prune them). File work runs in a
thread: the worker's event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import duckdb
import pyarrow as pa
from faust.types import EventT, StreamT, TopicT

from tally.app import app, settings
from tally.archive.store import DAY_MS, Archive, DataFile, day_of, day_start_ms, prune_cutoff
from tally.core.clock import now_ms
from tally.core.errors import ValidationError
from tally.runtime.intake import each_partition, reject, timer
from tally.runtime.state import PartitionStates
from tally.telemetry import EVENTS

logger = logging.getLogger(__name__)

#: A day is compacted once its partition has seen an item this far past the day's end
#: (later items of the day are rare; they land in a new file, compacted next time).
SETTLE_MS = 3_600_000
#: The longest pause between two attempts to write a batch the storage refused.
RETRY_MAX_S = 60.0
#: How far back a partition looks for days left uncompacted by an earlier owner.
LOOKBACK_DAYS = 7


@dataclass
class SinkState:
    """What this worker knows of one partition it archives."""

    #: Days with files of this partition written and not compacted yet.
    open_days: set[date] = field(default_factory=set)
    newest_ms: int = -1


class ArchiveSink:
    """Final items of `topic` into `archive()`: `parse` checks a message's value into an item
    (ValidationError: dead-lettered), `time_of` says an item's time."""

    def __init__(
        self,
        name: str,
        topic: TopicT,
        archive: Callable[[], Archive],
        parse: Callable[[Any], Any],
        time_of: Callable[[Any], int],
    ) -> None:
        self.name, self.topic, self.archive = name, topic, archive
        self.parse, self.time_of = parse, time_of
        #: partition → what this worker knows of its files.
        self.states: PartitionStates[SinkState] = PartitionStates(topic.get_topic_name())

    def recent_open_days(self, partition: int) -> SinkState:
        """Days of the last LOOKBACK_DAYS holding several files of `partition`: work an
        earlier owner (or this worker before a restart) left to compaction."""
        today = day_of(now_ms())
        state = SinkState()
        for day in self.archive().days():
            if (today - day).days <= LOOKBACK_DAYS:
                files = [f for f in self.archive().files(day) if f.partition == partition]
                if len(files) > 1:
                    state.open_days.add(day)
        return state

    async def append_until_written(
        self, partition: int, items: Sequence[tuple[int, Any]]
    ) -> list[DataFile]:
        """`archive().append`, retried until it succeeds: the batch is acknowledged (and its
        items later pruned from the hot tables) only once written, so storage errors stall
        the sink, visibly, rather than lose items or dead-letter them. Delays double up to
        RETRY_MAX_S."""
        delay = 1.0
        while True:
            try:
                return await asyncio.to_thread(self.archive().append, partition, items)
            except (OSError, pa.ArrowException) as exc:
                logger.error(
                    "%s archive: writing partition %s failed (%s: %s); retrying in %.0f s",
                    self.name,
                    partition,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def write_partition(self, events: Sequence[EventT]) -> None:
        """One partition's share of a batch: written, then settled days compacted."""
        partition = events[0].message.partition
        items = []
        for event in events:
            try:
                items.append((event.message.offset, self.parse(event.value)))
            except ValidationError as exc:
                await reject(event, exc, stage="validate")
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = await asyncio.to_thread(
                self.recent_open_days, partition
            )
        written = await self.append_until_written(partition, items)
        state.open_days.update(file.day for file in written)
        if items:
            state.newest_ms = max(state.newest_ms, *(self.time_of(item) for _, item in items))
        for day in sorted(state.open_days):
            if day_start_ms(day) + DAY_MS + SETTLE_MS <= state.newest_ms:
                try:
                    merged = await asyncio.to_thread(self.archive().compact, day, partition)
                except (duckdb.Error, OSError):  # the files are written: compaction can wait
                    logger.exception(
                        "%s archive: compacting %s partition %s failed", self.name, day, partition
                    )
                    break
                if merged is not None:
                    logger.info(
                        "%s archive: compacted %s partition %s into %s",
                        self.name,
                        day,
                        partition,
                        merged.name,
                    )
                state.open_days.discard(day)
        EVENTS.labels(self.topic.get_topic_name(), "archived").inc(len(items))

    async def prune(self) -> None:
        """Drop whole days older than TALLY_ARCHIVE_KEEP."""
        cutoff = prune_cutoff(now_ms(), settings.archive_keep)
        dropped = await asyncio.to_thread(self.archive().prune, cutoff)
        if dropped:
            logger.info("%s archive: dropped %d days before %s", self.name, len(dropped), cutoff)


def run_archive_sink(sink: ArchiveSink, module: str, size: int) -> None:
    """Register, as `module`'s (the pipeline module calling this: Faust knows an agent by its
    name), the agent writing `sink`'s topic to its archive, `size` items a flush at most (or
    what came in TALLY_ARCHIVE_FLUSH_SECONDS), and the leader's hourly prune."""

    async def archive_items(stream: StreamT) -> None:
        await each_partition(
            stream,
            sink.write_partition,
            sink.states,
            within=settings.archive_flush_seconds,
            size=size,
        )

    async def prune_archive() -> None:
        await sink.prune()

    prune_archive.__name__ = f"prune_{sink.name.replace(' ', '_')}_archive"
    for fun in (archive_items, prune_archive):
        fun.__module__ = module
    app.agent(sink.topic, name=f"{module}.archive_items")(archive_items)
    timer(interval=3600.0, on_leader=True)(prune_archive)
