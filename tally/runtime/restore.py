"""Bulk restore of table partitions from their changelogs, ahead of Faust's own recovery.

Faust restores one changelog record at a time through its consumer, its stream machinery and a
queue: about 9,000 records/s here, so a worker rebuilding millions of records is out for
minutes. Here, once Faust knows where each active partition's restore starts and ends, a plain
consumer reads those changelog partitions in large fetches and writes each fetch to the
partition's RocksDB database as one write batch, then records the offset it reached the way
Faust does; Faust's recovery then finds nothing (or only a tail) left to read.

Every active partition with records to read takes this path: Faust's own can skip records
when it starts reading (core.continuity), and an active must not start from a hole. Standby
partitions keep Faust's path: they catch up in the background once the worker is ready, so a
failover never waits for a standby it was just given; what it skips there is read again by
this reader within seconds (`BulkRecovery._mend_standby_holes`), or when the standby is
promoted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP, CollectionT, ConsumerT
from mode import Service
from rocksdict import WriteBatch

from tally.runtime.faust_compat import continuity, partition_db, record_read_through
from tally.settings import Settings, current_settings

logger = logging.getLogger(__name__)

#: Standbys' buffered changelog records are applied at least this often (seconds).
STANDBY_APPLY_S = 1.0
#: Standby copies' changelog holes are mended this often (seconds), each stretch from a hole
#: read again holding each key's newest record in memory until written at once, up to this
#: many bytes (a bigger one waits for the copy's next restore).
STANDBY_MEND_S = 5.0
STANDBY_MEND_MAX_BYTES = 64 << 20
#: Seconds a mend may read for (the rest is read at the next tick).
STANDBY_MEND_READ_S = 30.0
#: Faust gives each recovery step broker_request_timeout and stops recovering for good when a
#: step overruns it: the bulk restore hands what is left to Faust well before that.
SHARE_OF_STEP_TIMEOUT = 0.6
#: A partition that yields nothing for this long is left to Faust (e.g. an open transaction).
STALL_S = 5.0
#: Seconds between progress lines in the log.
REPORT_EVERY_S = 2.0
FETCH_RECORDS = 20_000

#: (first offset to read, last offset to read), both inclusive.
Span = tuple[int, int]


@dataclass
class RestoreProgress:
    """Records restored of those to restore, for the log and `/api/health`."""

    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    #: What is under way, for the log line.
    title: str = "restoring tables from changelogs"

    def rate(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def seconds_left(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def describe(self) -> dict[str, Any]:
        left = self.seconds_left()
        return {
            "running": self.finished is None,
            "records_restored": self.done,
            "records_to_restore": self.total,
            "records_per_second": round(self.rate()),
            "seconds_left": None if left is None else round(left, 1),
        }

    def line(self) -> str:
        left = self.seconds_left()
        eta = "" if left is None else f", about {left:.0f} s left"
        return f"{self.title}: {self.done:,} of {self.total:,} records ({self.rate():,.0f}/s{eta})"


async def read_spans(
    consumer: AIOKafkaConsumer,
    spans: Mapping[TP, Span],
    apply: Callable[[TP, Sequence[ConsumerRecord]], None],
    progress: RestoreProgress,
    deadline: float,
) -> set[TP]:
    """Read each partition's span in order, handing every fetch to `apply`; stop at the
    deadline or when nothing comes for `STALL_S`. Returns the partitions not read through."""
    # aiokafka wants its own TopicPartition type: a Faust TP with the same fields is refused.
    kafka_tps = {TopicPartition(tp.topic, tp.partition): tp for tp in spans}
    pending = {ktp for ktp, tp in kafka_tps.items() if spans[tp][0] <= spans[tp][1]}
    consumer.assign(list(pending))
    for ktp in pending:
        consumer.seek(ktp, spans[kafka_tps[ktp]][0])
    quiet_since = time.monotonic()
    reported = quiet_since
    while pending and time.monotonic() < deadline:
        fetched = await consumer.getmany(*pending, timeout_ms=500, max_records=FETCH_RECORDS)
        now = time.monotonic()
        for ktp, records in fetched.items():
            tp = kafka_tps[ktp]
            wanted = [r for r in records if r.offset <= spans[tp][1]]
            if wanted:
                apply(tp, wanted)
                progress.done += len(wanted)
                quiet_since = now
        for ktp in list(pending):
            if await consumer.position(ktp) > spans[kafka_tps[ktp]][1]:
                pending.discard(ktp)
                consumer.pause(ktp)
        if now - quiet_since > STALL_S:
            logger.warning("changelog partitions gave nothing for %.0f s: %s", STALL_S, pending)
            break
        if now - reported >= REPORT_EVERY_S:
            reported = now
            logger.info(progress.line())
    return {kafka_tps[ktp] for ktp in pending}


def size_of(record: ConsumerRecord) -> int:
    return len(record.key or b"") + len(record.value or b"")


def write_records(table: CollectionT, tp: TP, records: Sequence[ConsumerRecord]) -> None:
    """One fetch of a changelog partition into the table's RocksDB partition, then the offset
    reached, as Faust records it (a crash between the two re-reads the fetch: records are
    whole values, so writing one again changes nothing)."""
    batch = WriteBatch(raw_mode=True)
    for record in records:
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
    partition_db(table, tp.partition).write(batch)
    record_read_through(table, tp, records[-1].offset)


def changelog_reader(settings: Settings) -> AIOKafkaConsumer:
    """A consumer outside any group for reading changelogs in large fetches (committed
    records only, under exactly_once)."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=(
            "read_committed"
            if settings.processing_guarantee == "exactly_once"
            else "read_uncommitted"
        ),
        max_partition_fetch_bytes=16 << 20,
        fetch_max_bytes=64 << 20,
    )


async def stop_quietly(consumer: AIOKafkaConsumer) -> None:
    """Stop `consumer`; a failure to stop must not end Faust's recovery task. (aiokafka's stop
    after a failed `assign` raises CancelledError from a task of its own: only a cancel of
    this task itself goes on.)"""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        logger.warning("the restore consumer stopped with a cancelled task of its own")
    except Exception as exc:
        logger.warning("the restore consumer did not stop cleanly: %r", exc)


class BulkRecovery(Recovery):
    """Faust's recovery, with the active partitions' changelogs bulk-read first, and the
    standbys' changelog records applied at least every STANDBY_APPLY_S, their holes mended."""

    #: The last bulk restore's progress (None before the first).
    progress: RestoreProgress | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Holes (changelog partition, first offset) too big to mend, said once; and the
        #: rebalance they wait for a restore in (Faust's count).
        self.left_for_restore: set[tuple[TP, int]] = set()
        self.left_in_rebalance = 0
        #: Standby holes mended since the worker started.
        self.holes_mended = 0

    @Service.timer(STANDBY_APPLY_S)
    async def _apply_standby_records(self) -> None:
        """Once recovered, Faust applies a standby's changelog records only when a table has
        buffered its `standby_buffer_size` (1,000) of them: a standby copy could trail by a
        thousand records for minutes. Applied here at least every second, so a copy is as
        fresh as the owner's changelog (and a promotion has less to read)."""
        if not self.in_recovery and any(self.buffers.values()):
            self.flush_buffers()

    @Service.timer(STANDBY_MEND_S)
    async def _mend_standby_holes(self) -> None:
        """A standby copy with a hole (Faust's recovery drops records fetched between its
        seek and the resume of its flow) is unfit to answer from, and Faust reads the hole
        again only at the copy's next restore, after the next rebalance; seeking its
        consumer back races the records already fetched, which Faust applies and then drops
        the reread as seen. Here the stretch from the hole to the last record applied is read
        by a reader that drops nothing (what it skips is not in the log: compaction) and
        written between two of Faust's batches."""
        if self.in_recovery or self.app.rebalancing:
            return
        if self.left_in_rebalance != self.app.rebalancing_count:  # restored since
            self.left_for_restore.clear()
            self.left_in_rebalance = self.app.rebalancing_count
        holes = {
            tp: hole
            for tp, hole in self.standby_holes().items()
            if (tp, hole) not in self.left_for_restore
        }
        if not holes:
            return
        consumer = changelog_reader(current_settings())
        try:
            await consumer.start()
            for tp in sorted(holes):
                await self._mend(consumer, tp, holes[tp])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker is away, say: tried again at the next tick
            logger.warning("mending standby copies stopped: %r", exc)
        finally:
            await stop_quietly(consumer)

    def standby_holes(self) -> dict[TP, int]:
        """Standby changelog partitions with an open hole, and where it begins."""
        return {
            tp: hole
            for tp in self.standby_tps
            if (table := self.tp_to_table.get(tp)) is not None
            and (hole := continuity.hole((table.name, tp))) is not None
        }

    async def _mend(self, consumer: AIOKafkaConsumer, tp: TP, hole: int) -> None:
        """Read `tp` from `hole` through the last record Faust applied, again until no batch
        was applied meanwhile, then write each key's newest record at once: written as they
        come, a record could land over a newer value Faust applied in between."""
        if not self.caught_up_since_assigned(tp):
            return  # mended once it has
        table = self.tp_to_table[tp]
        key = (table.name, tp)
        rebalance = self.app.rebalancing_count
        newest: dict[bytes, ConsumerRecord] = {}
        held = 0  # bytes of `newest`

        def keep(_: TP, records: Sequence[ConsumerRecord]) -> None:
            nonlocal held
            for record in records:
                before = newest.get(record.key)
                held += size_of(record) - (0 if before is None else size_of(before))
                newest[record.key] = record

        read_to = hole - 1
        deadline = time.monotonic() + STANDBY_MEND_READ_S
        title = f"mending {tp.topic}[{tp.partition}]"
        while (last := continuity.last(key)) is not None and last > read_to:
            progress = RestoreProgress(last - read_to, title=title)
            if await read_spans(consumer, {tp: (read_to + 1, last)}, keep, progress, deadline):
                return  # not read through: tried again at the next tick
            if held > STANDBY_MEND_MAX_BYTES:
                self.left_for_restore.add((tp, hole))
                logger.warning(
                    "%s[%s]: standby copy lacks offsets from %s, more than %s MiB to read "
                    "again: it answers no query until its next restore",
                    tp.topic,
                    tp.partition,
                    hole,
                    STANDBY_MEND_MAX_BYTES >> 20,
                )
                return
            read_to = last
        # Nothing awaited from here on: Faust applies no batch until the stretch is written.
        if (
            last != read_to
            or read_to < hole
            or self.in_recovery
            or self.app.rebalancing
            or self.app.rebalancing_count != rebalance
            or tp not in self.standby_tps
            or continuity.hole(key) != hole
        ):
            return  # went back (a restore) or moved: seen again at the next tick
        if newest:
            write_records(table, tp, sorted(newest.values(), key=lambda r: r.offset))
        record_read_through(table, tp, read_to)
        self.holes_mended += 1
        logger.info(
            "%s[%s]: standby copy's hole from %s mended (%s records read again)",
            tp.topic,
            tp.partition,
            hole,
            f"{read_to - hole + 1:,}",
        )

    def holds_current_copies(self, tables: Sequence[CollectionT], partition: int) -> bool:
        """Whether this worker keeps a standby copy of `partition` of every one of `tables`,
        fit to answer from: with no open changelog hole (core.continuity), and caught up with
        what each changelog held when the copy was assigned (before that, copies of tables
        written together would not agree with one another)."""
        standbys = self.app.assignor.assigned_standbys()
        for table in tables:
            tp = TP(table.changelog_topic.get_topic_name(), partition)
            if tp not in standbys or not continuity.whole((table.name, tp)):
                return False
            if not self.caught_up_since_assigned(tp):
                return False
        return True

    def caught_up_since_assigned(self, tp: TP) -> bool:
        """Whether a standby partition has read what its changelog held when assigned."""
        highwater = self.standby_highwaters.get(tp)
        return highwater is not None and self.standby_offsets.get(tp, -1) >= highwater

    async def _build_offsets(
        self, consumer: ConsumerT, tps: set[TP], destination: Any, title: str
    ) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if destination is self.active_offsets and current_settings().restore == "bulk":
            await self._bulk_restore(destination)

    async def _bulk_restore(self, offsets: Any) -> None:
        highwaters = self.active_highwaters
        spans = {
            tp: (offsets[tp] + 1, highwaters[tp])
            for tp in self.active_tps
            if offsets.get(tp) is not None and highwaters.get(tp) is not None
        }
        total = sum(max(last - first + 1, 0) for first, last in spans.values())
        if total == 0:
            return
        settings = current_settings()
        step_timeout = self.app.conf.broker_request_timeout
        deadline = time.monotonic() + SHARE_OF_STEP_TIMEOUT * step_timeout
        self.progress = progress = RestoreProgress(total)
        logger.info(progress.line())
        consumer = changelog_reader(settings)

        def apply(tp: TP, records: Sequence[ConsumerRecord]) -> None:
            write_records(self.tp_to_table[tp], tp, records)
            offsets[tp] = records[-1].offset

        try:
            await consumer.start()
            await read_spans(consumer, spans, apply, progress, deadline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Faust's own path reads whatever is left
            logger.warning("bulk restore stopped (%r); Faust's recovery reads the rest", exc)
        finally:
            progress.finished = time.monotonic()
            await stop_quietly(consumer)
        left = total - progress.done
        logger.info(
            "restored %s changelog records in %.1f s (%s/s)%s",
            f"{progress.done:,}",
            progress.finished - progress.started,
            f"{progress.rate():,.0f}",
            f"; Faust's recovery reads the remaining {left:,}" if left else "",
        )


class RestoringTableManager(TableManager):
    """Faust's table manager, recovering through `BulkRecovery` (app setting TableManager)."""

    @property
    def recovery(self) -> BulkRecovery:
        if self._recovery is None:
            self._recovery = BulkRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return cast(BulkRecovery, self._recovery)
