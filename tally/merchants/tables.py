"""The merchants pipeline's tables and topics (Faust declarations; the logic is in
core.merchants and core.sliding).

purchases ─► merchant-purchases (by merchant: murmur2 of the tenant name)
          ─► merchant_hours   "<hour ms:013d>|<merchant>" → stamped HourFigures record
          ├► merchant_panes   "<pane:012d>|<merchant>|<item>" → stamped units (the top items)
          └► merchant_clocks  "<partition>" → event clock, late counts, progress
hours that left the window ─► merchant-hours-1h (final, once) ─► the archive
                           └► merchant_days   "<day ms:013d>|<merchant>" → the day so far

The hours, panes and days lead with their time (a pane is an hour by default): an hour that
leaves the window or the hot tier is one range of keys, read or deleted in one go; a
merchant's range is a point read per hour (or day).
"""

from __future__ import annotations

from functools import cache

from tally.app import app, settings
from tally.archive.merchant_hours import MERCHANT_HOURS
from tally.archive.store import DAY_MS, Archive, within
from tally.core.windowing import PaneSpec
from tally.runtime.routing import rekeyed_from
from tally.runtime.topics import internal_topic, purchases
from tally.topics import MERCHANT_FINAL_HOURS, MERCHANT_PURCHASES

#: The same window as the site-wide top items: a merchant's top items are the sales window's.
MERCHANT_SPEC = PaneSpec(
    pane_ms=settings.sales_pane_seconds * 1000,
    window_panes=settings.sales_window_panes,
    grace_ms=int(settings.grace_seconds * 1000),
    extra_retained_panes=settings.sales_retained_panes,
)
#: How long merchant-hours stay in the hot table (Settings.merchants_hot_ms).
HOT_MS = settings.merchants_hot_ms
#: How long merchant-days stay in the hot table: a month's daily answer is a read per day.
HOT_DAYS_MS = settings.merchants_hot_days * DAY_MS
_CHANGELOG = {"cleanup.policy": "compact,delete", "retention.ms": HOT_MS + DAY_MS}

#: The merchants' archive, inside TALLY_ARCHIVE_DIR (the metrics archive's days beside it).
ARCHIVE_DIRECTORY = "merchant-hours"

#: Purchases of the merchants one partition holds: JSON lists (codecs.handover), checked.
merchant_purchases = internal_topic(MERCHANT_PURCHASES, value_type=bytes)
rekeyed_from(purchases, merchant_purchases)

merchant_hours = app.Table("merchant_hours", key_type=bytes, extra_topic_configs=_CHANGELOG)
merchant_panes = app.Table("merchant_panes", key_type=bytes, extra_topic_configs=_CHANGELOG)
#: "<day ms>|<merchant>" → {"hours": bitmask of the final hours merged in, **HourFigures}:
#: each final hour merged into its UTC day once.
merchant_days = app.Table(
    "merchant_days",
    key_type=bytes,
    extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": HOT_DAYS_MS + DAY_MS},
)
#: partition → the event clock ({"event_ms", "wall_ms", "upstream", "resting"}), its
#: "late_events" {merchant: n}, the "offset" of merchant-purchases processed, "final_before"
#: (hours before it are sent on and in their days) and "last_pane" (the window's).
merchant_clocks = app.Table("merchant_clocks", key_type=bytes)
#: purchases partition → its event clock as the re-keying stage keeps it: what it announces
#: to the merchant partitions survives a restart (an idle partition goes on announcing its
#: clock, not "no messages", which would leave the merchants' windows without a watermark).
rekeying_clocks = app.Table("merchant_rekeying_clocks", key_type=bytes)

#: Every merchant-hour that left the window, with its final figures: key
#: "<merchant>|<hour ms>", JSON value {"merchant", "hour_ms", **HourFigures.to_record()}.
final_hours = internal_topic(MERCHANT_FINAL_HOURS, value_serializer="json")


@cache
def merchant_archive() -> Archive:
    """The cold tier: final merchant-hours as Parquet, in `merchant-hours` inside the
    archive's location (written by the merchants' archive sink, read by the views)."""
    return Archive(
        within(settings.archive_location, ARCHIVE_DIRECTORY),
        settings.default_tenant,
        MERCHANT_HOURS,
    )


def cell_key(start_ms: int, merchant: str) -> bytes:
    """The key of a merchant's hour (or day) starting at `start_ms`."""
    return f"{start_ms:013d}|{merchant}".encode()


def time_prefix(start_ms: int) -> bytes:
    """The smallest key of an hour (or day): scans and deletes run from one's to another's."""
    return f"{start_ms:013d}|".encode()


def split_cell_key(key: bytes) -> tuple[int, str]:
    """(start ms, merchant) of a `cell_key`."""
    start, merchant = key.decode().split("|", 1)
    return int(start), merchant
