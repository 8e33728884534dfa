"""Merchants pipeline glue: purchases → re-keyed by merchant → merchant-hours and each
merchant's top items over the sales window.

1. `rekey_purchases` (purchases): each message's valid purchases, grouped by their merchant's
   partition (murmur2 of the tenant name), go to merchant-purchases as one message per
   partition (a JSON list of them: codecs.handover), with the message's origin. Invalid ones
   are the sales pipeline's to dead-letter when this worker runs it (one letter per purchase,
   not one per pipeline), else dead-lettered here.
2. `count_merchants` (merchant-purchases): per partition, the purchases its cells do not hold
   yet (records keep their offsets per origin partition, core.applied), folded into the
   window (core.sliding: the same pane arithmetic as the site-wide top items) and into each
   touched merchant-hour (core.merchants.HourFigures), each cell written once per batch.
   A purchase whose pane had left the window is late for its hour too: to `late-events`.
3. When the window slides, the hours it left are final: each merchant's figures of them go
   to merchant-hours-1h once (the archive's input) and into its day cell, and hours and days
   past the hot tier are deleted locally. `announce_idle_purchases` (a 1 s timer) announces
   idle purchases partitions' watermarks, so windows slide and hours close with no traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence

from faust.types import EventT, RecordMetadata, StreamT

from tally.app import app, settings
from tally.codecs.avro import MAGIC_BYTE, Record, load_schema
from tally.codecs.catalog import purchases_topic_codec
from tally.codecs.handover import HandedRecords
from tally.core.applied import Source, Stamped, holds, reach, stamp, value_of
from tally.core.clock import now_ms
from tally.core.merchants import HOUR_MS, DayFigures, HourFigures, day_start
from tally.core.partitioning import partition_for
from tally.core.rollups import bucket_start
from tally.core.sliding import SlidingTotals
from tally.merchants.state import drop_past, final_before, merchant_windows
from tally.merchants.tables import (
    MERCHANT_SPEC,
    cell_key,
    final_hours,
    merchant_clocks,
    merchant_days,
    merchant_hours,
    merchant_purchases,
    rekeying_clocks,
    split_cell_key,
    time_prefix,
)
from tally.runtime.cells import read_cell, write_cell
from tally.runtime.intake import decode, each_partition, timer
from tally.runtime.purchases import (
    checked_purchases,
    item_of,
    members_of,
    set_aside_late,
    tenant_of_purchase,
)
from tally.runtime.rekeying import RekeyingClocks
from tally.runtime.routing import Forwarded, announcement, forward, hear_all, source_of
from tally.runtime.store import partition_key, scan, stored_value
from tally.runtime.topics import purchases
from tally.telemetry import EVENTS

logger = logging.getLogger(__name__)


# --- stage 1: purchases → merchant-purchases ------------------------------------------------


async def rekey_partition(events: Sequence[EventT]) -> None:
    """Each message's valid purchases to their merchants' partitions, then this partition's
    watermark to every merchant partition (after what it sent them)."""
    partition = events[0].message.partition
    wall = now_ms()
    letters = "sales" not in settings.pipelines
    handed = Forwarded()
    for event in events:
        carried = await checked_purchases(event, wall, letters=letters)
        if carried is None:
            continue
        by_owner: dict[int, list[Record]] = {}
        for purchase in carried.valid:
            owner = partition_for(tenant_of_purchase(purchase), settings.partitions)
            by_owner.setdefault(owner, []).append(purchase)
        for owner, theirs in by_owner.items():
            delivery = await forward(
                event, owner, HANDED_PURCHASES.dumps(theirs), to=merchant_purchases
            )
            handed.add([delivery], (purchase["event_time_ms"] for purchase in theirs))
    await purchase_clocks.handed_over(partition, wall, handed)


#: Each purchases partition's clock, announced to every merchant partition.
purchase_clocks = RekeyingClocks(
    purchases, rekeying_clocks, merchant_purchases, rekey_partition, MERCHANT_SPEC.grace_ms
)


@app.agent(purchases)
async def rekey_purchases(stream: StreamT) -> None:
    await each_partition(stream, rekey_partition, purchase_clocks.clocks)


@timer(interval=1.0)
async def announce_idle_purchases() -> None:
    """Merchant windows slide, and hours become final, with no traffic: idle purchases
    partitions' watermarks follow the wall clock."""
    await purchase_clocks.announce_idle()


# --- stage 2: merchant-purchases → hours and windows ----------------------------------------

#: The first byte of a Confluent-framed Avro value (never of JSON).
AVRO_MAGIC = bytes([MAGIC_BYTE])
#: What the re-keying stage hands on: each message's valid purchases of one partition.
HANDED_PURCHASES = HandedRecords(
    "purchases", [field["name"] for field in load_schema("purchase")["fields"]]
)

#: A purchase with the message that carried it.
Carried = tuple[EventT, Record]


async def unpacked(event: EventT) -> list[Record]:
    """The purchases of a re-keyed message (checked when they were re-keyed). One starting
    with Avro's magic byte was re-keyed by a version before the JSON handover: an upgrade
    finds such messages waiting, and reads them as they were written."""
    if isinstance(event.value, bytes) and event.value[:1] == AVRO_MAGIC:
        decoded = await decode(event, purchases_topic_codec())
        return [] if decoded is None else members_of(*decoded)
    return await decode(event, HANDED_PURCHASES) or []


def hour_of(purchase: Record) -> int:
    return bucket_start(purchase["event_time_ms"], HOUR_MS)


async def count_partition(events: Sequence[EventT]) -> None:
    """One partition's share of a batch: skip what the cells hold, fold into the window and
    the merchant-hours, persist each touched cell once, set aside what came late, hear the
    purchases partitions' watermarks, then slide (closing hours as the window leaves them)."""
    partition = events[0].message.partition
    wall = now_ms()
    messages = [event for event in events if announcement(event) is None]
    sources = {id(event): source_of(event) for event in messages}
    decoded = [(event, p) for event in messages for p in await unpacked(event)]
    arrivals = [(sources[id(e)], item_of(p), p["event_time_ms"]) for e, p in decoded]
    pane_cells, unheld = merchant_windows.unapplied(partition, arrivals)
    window = merchant_windows.window_for(partition, wall, idle=False)
    fresh = [decoded[index] for index in unheld]
    outcome = window.ingest(
        [(arrivals[i][1], decoded[i][1]["quantity"], arrivals[i][2]) for i in unheld],
        wall,
        own=False,
    )
    late = {id(fresh[index][1]) for index in outcome.late}
    through = reach(sources.values())
    counted = fold_hours(partition, [c for c in decoded if id(c[1]) not in late], through, sources)
    hear_all(window.clock, events)  # after the batch: an announcement follows what it covers
    offset = events[-1].message.offset
    # The pane the window last slid to goes with the clock: a standby copy answers as of it.
    last_pane = window.last_pane
    merchant_windows.persist(
        partition, window, through, outcome.pane_deltas, pane_cells, offset, last_pane=last_pane
    )
    topic = merchant_purchases.get_topic_name()
    EVENTS.labels(topic, "counted").inc(counted)
    EVENTS.labels(topic, "redelivered").inc(len(decoded) - counted - len(late))
    await set_aside_late(window, wall, [fresh[index] for index in outcome.late], "merchants")
    await slide(partition, window, wall)


def fold_hours(
    partition: int,
    carried: Sequence[Carried],
    through: dict[int | None, int],
    sources: Mapping[int, tuple[Source, int]],
) -> int:
    """Add each purchase to its merchant-hour unless the cell holds it already (`sources`:
    each message's origin, by its id); each touched cell written once. Returns how many
    purchases were added."""
    cells: dict[bytes, tuple[Stamped | None, HourFigures]] = {}
    added = 0
    for event, purchase in carried:
        key = cell_key(hour_of(purchase), tenant_of_purchase(purchase))
        if key not in cells:
            before = read_cell(merchant_hours, key, partition)
            figures = HourFigures() if before is None else HourFigures.from_record(value_of(before))
            cells[key] = (before, figures)
        before, figures = cells[key]
        source, offset = sources[id(event)]
        if holds(before, offset, source):
            continue
        figures.add(
            purchase["quantity"],
            purchase["unit_price_cents"],
            purchase["customer_id"],
            purchase["metadata"],
        )
        added += 1
    for key, (before, figures) in cells.items():
        write_cell(merchant_hours, key, stamp(figures.to_record(), through, before), partition)
    return added


async def slide(partition: int, window: SlidingTotals, wall_ms: int) -> None:
    """Slide the window to the watermark; the hours it left are final: each is sent on once
    and merged into its day (where the partition got to is kept in its clock record); then
    hours and days past the hot tier are deleted locally."""
    merchant_windows.slide(partition, window, wall_ms, keep_top=0)
    last_pane = window.last_pane
    final = final_before(last_pane)
    if last_pane is None or final is None:
        return
    clock = merchant_windows.saved_clock(partition)
    before = clock.get("final_before")
    if before is not None and before >= final:
        return  # (the window moved within its hours: nothing became final)
    start = b"" if before is None else time_prefix(before)
    sent: list[Awaitable[RecordMetadata]] = []
    closed = list(scan(merchant_hours, partition, start, time_prefix(final)))
    days: dict[bytes, DayFigures] = {}
    for key, value in closed:
        hour_ms, merchant = split_cell_key(key)
        record = value_of(stored_value(value))
        day_key = cell_key(day_start(hour_ms), merchant)
        if day_key not in days:
            days[day_key] = DayFigures.from_record(read_cell(merchant_days, day_key, partition))
        days[day_key].add_hour(hour_ms, HourFigures.from_record(record))
        sent.append(
            await final_hours.send(
                key=f"{merchant}|{hour_ms}".encode(),
                value={"merchant": merchant, "hour_ms": hour_ms, **record},
            )
        )
    # The partition's progress is written once the broker holds every hour it covers: a crash
    # before then sends them again (the archive keeps each merchant-hour once).
    await asyncio.gather(*sent)
    for day_key, day in days.items():
        write_cell(merchant_days, day_key, day.to_record(), partition)
    clock = {**clock, "final_before": final, "last_pane": last_pane}
    write_cell(merchant_clocks, partition_key(partition), clock, partition)
    drop_past(partition, last_pane)


@app.agent(merchant_purchases)
async def count_merchants(stream: StreamT) -> None:
    await each_partition(stream, count_partition, merchant_windows.windows)
