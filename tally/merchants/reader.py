"""A reader's copies of the merchants tables (TALLY_ROLE=read): every partition, followed in
the changelogs (runtime.following), old hours, days and panes dropped as the owner drops them.
The views answer from them, naming the copy `reader`."""

from __future__ import annotations

from tally.app import app
from tally.merchants.state import drop_past, merchant_windows, written_clock
from tally.merchants.tables import (
    MERCHANT_SPEC,
    merchant_clocks,
    merchant_days,
    merchant_hours,
    merchant_panes,
)
from tally.runtime.following import ChangelogFollower

#: partition → the window's last pane the copy was last pruned for.
_pruned_for: dict[int, int] = {}


def prune_copy(partition: int) -> None:
    """Drop what the owner dropped once its window slid (it deletes locally, no tombstones)."""
    saved = merchant_windows.saved_clock(partition)
    last_pane = saved.get("last_pane")
    if last_pane is None or _pruned_for.get(partition) == last_pane:
        return
    drop_past(partition, last_pane)
    clock = written_clock(partition, saved)
    watermark = clock.watermark(clock.wall_ms, MERCHANT_SPEC.grace_ms)
    if watermark is not None:
        merchant_windows.prune_below(partition, watermark)
    _pruned_for[partition] = last_pane


#: The clocks last: within a fetch, a clock record is written after the cells it covers.
copies = ChangelogFollower(
    "merchants", (merchant_hours, merchant_days, merchant_panes, merchant_clocks), prune_copy
)
app.waiting_for.append(
    ("loading copies of the merchants tables from their changelogs", lambda: not copies.loaded)
)


@app.task
async def follow_merchant_tables() -> None:
    await app.add_runtime_dependency(copies)
