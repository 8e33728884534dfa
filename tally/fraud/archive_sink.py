"""The fraud audit's archive: every decision on fraud-audit → Parquet day files, compacted
once a day is settled, days older than TALLY_ARCHIVE_KEEP dropped hourly by the leader
(tally.runtime.archive_sink)."""

from __future__ import annotations

from functools import cache

from tally.app import settings
from tally.archive.fraud_audit import FRAUD_AUDIT_LAYOUT, at_of, audit_row
from tally.archive.store import Archive, within
from tally.fraud.tables import audit_topic
from tally.runtime.archive_sink import ArchiveSink, run_archive_sink

#: The fraud audit's archive, inside TALLY_ARCHIVE_DIR.
ARCHIVE_DIRECTORY = "fraud-audit"
#: The most decisions one flush holds.
ARCHIVE_FLUSH_ROWS = 5_000


@cache
def audit_archive() -> Archive:
    return Archive(
        within(settings.archive_location, ARCHIVE_DIRECTORY),
        settings.default_tenant,
        FRAUD_AUDIT_LAYOUT,
    )


audit_sink = ArchiveSink(
    "fraud audit", audit_topic, audit_archive, audit_row, lambda r: at_of(r[3])
)


run_archive_sink(audit_sink, __name__, ARCHIVE_FLUSH_ROWS)
