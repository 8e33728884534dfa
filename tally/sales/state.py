"""The sales pipeline's in-memory state, and the answers read from it: per purchases partition
its window and what it last published; on the worker that merges, every partition's latest
candidates. Each is a `PartitionStates`: dropped when the partition leaves this worker, rebuilt
from the tables on next use (after a failover and a failback, the tables hold what the other
worker did meanwhile).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from tally.app import settings
from tally.core.applied import value_of
from tally.core.sliding import PaneReader, SlidingTotals
from tally.core.topk import Candidates, GlobalTopK, late_by_group, merge_candidates
from tally.core.windowing import EventClock
from tally.http.caching import KeptAnswers
from tally.runtime.cells import read_cell
from tally.runtime.routing import others
from tally.runtime.state import PartitionStates
from tally.runtime.store import delete_below, partition_key, scan, stored_value
from tally.runtime.topics import purchases
from tally.sales.tables import (
    SALES_SPEC,
    pane_prefix,
    sales_clocks,
    sales_panes,
    sales_topk,
    topk_candidates,
)

logger = logging.getLogger(__name__)

#: What a partition published last: its top-K, its window's last pane, the wall ms when.
Published = tuple[list[tuple[str, int]], int, int]

#: purchases partition → its window.
windows: PartitionStates[SlidingTotals] = PartitionStates(purchases.get_topic_name())
#: purchases partition → what it published last.
published: PartitionStates[Published] = PartitionStates(purchases.get_topic_name())
#: candidates partition (there is one) → every purchases partition's latest candidates.
latest_candidates: PartitionStates[dict[int, Candidates]] = PartitionStates(
    topk_candidates.get_topic_name()
)


def pane_reader(partition: int) -> PaneReader:
    """Reads one pane of one partition back from RocksDB: one ordered scan of its cells."""

    def read(pane: int) -> Iterator[tuple[str, int]]:
        prefix = pane_prefix(pane)
        for key, value in scan(sales_panes, partition, prefix, pane_prefix(pane + 1)):
            yield key[len(prefix) :].decode(), value_of(stored_value(value))

    return read


def window_for(partition: int, wall_ms: int, idle: bool) -> SlidingTotals:
    """The partition's window, its clock settled at `wall_ms` (`idle`: caught up)."""
    window = windows.get(partition)
    if window is not None:
        window.clock.settle(wall_ms, idle)
    else:
        saved = read_cell(sales_clocks, partition_key(partition), partition) or {}
        clock = EventClock.from_record(saved, others(partition))
        clock.settle(wall_ms, idle)
        window = SlidingTotals.restore(SALES_SPEC, clock, wall_ms, pane_reader(partition))
        window.late_events = late_by_group(saved.get("late_events") or {})
        windows[partition] = window
        prune(partition, window, wall_ms)
        logger.info("sales partition %s: window restored, %s items", partition, len(window.totals))
    return window


def prune(partition: int, window: SlidingTotals, wall_ms: int) -> None:
    """Delete panes older than retention from local storage (the changelog expires them)."""
    watermark = window.watermark(wall_ms)
    if watermark is not None:
        delete_below(sales_panes, partition, pane_prefix(SALES_SPEC.retained_from(watermark)))


#: The current top-K answers (one per tenant, `k` and stale reasons), serialized: dropped
#: whenever the latest candidates change.
current_body = KeptAnswers(limit=1024)


def load_latest() -> dict[int, Candidates]:
    """The latest candidates, from memory, or from the table after a restart or a failover."""
    latest = latest_candidates.get(0)
    if latest is None:
        current_body.invalidate()
        latest = latest_candidates[0] = {}
        for _, value in scan(sales_topk, 0, b"latest|", b"latest}"):
            candidates = Candidates.from_json(stored_value(value))
            latest[candidates.partition] = candidates
    return latest


def current_answer(tenant: str | None) -> GlobalTopK | None:
    """The current top-K of a tenant's items (None: of every tenant's)."""
    return merge_candidates(load_latest().values(), settings.top_k, tenant)


def answer_at(last_pane: int, tenant: str | None) -> GlobalTopK | None:
    """The answer for a past window, from the candidates each partition published for it."""
    start, stop = f"{last_pane:012d}|".encode(), f"{last_pane:012d}}}".encode()
    found = [Candidates.from_json(stored_value(v)) for _, v in scan(sales_topk, 0, start, stop)]
    return merge_candidates(found, settings.top_k, tenant)
