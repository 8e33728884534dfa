"""The write-behind cell cache (core.cells) in front of the pipelines' RocksDB tables.

Agents read and write cells here (`read_cell`, `write_cell`); queries scan through it
(runtime.store). Cells reach the table (one RocksDB write batch per partition) and its
changelog (record batches handed straight to the Kafka client) at every `flush`: before Faust
commits source offsets (its producer flush, faust_compat, which then awaits the client's own
flush), after a batch once the cache holds TALLY_CELL_CACHE_CELLS (0: after every batch,
i.e. write-through), when partitions are revoked (Faust flushes its producer then), before
a table stops, and when it holds cells nothing wrote out for a commit interval
(`flush_if_quiet`: Faust commits only new offsets, so cells timers write with no traffic
would otherwise wait). So a committed offset never passes a change the tables lack; after a
SIGKILL the cells not flushed are lost with their offsets uncommitted, and the redelivered
events write them again (the offsets stamped in each cell make a repeat harmless,
core.applied).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from faust.types import TP, CollectionT
from mode.utils.times import want_seconds
from rocksdict import WriteBatch

from tally.app import app, settings
from tally.core.cells import NOT_HELD, Cell, DirtyCells, Place
from tally.core.limits import check_record_size
from tally.runtime.bounded import BoundedTable, before_stop
from tally.runtime.faust_compat import (
    before_producer_flush,
    changelog_sent,
    decode_value,
    encode_value,
    in_commit_flush,
    partition_db,
)
from tally.runtime.record_batches import Delivery, send_records
from tally.telemetry import CELL_WRITES, WRITE_OUT_SECONDS

logger = logging.getLogger(__name__)

dirty = DirtyCells()


def place(table: CollectionT, partition: int) -> Place:
    return (table.name, partition)


def read_cell(table: CollectionT, key: bytes, partition: int) -> Any:
    """The cell's newest value: written and not flushed yet, else the table's (None: none)."""
    raw = raw_cell(table, key, partition)
    return None if raw is None else decode_value(table, raw)


def has_cell(table: CollectionT, key: bytes, partition: int) -> bool:
    """Whether the cell exists (written and not flushed yet, or in the table): no decoding."""
    return raw_cell(table, key, partition) is not None


def raw_cell(table: CollectionT, key: bytes, partition: int) -> Cell:
    raw = dirty.get(place(table, partition), key)
    return partition_db(table, partition).get(key) if raw is NOT_HELD else raw


#: Rebalances so far: on each, tables may change outside the cache (restores, a standby's
#: changelog becoming the active copy).
rebalances = 0


def version(table: CollectionT, partition: int) -> tuple[int, int]:
    """Changes to one partition of a table so far: equal versions, equal content (every
    write and delete of an owned partition goes through here, and a rebalance moves it on)."""
    return rebalances, dirty.changes(place(table, partition))


async def count_rebalance(sender: object, *partitions: object, **kwargs: object) -> None:
    global rebalances
    rebalances += 1


def write_cell(table: CollectionT, key: bytes, value: Any, partition: int) -> None:
    write_cells(table, {key: value}, partition)


def write_cells(table: CollectionT, values: dict[bytes, Any], partition: int) -> None:
    """Set the cells (None: delete one), all or none: their sizes are checked now
    (`RecordTooLarge` reaches the agent, which dead-letters the event), the writes happen at
    the next flush. A deleted cell is gone for reads now, and from the table with a changelog
    tombstone at the flush (so from standbys and restores too)."""
    encoded = {
        key: None if value is None else encode_value(table, value) for key, value in values.items()
    }
    for key, raw in encoded.items():
        if raw is not None:
            check_record_size(f"table {table.name} record {key[:80]!r}", key, raw)
    where = place(table, partition)
    for key, raw in encoded.items():
        dirty.put(where, key, raw)


def delete_cells(table: CollectionT, keys: list[bytes], partition: int) -> None:
    """Delete the cells (`write_cells` with None for each)."""
    write_cells(table, dict.fromkeys(keys), partition)


#: Faust's transactional commit does not flush its producer first: there the cells are
#: written after every batch, as Faust's own table writes are.
WRITE_BEHIND = settings.processing_guarantee == "at_least_once"


async def batch_done() -> None:
    """An agent finished a batch: write out now if the cache is off or full."""
    if not WRITE_BEHIND or len(dirty) >= max(settings.cell_cache_cells, 1):
        await flush()


#: Held while a flush hands cells to the Kafka client.
flushing = asyncio.Lock()
#: When the last flush of every place began (time.monotonic).
_flushed_at = 0.0
#: Faust's commit interval: how long cells may wait with no commit to write them out.
QUIET_FLUSH_S = float(want_seconds(app.conf.broker_commit_interval))


async def flush_if_quiet() -> None:
    """Write out every place if cells wait and no flush of every place began for a commit
    interval: cells written while no message arrives (timers sliding windows, announcing
    clocks) would wait for no commit (Faust commits, and so flushes, only new offsets), and
    standbys and readers would not see them. Under traffic the commits' flushes come first."""
    if WRITE_BEHIND and len(dirty) and time.monotonic() - _flushed_at >= QUIET_FLUSH_S:
        await flush()


async def flush(places: list[Place] | None = None, acknowledged: bool = False) -> None:
    """Write the cells of `places` (all when None): a RocksDB write batch per partition, then
    their changelog records to the Kafka client (whose flush Faust awaits before a commit);
    `acknowledged`: return only once the broker has acknowledged them (at_least_once)."""
    global _flushed_at
    kind = "commit" if in_commit_flush.get() else "cells"
    async with flushing:  # a commit's flush waits until an earlier one handed its cells over
        began = time.monotonic()  # the wait for the lock is an earlier write-out's time
        if places is None:
            _flushed_at = began
        delivered = await write_out(dirty.places() if places is None else places)
        WRITE_OUT_SECONDS.labels(kind).observe(time.monotonic() - began)
    if acknowledged:
        await asyncio.gather(*delivered)


async def write_out(places: list[Place]) -> list[Delivery]:
    """Each place's cells to RocksDB and its changelog; the deliveries of the record batches.
    A place's cells leave the cache in the same step as they reach RocksDB (a read finds
    them in one or the other), and the loop serves others between places: thousands of
    cells written in one step would hold every query waiting behind it. The places'
    changelog records go out together (a place whose records were not all handed over goes
    back into the cache)."""
    sends: list[asyncio.Task[list[Delivery]]] = []
    try:
        for name, partition in places:
            table = app.tables[name]
            cells = dirty.take_place((name, partition))
            if cells:
                with put_back_unless_done(table, partition, cells, settles=not WRITE_BEHIND):
                    write_table(table, partition, cells)
                if WRITE_BEHIND:
                    sends.append(asyncio.create_task(send_changelog(table, partition, cells)))
            # also starts the send: cancelled before its first step, it could not put its
            # cells back
            await asyncio.sleep(0)
    except BaseException:
        for send in sends:
            send.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        raise
    sent = await asyncio.gather(*sends, return_exceptions=True)
    for failed in sent:
        if isinstance(failed, BaseException):
            raise failed
    return [delivery for deliveries in sent for delivery in cast(list[Delivery], deliveries)]


@contextmanager
def put_back_unless_done(
    table: CollectionT, partition: int, cells: dict[bytes, Cell], settles: bool = True
) -> Iterator[None]:
    """Cells not all written or sent go back into the cache, so no commit passes them (a
    record sent twice is harmless: each is the cell's whole value), unless written again
    or dropped since. A failed step settles them (DirtyCells.settle) once put back; a step
    that succeeds settles them if it `settles` (is their last: not a write to RocksDB that a
    changelog send follows)."""
    where = place(table, partition)
    try:
        yield
    except BaseException:
        for key, value in cells.items():
            dirty.put_back(where, key, value)
        dirty.settle(where)
        raise
    if settles:
        dirty.settle(where)


def write_table(table: CollectionT, partition: int, cells: dict[bytes, Cell]) -> None:
    """One place's cells in one RocksDB write batch (and, in transactions, through Faust's
    producer, whose transactions hold them)."""
    batch = WriteBatch(raw_mode=True)
    for key, value in cells.items():
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    partition_db(table, partition).write(batch)
    if not WRITE_BEHIND:
        for key, value in cells.items():  # their sizes were checked when written
            cast(BoundedTable, table).send_encoded(partition, key, value)
    CELL_WRITES.labels(table.name).inc(len(cells))


async def send_changelog(
    table: CollectionT, partition: int, cells: dict[bytes, Cell]
) -> list[Delivery]:
    """One partition's cells to its changelog in record batches (a deleted cell is a
    tombstone), back into the cache unless all are handed over; the offset each
    acknowledged batch reaches is recorded as Faust records its own."""
    tp = TP(table.changelog_topic.get_topic_name(), partition)

    def acknowledged(delivered: Delivery, count: int) -> None:
        if delivered.cancelled() or delivered.exception() is not None:
            logger.error(
                "table %s: %d changelog records of %s[%s] were not written (%r): a restore of "
                "that partition from its changelog would lack them",
                table.name,
                count,
                tp.topic,
                tp.partition,
                None if delivered.cancelled() else delivered.exception(),
            )
            return
        changelog_sent(table, tp, delivered.result().offset + count - 1)

    with put_back_unless_done(table, partition, cells):
        return await send_records(tp, cells.items(), acknowledged)


async def flush_table(table: CollectionT) -> None:
    """Before `table` stops (its databases close): its cells, whatever else waits."""
    await flush([p for p in dirty.places() if p[0] == table.name])


async def drop_revoked(sender: object, revoked: set[TP], **kwargs: object) -> None:
    """Faust waits for its agents and flushes its producer (and so this cache) before it
    revokes: nothing should be left. Should anything be, it is dropped with the revoked
    partitions' in-memory states (runtime.intake.forget_revoked), which are rebuilt from the
    tables: a cell of a partition another worker may own by now must not be written here."""
    changelogs = {t.changelog_topic.get_topic_name(): name for name, t in app.tables.items()}
    places = {(changelogs[tp.topic], tp.partition) for tp in revoked if tp.topic in changelogs}
    async with flushing:  # a flush that fails after this would put them back
        left = dirty.take(places)
    if left:
        logger.info("cells of %d revoked partitions written after the flush: dropped", len(left))


before_producer_flush.append(flush)
before_stop.append(flush_table)
# mode's annotation of a receiver admits no positional argument; Faust sends `revoked` as one.
app.on_partitions_revoked.connect(drop_revoked)  # type: ignore[arg-type]
app.on_partitions_revoked.connect(count_rebalance)  # type: ignore[arg-type]
app.on_partitions_assigned.connect(count_rebalance)  # type: ignore[arg-type]
