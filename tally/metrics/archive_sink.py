"""The metrics archive: final minutes (metric-rollups-1m) → Parquet day files, compacted once
a day is settled, days older than TALLY_ARCHIVE_KEEP dropped hourly by the leader
(tally.runtime.archive_sink)."""

from __future__ import annotations

from tally.archive.store import final_minute
from tally.metrics.tables import archive, rollups_1m
from tally.runtime.archive_sink import ArchiveSink, run_archive_sink

#: The most final server-minutes one flush holds (one server-minute = a row per metric).
ARCHIVE_FLUSH_EVENTS = 5_000

minutes_sink = ArchiveSink(
    "metrics", rollups_1m, archive, final_minute, lambda minute: int(minute[2])
)


run_archive_sink(minutes_sink, __name__, ARCHIVE_FLUSH_EVENTS)
