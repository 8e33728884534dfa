"""The merchants' archive: final merchant-hours (merchant-hours-1h) → Parquet day files,
compacted once a day is settled, days older than TALLY_ARCHIVE_KEEP dropped hourly by the
leader (tally.runtime.archive_sink)."""

from __future__ import annotations

from faust.types import StreamT

from tally.app import app, settings
from tally.archive.merchant_hours import final_hour
from tally.merchants.tables import final_hours, merchant_archive
from tally.runtime.archive_sink import ArchiveSink
from tally.runtime.intake import each_partition, timer

#: The most final merchant-hours one flush holds.
ARCHIVE_FLUSH_HOURS = 20_000

hours_sink = ArchiveSink("merchants", final_hours, merchant_archive, final_hour, lambda h: h[1])


@app.agent(final_hours)
async def archive_final_hours(stream: StreamT) -> None:
    await each_partition(
        stream,
        hours_sink.write_partition,
        hours_sink.states,
        within=settings.archive_flush_seconds,
        size=ARCHIVE_FLUSH_HOURS,
    )


@timer(interval=3600.0, on_leader=True)
async def prune_merchant_archive() -> None:
    await hours_sink.prune()
