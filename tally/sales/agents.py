"""Sales pipeline glue: purchases → hourly panes → each tenant's top-K per partition → the
tenants' top-Ks and the site-wide one.

The logic lives in `tally.core.sliding` / `tally.core.topk`; this module moves data
between Kafka, the tables and those classes:

1. `count_sales` takes a batch, splits it by partition, decodes (single purchases and
   envelopes), forwards purchases of items another partition owns (runtime.routing), folds
   the rest into the partition's `SlidingTotals`, writes one pane cell per (pane, item)
   touched (items are `scoped` by tenant), sends late events to `late-events`, and publishes
   the partition's top-K of each tenant when it changed. It reads `purchases` and
   `purchases-routed` (what other partitions forwarded).
2. `slide_idle_windows` (a 1 s timer) lets event time pass on idle partitions, so windows
   slide with no traffic, and re-publishes each top-K every heartbeat.
3. `merge_top_k` (one worker: the candidates topic has one partition) keeps every partition's
   latest top-K and the history per window; the answer is their merge (tables.topk).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from faust.types import EventT, StreamT

from tally.app import app, settings
from tally.codecs.avro import Record
from tally.core.applied import reach
from tally.core.clock import now_ms
from tally.core.errors import ValidationError
from tally.core.partitioning import partition_for
from tally.core.sliding import Closing, SlidingTotals
from tally.core.topk import Candidates
from tally.runtime.cells import has_cell
from tally.runtime.intake import caught_up, each_partition, timer, writing_for
from tally.runtime.purchases import checked_purchases, hand_on, item_of, set_aside_late
from tally.runtime.routing import (
    Forwarded,
    announce,
    announcement,
    hear_all,
    is_forwarded,
    source_of,
)
from tally.runtime.store import partition_key
from tally.runtime.topics import purchases, routed_purchases, with_routed
from tally.sales.state import (
    candidates_arrived,
    latest_candidates,
    published,
    sales_windows,
)
from tally.sales.tables import (
    SALES_SPEC,
    sales_clocks,
    sales_topk,
    topk_candidates,
)
from tally.telemetry import EVENTS

logger = logging.getLogger(__name__)


# --- stage 1: purchases → panes → per-partition top-K ------------------------------------


async def decoded_purchases(
    event: EventT, partition: int, wall_ms: int, forwarded: Forwarded
) -> list[Record]:
    """The valid purchases of one message that this partition owns; the others go to their
    owner (one message per owner: as it came, or an envelope of their members; noted in
    `forwarded`), and every invalid one is dead-lettered on its own."""

    def owned_here(purchase: Record) -> None:
        owner = partition_for(purchase["item_id"], settings.partitions)
        if owner != partition and is_forwarded(event):
            raise ValidationError(
                f"item {purchase['item_id']!r} belongs to partition {owner} (murmur2 of the "
                f"item id), but was forwarded to partition {partition}: do all workers "
                "have the same TALLY_PARTITIONS as the topic?",
                "misrouted",
            )

    purchases = await checked_purchases(event, wall_ms, owned_here)
    if purchases is None:
        return []
    by_owner: dict[int, list[Record]] = {}
    for purchase in purchases.valid:
        owner = partition_for(purchase["item_id"], settings.partitions)
        by_owner.setdefault(owner, []).append(purchase)
    for owner, theirs in by_owner.items():
        if owner != partition:
            delivery = await hand_on(event, purchases, owner, theirs)
            forwarded.add([delivery], (p["event_time_ms"] for p in theirs))
    return by_owner.get(partition, [])


async def count_partition(events: Sequence[EventT]) -> None:
    """One partition's share of a batch (of purchases, or of those forwarded to it), step by
    step: decode (reject, forward), skip what the cells already hold, fold into the window,
    persist the touched cells, set aside what came late, publish the top-K."""
    partition = events[0].message.partition
    wall = now_ms()
    own = not is_forwarded(events[0])
    messages = [event for event in events if announcement(event) is None]
    forwarded = Forwarded()
    decoded = [
        (e, p) for e in messages for p in await decoded_purchases(e, partition, wall, forwarded)
    ]
    # Awaited before the cells are read: no await may come between them and the persist
    # (the window timer could slide in between).
    await forwarded.acknowledged()
    arrivals = [(source_of(e), item_of(p), p["event_time_ms"]) for e, p in decoded]
    cells, unheld = sales_windows.unapplied(partition, arrivals)
    fresh = [decoded[index] for index in unheld]
    EVENTS.labels(purchases.get_topic_name(), "redelivered").inc(len(decoded) - len(fresh))
    # A batch of its own means the partition was not idle: the wall time since the last
    # settle does not count. One forwarded to it says nothing of its own source.
    idle = not own and own_source_idle(partition) is True
    window = sales_windows.window_for(partition, wall, idle)
    outcome = window.ingest(
        [(item_of(p), p["quantity"], p["event_time_ms"]) for _, p in fresh], wall, own
    )
    forwarded.move(window.clock, wall)  # its own messages, counted elsewhere: its clock
    hear_all(window.clock, events)  # after the batch: an announcement follows what it covers
    through = reach(source_of(message) for message in messages)
    offset = None if not own else events[-1].message.offset
    sales_windows.persist(partition, window, through, outcome.pane_deltas, cells, offset)
    if own:
        own_watermark = window.clock.own_watermark(wall, SALES_SPEC.grace_ms)
        await announce(purchases, partition, own_watermark, idle=False)
    closing = sales_windows.slide(partition, window, wall, settings.top_k)
    EVENTS.labels(purchases.get_topic_name(), "counted").inc(len(fresh) - len(outcome.late))
    await set_aside_late(window, wall, [fresh[index] for index in outcome.late], "sales")
    await publish(partition, window, wall, closing)


@app.agent(with_routed(purchases, routed_purchases))
async def count_sales(stream: StreamT) -> None:
    """Purchases in batches; each partition's share is folded and written on its own."""
    await each_partition(stream, count_partition, sales_windows.windows, published)


async def publish(
    partition: int, window: SlidingTotals, wall_ms: int, closing: Closing | None = None
) -> None:
    """Send the partition's top-K to the merge stage when it changed, or a heartbeat is due;
    first the final top-K of the window that just slid away, if one did (the history `?at=`
    answers from)."""
    if window.last_pane is None:
        return
    watermark = window.watermark(wall_ms) or 0
    if closing is not None:
        final = Candidates(
            partition, closing.last_pane, closing.top, watermark, wall_ms, window.late_events
        )
        await topk_candidates.send(key=b"top", value=final.to_json())
    top = window.top(settings.top_k)
    last = published.get(partition)
    unchanged = last is not None and (last[0], last[1]) == (top, window.last_pane)
    if unchanged and wall_ms - last[2] < settings.heartbeat_seconds * 1000:  # type: ignore[index]
        return
    candidates = Candidates(
        partition=partition,
        last_pane=window.last_pane,
        top=top,
        watermark_ms=watermark,
        as_of_ms=wall_ms,
        late_events=window.late_events,
    )
    published[partition] = (top, window.last_pane, wall_ms)
    await topk_candidates.send(key=b"top", value=candidates.to_json())


def own_source_idle(partition: int) -> bool | None:
    """Whether the partition's purchases are all processed (None: unknown yet). Idle when its
    own partition is: what others forward is covered by their announcements."""
    offset = sales_windows.saved_clock(partition).get("offset")
    return caught_up(purchases, partition, offset, count_partition)


@timer(interval=1.0)
async def slide_idle_windows() -> None:
    """Event time passes on idle partitions too: slide their windows, keep answers fresh."""
    if not app.ready:
        return
    wall = now_ms()
    owned = []
    marks: list[tuple[int, int | None, bool | None]] = []  # (partition, own watermark, idle)
    for tp in app.assignor.assigned_actives():  # no await in here: ownership cannot change
        if tp.topic != purchases.get_topic_name():
            continue
        idle = own_source_idle(tp.partition)
        if tp.partition not in sales_windows.windows and not has_cell(
            sales_clocks, partition_key(tp.partition), tp.partition
        ):
            marks.append((tp.partition, None, idle))  # never had a purchase
            continue
        if idle is None:
            continue  # backlog unknown (just assigned): do not slide past what is queued
        window = sales_windows.window_for(tp.partition, wall, idle)
        marks.append((tp.partition, window.clock.own_watermark(wall, SALES_SPEC.grace_ms), idle))
        closing = sales_windows.slide(tp.partition, window, wall, settings.top_k)
        owned.append((tp.partition, window, closing))
    for partition, watermark, idle in marks:
        await announce(purchases, partition, watermark, idle)
    for partition, window, closing in owned:
        await publish(partition, window, wall, closing)


# --- stage 2: the merge ------------------------------------------------------------------

#: The merge waits at most this long to batch candidates: it is on the path to every answer.
MERGE_WITHIN_S = 0.02


async def merge_partition(events: Sequence[EventT]) -> None:
    for event in events:
        candidates = Candidates.from_json(cast(dict[str, Any], event.value))  # JSON
        with writing_for(event):
            sales_topk[f"latest|{candidates.partition}".encode()] = candidates.to_json()
            sales_topk[f"{candidates.last_pane:012d}|{candidates.partition}".encode()] = (
                candidates.to_json()
            )
            first_pane = SALES_SPEC.first_pane(candidates.last_pane)
            oldest_kept = first_pane - SALES_SPEC.extra_retained_panes
            stale_key = f"{oldest_kept - 1:012d}|{candidates.partition}".encode()
            if stale_key in sales_topk:
                del sales_topk[stale_key]
        candidates_arrived(candidates)


@app.agent(topk_candidates)
async def merge_top_k(stream: StreamT) -> None:
    await each_partition(stream, merge_partition, latest_candidates, within=MERGE_WITHIN_S)
