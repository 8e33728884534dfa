"""The merchants pipeline's windows (one per merchant-purchases partition, each merchant's
items grouped apart: core.topk.GroupedTotals) and what the views read of a partition."""

from __future__ import annotations

from typing import Any

from tally.app import settings
from tally.core.merchants import DAY_MS, HOUR_MS
from tally.core.rollups import bucket_start
from tally.core.windowing import EventClock
from tally.merchants.tables import (
    HOT_DAYS_MS,
    HOT_MS,
    MERCHANT_SPEC,
    merchant_clocks,
    merchant_days,
    merchant_hours,
    merchant_panes,
    merchant_purchases,
    time_prefix,
)
from tally.runtime.panes import PaneWindows
from tally.runtime.store import delete_below

#: merchant-purchases partition → its window. Everything on that topic is re-keyed from
#: purchases, so its watermark is the slowest purchases partition's (each announces its own
#: to every merchant partition): a lagging or failed-over purchases partition holds the
#: window back instead of finding its purchases late.
merchant_windows = PaneWindows(
    "merchants",
    merchant_purchases.get_topic_name(),
    MERCHANT_SPEC,
    merchant_panes,
    merchant_clocks,
    lambda partition: frozenset(range(settings.partitions)),
)


def final_before(last_pane: int | None) -> int | None:
    """Hours before this are final (wholly before the window ending with `last_pane`): no
    purchase can count in them any more (None: no window yet)."""
    if last_pane is None:
        return None
    return bucket_start(MERCHANT_SPEC.start_ms(MERCHANT_SPEC.first_pane(last_pane)), HOUR_MS)


def hot_from(last_pane: int) -> int:
    """The oldest hour the hot table keeps (older ones: the archive), by the window's last
    pane: HOT_MS back from the window's end."""
    return bucket_start(MERCHANT_SPEC.start_ms(last_pane + 1) - HOT_MS, HOUR_MS)


def days_from(last_pane: int) -> int:
    """The oldest day the hot table keeps (older ones: the archive's hours)."""
    return bucket_start(MERCHANT_SPEC.start_ms(last_pane + 1) - HOT_DAYS_MS, DAY_MS)


def written_clock(partition: int, saved: dict[str, Any] | None = None) -> EventClock:
    """The partition's event clock as its owner last wrote it (what a copy knows of it), from
    its clock record (`saved`, when read already)."""
    if saved is None:
        saved = merchant_windows.saved_clock(partition)
    return EventClock.from_record(saved, merchant_windows.awaited(partition))


def drop_past(partition: int, last_pane: int) -> None:
    """Delete the hours and days past the hot tier locally (their changelogs expire them)."""
    delete_below(merchant_hours, partition, time_prefix(hot_from(last_pane)))
    delete_below(merchant_days, partition, time_prefix(days_from(last_pane)))
