"""Recommendations pipeline glue: page views → sessions' items (time to live) → co-view rows.

1. `route_views` (page-views): each view checked (schema, ids, time) and handed on to its
   session's partition of page-views-by-session (murmur2 of "<tenant>|<session>", whatever
   partitioner the producer used), with its offset; then the partition's watermark to every
   session partition (`announce_idle_views`, a 1 s timer, announces idle partitions' too).
   What does not decode or validate is dead-lettered.
2. `track_sessions` (page-views-by-session): each view taken into its session's first view
   times (core.recommendations.view), giving the co-view changes of the pairs it completes
   or moves. Sessions expire by the partition's watermark, the slowest page-views
   partition's (runtime.expiry): a view older than the time to live behind it is stale
   (late-events, not processed), unless the partition took it when it first came (a
   redelivery, skipped: its clock has moved on since). The changes go to each row item's
   partition of co-view-changes and are acknowledged by the broker before the sessions are
   written: a crash in between leaves the sessions as they were, the same views come again
   and make the same changes, which the rows recognise by their origin (core.applied). A
   view that is in its session already makes none, so a session written means its changes
   are delivered.
3. `count_co_views` (co-view-changes): each change once into its row's pane and the row's
   window total; the window ends with the pane of the slowest session partition's announced
   watermark (each announces after its batches, and every second), panes leaving it are
   subtracted from the totals and deleted (tombstones); a change to a pane before the window
   is late (counted, nothing to do: brute force over the window does not count it either).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka.structs import RecordMetadata
from faust.types import EventT, StreamT

from tally.app import app, settings
from tally.codecs.avro import Record, check_event_time
from tally.codecs.catalog import page_view_codec
from tally.codecs.handover import HandedRecords
from tally.core.applied import Source, Stamped, holds, reach, stamp, value_of
from tally.core.clock import now_ms
from tally.core.errors import ValidationError
from tally.core.partitioning import partition_for
from tally.core.recommendations import CO_VIEWS, add_counts, view
from tally.core.tenancy import letter_tenant, scoped, tenant_of
from tally.recommendations.tables import (
    CO_VIEWS_CLOCK,
    SESSION_TTL,
    co_view_changes,
    co_views,
    page_view_clocks,
    page_views,
    pane_key,
    pane_prefix,
    row_of_pane_key,
    session_expiry,
    session_items,
    session_views,
    total_key,
)
from tally.runtime.cells import read_cell, write_cells
from tally.runtime.expiry import ExpiringState, set_aside_stale
from tally.runtime.intake import (
    decode,
    each_partition,
    let_others_run,
    reject,
    timer,
)
from tally.runtime.purchases import MAX_FUTURE_MS
from tally.runtime.rekeying import RekeyingClocks
from tally.runtime.routing import (
    Forwarded,
    announce,
    announcement,
    hand_over_all,
    hear_all,
    source_of,
)
from tally.runtime.state import StoredClocks
from tally.runtime.store import scan, stored_value
from tally.telemetry import EVENTS
from tally.topics import PAGE_VIEWS

logger = logging.getLogger(__name__)

VIEW_FIELDS = ("tenant", "session_id", "item_id", "viewed_at_ms", "kind")
#: Views handed to their session's partition, each with its page-views offset.
HANDED_VIEWS = HandedRecords("page views", (*VIEW_FIELDS, "origin_offset"))
#: Co-view changes handed to their row's partition, each with its page-views-by-session offset.
HANDED_CHANGES = HandedRecords(
    "co-view changes", ("tenant", "row", "other", "pane", "delta", "origin_offset")
)


# --- stage 1: page-views → page-views-by-session ----------------------------------------------


async def route_partition(events: Sequence[EventT]) -> None:
    """Each view to its session's partition; then this partition's watermark to every
    session partition."""
    partition = events[0].message.partition
    wall = now_ms()
    by_owner: dict[int, list[tuple[int, Record]]] = {}
    for index, event in enumerate(events, 1):
        await let_others_run(index)
        page_view = await decode(event, page_view_codec())
        if page_view is None:
            continue
        tenant = tenant_of(page_view, settings.default_tenant)
        try:
            check_event_time("viewed_at_ms", page_view["viewed_at_ms"], wall, MAX_FUTURE_MS)
        except ValidationError as exc:
            await reject(event, exc, stage="validate", tenant=tenant)
            continue
        offset = event.message.offset
        owner = partition_for(scoped(tenant, page_view["session_id"]), settings.partitions)
        routed = {**page_view, "tenant": tenant, "origin_offset": offset}
        by_owner.setdefault(owner, []).append((offset, routed))
    handed = Forwarded()
    handed.add(
        await hand_over_all(events[-1], by_owner, HANDED_VIEWS, session_views),
        (routed["viewed_at_ms"] for theirs in by_owner.values() for _, routed in theirs),
    )
    await view_clocks.handed_over(partition, wall, handed)


#: Each page-views partition's clock, announced to every session partition.
view_clocks = RekeyingClocks(page_views, page_view_clocks, session_views, route_partition)


@app.agent(page_views)
async def route_views(stream: StreamT) -> None:
    await each_partition(stream, route_partition, view_clocks.clocks)


@timer(interval=1.0)
async def announce_idle_views() -> None:
    """Sessions expire with no traffic: idle page-views partitions' watermarks follow the
    wall clock."""
    await view_clocks.announce_idle()


# --- stage 2: page-views-by-session → sessions, co-view-changes -------------------------------


async def track_partition(events: Sequence[EventT]) -> None:
    """The batch's views into their sessions (read once, written once), their co-view changes
    delivered first (module docstring)."""
    partition = events[0].message.partition
    wall = now_ms()
    sessions: dict[bytes, tuple[dict[str, int], int]] = {}  # key → (first views, newest view)
    changes: dict[int, list[tuple[int, Record]]] = {}
    applied = sessions_state.applied(partition)
    origins: set[tuple[Source, int]] = set()  # the batch's views, taken or set aside
    letters: list[Awaitable[RecordMetadata]] = []
    counted = redelivered = 0
    for event in events:
        if announcement(event) is not None:
            continue
        offset = event.message.offset
        source, _ = source_of(event)
        for page_view in await decode(event, HANDED_VIEWS) or []:
            at, tenant = page_view["viewed_at_ms"], page_view["tenant"]
            origin = (source, page_view["origin_offset"])
            if sessions_state.stale(at, partition, wall):
                if holds(applied, origin[1], source) or origin in origins:
                    redelivered += 1  # taken (or set aside) when it first came
                else:
                    letters.append(await set_aside_stale_view(event, page_view, partition, wall))
                origins.add(origin)
                continue
            origins.add(origin)
            key = scoped(tenant, page_view["session_id"]).encode()
            if key in sessions:
                first_views, newest = sessions[key]
            else:
                first_views, newest = dict(sessions_state.get(key, partition, wall) or {}), at
            for change in view(first_views, page_view["item_id"], at):
                owner = partition_for(scoped(tenant, change.row), settings.partitions)
                record = {
                    "tenant": tenant,
                    "row": change.row,
                    "other": change.other,
                    "pane": change.pane,
                    "delta": change.delta,
                    "origin_offset": offset,
                }
                changes.setdefault(owner, []).append((offset, record))
            sessions[key] = (first_views, max(newest, at))
            counted += 1
            await let_others_run(counted)
    handed = await hand_over_all(events[-1], changes, HANDED_CHANGES, co_view_changes)
    await asyncio.gather(*handed, *letters)  # before the record that says they are done
    for key, (first_views, newest) in sessions.items():
        sessions_state.put(key, first_views, newest, partition)
    sessions_state.hear(partition, events)  # after the batch: an announcement follows it
    sessions_state.save_clock(partition, events[-1].message.offset, reach(origins))
    await announce_sessions_watermark(partition, wall)
    EVENTS.labels(session_views.get_topic_name(), "counted").inc(counted)
    EVENTS.labels(session_views.get_topic_name(), "redelivered").inc(redelivered)


async def set_aside_stale_view(
    event: EventT, page_view: Record, partition: int, wall: int
) -> Awaitable[RecordMetadata]:
    """The view as its producer sent it (Avro), where it was first written, and why; returns
    the letter's delivery."""
    now = sessions_state.now(partition, wall) or 0
    source, _ = source_of(event)
    original = {name: page_view[name] for name in VIEW_FIELDS}
    return await set_aside_stale(
        event,
        f"recommendations: view of session {page_view['session_id'][:80]!r} "
        + SESSION_TTL.stale_reason(page_view["viewed_at_ms"], now)
        + " (the session partition's clock)",
        value=page_view_codec().dumps(original),
        key=page_view["session_id"].encode(),
        tenant=letter_tenant(page_view, settings.default_tenant),
        origin=(PAGE_VIEWS, source or 0, page_view["origin_offset"]),
    )


@app.agent(session_views)
async def track_sessions(stream: StreamT) -> None:
    await each_partition(stream, track_partition, sessions_state.clocks)


#: Sessions: their items' first view times, living SESSION_TTL past their last view.
sessions_state = ExpiringState(
    session_views,
    session_items,
    session_expiry,
    SESSION_TTL,
    track_partition,
    awaited=lambda partition: frozenset(range(settings.partitions)),
)


async def announce_sessions_watermark(partition: int, wall_ms: int) -> None:
    """The partition's watermark (what its sessions' changes are complete up to, as the
    page-views partitions announced theirs) to every co-view partition."""
    watermark = sessions_state.now(partition, wall_ms)
    await announce(session_views, partition, watermark, False, to=co_view_changes)


@timer(interval=1.0)
async def expire_sessions() -> None:
    """Sweep expired sessions; tell the co-view partitions how far each session partition
    is, traffic or not (its watermark follows idle page-views partitions' wall clocks)."""
    await sessions_state.sweep_owned()
    wall = now_ms()
    for partition in sessions_state.owned():
        await announce_sessions_watermark(partition, wall)


# --- stage 3: co-view-changes → co-view rows ---------------------------------------------------


def co_views_clock(partition: int) -> dict[str, Any]:
    """{"clock": the watermark's EventClock record, "last_pane": the pane the window ends
    with (None: no watermark yet), "late_changes": changes to panes before the window}."""
    return read_cell(co_views, CO_VIEWS_CLOCK, partition) or {}


#: co-view-changes partition → its event clock: the slowest session partition's watermark.
count_clocks = StoredClocks(
    co_view_changes.get_topic_name(),
    lambda p: co_views_clock(p).get("clock"),
    lambda _: frozenset(range(settings.partitions)),
)


async def count_partition(events: Sequence[EventT]) -> None:
    """Each change once into its pane and its row's total; then the session partitions'
    watermarks heard, and the window slid to the slowest's pane (a session partition
    behind the others, in a backlog, still finds its panes in the window)."""
    partition = events[0].message.partition
    wall = now_ms()
    carried = [
        (source_of(event)[0], change)
        for event in events
        if announcement(event) is None
        for change in await decode(event, HANDED_CHANGES) or []
    ]
    saved = co_views_clock(partition)
    last = saved.get("last_pane")
    first = None if last is None else CO_VIEWS.first_pane(last)
    totals: dict[bytes, dict[str, int]] = {}
    panes: dict[bytes, tuple[Stamped | None, dict[str, int]]] = {}
    late = counted = 0
    for index, (source, change) in enumerate(carried, 1):
        await let_others_run(index)
        if first is not None and change["pane"] < first:
            late += 1
            continue
        key = pane_key(change["pane"], change["tenant"], change["row"])
        if key not in panes:
            before = read_cell(co_views, key, partition)
            panes[key] = (before, dict(value_of(before, {})))
        before, counts = panes[key]
        if holds(before, change["origin_offset"], source):
            continue
        delta = {change["other"]: change["delta"]}
        add_counts(counts, delta)
        add_counts(total_row(totals, change["tenant"], change["row"], partition), delta)
        counted += 1
    through = reach((source, change["origin_offset"]) for source, change in carried)
    # Every cell the batch changes, written in one go (all or none: a row too large for a
    # record leaves the tables as they were, and the event that made it is dead-lettered).
    updates: dict[bytes, Any] = {
        key: stamp(counts, through, before) for key, (before, counts) in panes.items()
    }
    clock = count_clocks.clock(partition)
    hear_all(clock, events)  # after the batch: an announcement follows what it covers
    watermark = clock.watermark(wall, 0)
    if watermark is not None and (last is None or CO_VIEWS.pane_of(watermark) > last):
        updates.update(slide(partition, last, CO_VIEWS.pane_of(watermark), totals, panes))
        last = CO_VIEWS.pane_of(watermark)
    updates.update((key, row or None) for key, row in totals.items())  # empty: deleted
    updates[CO_VIEWS_CLOCK] = {
        "clock": clock.record(),
        "last_pane": last,
        "late_changes": saved.get("late_changes", 0) + late,
    }
    write_cells(co_views, updates, partition)
    topic = co_view_changes.get_topic_name()
    EVENTS.labels(topic, "counted").inc(counted)
    EVENTS.labels(topic, "late").inc(late)


def total_row(
    totals: dict[bytes, dict[str, int]], tenant: str, item: str, partition: int
) -> dict[str, int]:
    """The row's window total, read once per batch."""
    key = total_key(tenant, item)
    row = totals.get(key)
    if row is None:
        row = totals[key] = dict(read_cell(co_views, key, partition) or {})
    return row


def slide(
    partition: int,
    last: int | None,
    newest: int,
    totals: dict[bytes, dict[str, int]],
    panes: dict[bytes, tuple[Stamped | None, dict[str, int]]],
) -> dict[bytes, None]:
    """Panes that leave the window as its last pane moves from `last` (None: the window had
    no end yet) to `newest`, stored or changed in this batch (`panes`): their counts out of
    the totals; returns their deletions."""
    start = b"p|" if last is None else pane_prefix(CO_VIEWS.first_pane(last))
    stop = pane_prefix(CO_VIEWS.first_pane(newest))
    leaving = {
        key: value_of(stored_value(raw)) for key, raw in scan(co_views, partition, start, stop)
    }
    leaving.update((key, counts) for key, (_, counts) in panes.items() if start <= key < stop)
    for key, counts in leaving.items():
        tenant, item = row_of_pane_key(key)
        add_counts(total_row(totals, tenant, item, partition), counts, -1)
    return dict.fromkeys(leaving)


@app.agent(co_view_changes)
async def count_co_views(stream: StreamT) -> None:
    await each_partition(stream, count_partition, count_clocks)
