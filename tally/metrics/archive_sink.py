"""Archive glue: final minutes (metric-rollups-1m) → Parquet day files; compaction; retention.

`archive_final_minutes` takes up to ARCHIVE_FLUSH_EVENTS final server-minutes or what came in
TALLY_ARCHIVE_FLUSH_SECONDS, and writes them per partition with `Archive.append` (idempotent:
see tally.archive.store). Faust acknowledges a batch only after the body returns, so the
committed offset never passes what the files hold. Once a day is settled (an hour past its
end, by the partition's newest minute) its files are compacted into one per partition.
A write the storage refuses is retried (never dead-lettered: the minutes would be lost once
the hot tables prune them). The leader drops whole days older than TALLY_ARCHIVE_KEEP every
hour. File work runs in a thread: the worker's event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import duckdb
import pyarrow as pa
from faust.types import EventT, StreamT

from tally.app import app, settings
from tally.archive.store import (
    DAY_MS,
    DataFile,
    FinalMinute,
    day_of,
    day_start_ms,
    final_minute,
    prune_cutoff,
)
from tally.core.clock import now_ms
from tally.core.errors import ValidationError
from tally.metrics.tables import archive, rollups_1m
from tally.runtime.intake import each_partition, reject, timer
from tally.runtime.state import PartitionStates
from tally.telemetry import EVENTS

logger = logging.getLogger(__name__)

#: The most final server-minutes one flush holds (one server-minute = a row per metric).
ARCHIVE_FLUSH_EVENTS = 5_000
#: A day is compacted once its partition has seen a minute this far past the day's end
#: (later minutes of the day are rare; they land in a new file, compacted next time).
SETTLE_MS = 3_600_000
#: The longest pause between two attempts to write a batch the storage refused.
RETRY_MAX_S = 60.0
#: How far back a partition looks for days left uncompacted by an earlier owner.
LOOKBACK_DAYS = 7


@dataclass
class SinkState:
    """What this worker knows of one metric-rollups-1m partition it archives."""

    #: Days with files of this partition written and not compacted yet.
    open_days: set[date] = field(default_factory=set)
    newest_minute: int = -1


#: metric-rollups-1m partition → what this worker knows of its archive.
sinks: PartitionStates[SinkState] = PartitionStates(rollups_1m.get_topic_name())


def recent_open_days(partition: int) -> SinkState:
    """Days of the last LOOKBACK_DAYS holding several files of `partition`: work an earlier
    owner (or this worker before a restart) left to compaction."""
    today = day_of(now_ms())
    state = SinkState()
    for day in archive().days():
        if (today - day).days <= LOOKBACK_DAYS:
            files = [f for f in archive().files(day) if f.partition == partition]
            if len(files) > 1:
                state.open_days.add(day)
    return state


async def append_until_written(
    partition: int, minutes: Sequence[tuple[int, FinalMinute]]
) -> list[DataFile]:
    """`archive().append`, retried until it succeeds: the batch is acknowledged (and its minutes
    later pruned from the hot tables) only once written, so storage errors stall the sink,
    visibly, rather than lose minutes or dead-letter them. Delays double up to RETRY_MAX_S."""
    delay = 1.0
    while True:
        try:
            return await asyncio.to_thread(archive().append, partition, minutes)
        except (OSError, pa.ArrowException) as exc:
            logger.error(
                "archive: writing partition %s failed (%s: %s); retrying in %.0f s",
                partition,
                type(exc).__name__,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


async def archive_partition(events: Sequence[EventT]) -> None:
    partition = events[0].message.partition
    minutes = []
    for event in events:
        try:
            minutes.append((event.message.offset, final_minute(event.value)))
        except ValidationError as exc:
            await reject(event, exc, stage="validate")
    state = sinks.get(partition)
    if state is None:
        state = sinks[partition] = await asyncio.to_thread(recent_open_days, partition)
    written = await append_until_written(partition, minutes)
    state.open_days.update(file.day for file in written)
    if minutes:
        state.newest_minute = max(state.newest_minute, *(m[2] for _, m in minutes))
    for day in sorted(state.open_days):
        if day_start_ms(day) + DAY_MS + SETTLE_MS <= state.newest_minute:
            try:
                merged = await asyncio.to_thread(archive().compact, day, partition)
            except (duckdb.Error, OSError):  # the files are written: compaction can wait
                logger.exception("archive: compacting %s partition %s failed", day, partition)
                break
            if merged is not None:
                logger.info(
                    "archive: compacted %s partition %s into %s", day, partition, merged.name
                )
            state.open_days.discard(day)
    EVENTS.labels(rollups_1m.get_topic_name(), "archived").inc(len(minutes))


@app.agent(rollups_1m)
async def archive_final_minutes(stream: StreamT) -> None:
    await each_partition(
        stream,
        archive_partition,
        sinks,
        within=settings.archive_flush_seconds,
        size=ARCHIVE_FLUSH_EVENTS,
    )


@timer(interval=3600.0, on_leader=True)
async def prune_archive() -> None:
    cutoff = prune_cutoff(now_ms(), settings.archive_keep)
    dropped = await asyncio.to_thread(archive().prune, cutoff)
    if dropped:
        logger.info("archive: dropped %d days before %s", len(dropped), cutoff)
