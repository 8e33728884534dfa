"""A reader's copies of tables (TALLY_ROLE=read): every partition of their changelogs, followed
outside the consumer group and written into local RocksDB, so that queries are answered by
processes that never take part in processing.

A standby copy comes with a group member, which the group gives partitions to process when
another member leaves; a reader holds every partition and is never given work. It reads the
changelogs as the bulk restore does (large fetches, one write batch per fetch, the offset
reached recorded as Faust records it), from where its copy got to, so a restarted reader reads
only what it missed. The owner deletes old cells locally without tombstones; `applied` lets the
pipeline do the same to a copy after each fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP, CollectionT
from mode import Service

from tally.broker.admin import end_offsets, topic_partitions
from tally.runtime.faust_compat import recorded_offset
from tally.runtime.restore import (
    FETCH_RECORDS,
    REPORT_EVERY_S,
    RestoreProgress,
    changelog_reader,
    write_records,
)
from tally.settings import current_settings
from tally.telemetry import COPY_RECORDS_BEHIND

logger = logging.getLogger(__name__)

#: How long a fetch waits for records when the copies are current (the added staleness).
POLL_MS = 100


class ChangelogFollower(Service):
    """Copies of every partition of `tables`, kept current from their changelogs. Within a
    fetch, tables are written in the order given: list last a table whose record says how far
    the others are (a clock record). Across fetches nothing orders them: the changelogs are
    separate topics."""

    def __init__(
        self,
        name: str,
        tables: Sequence[CollectionT],
        applied: Callable[[int], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.name, self.tables, self.applied = name, tables, applied
        #: Set once the copies hold what the changelogs held when following began.
        self.loaded = False
        self.progress: RestoreProgress | None = None
        #: changelog partition → the next offset to read; → the broker's end, as last fetched.
        self.positions: dict[TP, int] = {}
        self.highwaters: dict[TP, int] = {}
        #: Failed attempts since the last fetch that worked.
        self.failures = 0
        followers.append(self)

    def behind(self) -> int:
        """Changelog records not yet in the copies, as of the last fetch."""
        return sum(
            max(0, self.highwaters.get(tp, position) - position)
            for tp, position in self.positions.items()
        )

    def describe(self) -> dict[str, Any]:
        return {
            "pipeline": self.name,
            "loaded": self.loaded,
            "partitions": len({tp.partition for tp in self.positions}),
            "records_behind": self.behind(),
            "load": self.progress.describe() if self.progress else None,
        }

    @Service.task
    async def _follow(self) -> None:
        """Follow until stopped; after any failure (the broker gone, a disk error), start
        again a second later from what the copies recorded: the copies stop moving meanwhile
        (`stale_by_ms` says so), they are never left half-written."""
        while not self.should_stop:
            try:
                await self._follow_once()
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:  # an outage: said once, not every second
                log = logger.warning if self.failures == 0 else logger.debug
                log("following %s changelogs failed (%r); retrying each second", self.name, exc)
            except Exception:
                logger.exception("following %s changelogs failed; retrying each second", self.name)
            self.failures += 1
            await asyncio.sleep(1.0)

    async def _follow_once(self) -> None:
        consumer = changelog_reader(current_settings())
        await consumer.start()
        try:
            partitions = await self._changelog_partitions(consumer)
            consumer.assign(list(partitions))
            for ktp, (table, tp) in partitions.items():
                stored = recorded_offset(table, tp)
                if stored is None:
                    await consumer.seek_to_beginning(ktp)
                else:
                    consumer.seek(ktp, stored + 1)
                self.positions[tp] = await consumer.position(ktp)
            ends = await end_offsets(consumer, partitions)
            if not self.loaded:
                to_read = (ends[ktp] - self.positions[tp] for ktp, (_, tp) in partitions.items())
                self.progress = RestoreProgress(
                    sum(max(0, n) for n in to_read), title=f"loading {self.name} copies"
                )
            await self._read(consumer, partitions, ends)
        finally:
            await consumer.stop()

    async def _changelog_partitions(
        self, consumer: AIOKafkaConsumer
    ) -> dict[TopicPartition, tuple[CollectionT, TP]]:
        """Every partition of every table's changelog, once the changelogs exist (the
        processing workers create them: a reader waits rather than create them unconfigured)."""
        found: dict[TopicPartition, tuple[CollectionT, TP]] = {}
        waited = False
        for table in self.tables:
            topic = table.changelog_topic.get_topic_name()
            while not (partitions := await topic_partitions(consumer, topic)):
                if not waited:
                    logger.info("waiting for changelog %s (a processing worker makes it)", topic)
                    waited = True
                await asyncio.sleep(1.0)
            for ktp in partitions:
                found[ktp] = (table, TP(ktp.topic, ktp.partition))
        return found

    async def _read(
        self,
        consumer: AIOKafkaConsumer,
        partitions: dict[TopicPartition, tuple[CollectionT, TP]],
        ends: dict[TopicPartition, int],
    ) -> None:
        order = {table.name: index for index, table in enumerate(self.tables)}
        reported = time.monotonic()
        while not self.should_stop:
            fetched = await consumer.getmany(timeout_ms=POLL_MS, max_records=FETCH_RECORDS)
            touched = set()
            for ktp, records in sorted(
                fetched.items(), key=lambda item: order[partitions[item[0]][0].name]
            ):
                table, tp = partitions[ktp]
                if records:
                    write_records(table, tp, records)
                    touched.add(tp.partition)
                    if self.progress is not None and not self.loaded:
                        self.progress.done += len(records)
            for ktp, (_, tp) in partitions.items():
                # The position, not the last record's offset + 1: past a transaction marker.
                self.positions[tp] = await consumer.position(ktp)
                highwater = consumer.highwater(ktp)
                if highwater is not None:
                    self.highwaters[tp] = highwater
            self.failures = 0
            COPY_RECORDS_BEHIND.labels(self.name).set(self.behind())
            for partition in sorted(touched):
                self.applied(partition)
            if not self.loaded:
                now = time.monotonic()
                if all(self.positions[tp] >= ends[ktp] for ktp, (_, tp) in partitions.items()):
                    self._loaded()
                elif now - reported >= REPORT_EVERY_S and self.progress is not None:
                    reported = now
                    logger.info(self.progress.line())

    def _loaded(self) -> None:
        self.loaded = True
        if self.progress is not None:
            self.progress.finished = time.monotonic()
            logger.info(
                "%s copies loaded: %s changelog records in %.1f s; following",
                self.name,
                f"{self.progress.done:,}",
                self.progress.finished - self.progress.started,
            )


#: Every follower of this process (`/api/health` describes them).
followers: list[ChangelogFollower] = []
