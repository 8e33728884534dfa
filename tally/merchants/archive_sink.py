"""The merchants' archive: final merchant-hours (merchant-hours-1h) → Parquet day files,
compacted once a day is settled, days older than TALLY_ARCHIVE_KEEP dropped hourly by the
leader (tally.runtime.archive_sink)."""

from __future__ import annotations

from tally.archive.merchant_hours import final_hour
from tally.merchants.tables import final_hours, merchant_archive
from tally.runtime.archive_sink import ArchiveSink, run_archive_sink

#: The most final merchant-hours one flush holds.
ARCHIVE_FLUSH_HOURS = 20_000

hours_sink = ArchiveSink("merchants", final_hours, merchant_archive, final_hour, lambda h: h[1])


run_archive_sink(hours_sink, __name__, ARCHIVE_FLUSH_HOURS)
