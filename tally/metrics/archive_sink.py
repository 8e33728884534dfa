"""The metrics archive: final minutes (metric-rollups-1m) → Parquet day files, compacted once
a day is settled, days older than TALLY_ARCHIVE_KEEP dropped hourly by the leader
(tally.runtime.archive_sink)."""

from __future__ import annotations

from faust.types import StreamT

from tally.app import app, settings
from tally.archive.store import final_minute
from tally.metrics.tables import archive, rollups_1m
from tally.runtime.archive_sink import ArchiveSink
from tally.runtime.intake import each_partition, timer

#: The most final server-minutes one flush holds (one server-minute = a row per metric).
ARCHIVE_FLUSH_EVENTS = 5_000

minutes_sink = ArchiveSink(
    "metrics", rollups_1m, archive, final_minute, lambda minute: int(minute[2])
)


@app.agent(rollups_1m)
async def archive_final_minutes(stream: StreamT) -> None:
    await each_partition(
        stream,
        minutes_sink.write_partition,
        minutes_sink.states,
        within=settings.archive_flush_seconds,
        size=ARCHIVE_FLUSH_EVENTS,
    )


@timer(interval=3600.0, on_leader=True)
async def prune_archive() -> None:
    await minutes_sink.prune()
