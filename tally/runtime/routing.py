"""Messages on another partition than their key's go to the owner of the key.

State and queries of a key live with the partition murmur2 gives it (core.partitioning); a
producer with another partitioner (librdkafka's default CRC32, random) writes elsewhere. Such a
message is forwarded, as it came or cut down to the records the owner needs, to the same
partition number of the source's routed topic (co-partitioned: the owner's worker reads it),
carrying its origin. The owner's pipeline reads both topics; records keep per-source offsets
(core.applied), so a message forwarded twice counts once.

Forwarded messages come one hop later than the owner's own, and when a backlog is read, much
later in event time. So every partition announces its own watermark on the routed topic to
every other partition (`announce`, in order with what it forwarded), and a partition's
watermark never passes the slowest announced one (core.windowing.EventClock): a message is
late only if it would have been late where the producer put it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka.structs import RecordMetadata
from faust.types import EventT, TopicT

from tally.app import settings
from tally.codecs.avro import Record
from tally.codecs.handover import HandedRecords
from tally.core.applied import Source
from tally.core.partitioning import (
    ORIGIN_HEADER,
    RESTING_HEADER,
    WATERMARK_HEADER,
    parse_partition_tag,
    partition_tag,
)
from tally.core.windowing import UNBOUNDED, EventClock
from tally.runtime.topics import metric_samples, purchases, routed_metric_samples, routed_purchases
from tally.telemetry import EVENTS

#: source topic name → the topic its misplaced messages are forwarded to.
ROUTES: dict[str, TopicT] = {
    purchases.get_topic_name(): routed_purchases,
    metric_samples.get_topic_name(): routed_metric_samples,
}
#: routed topic name → its source topic name.
SOURCES = {topic.get_topic_name(): source for source, topic in ROUTES.items()}


#: A partition announces a new watermark at most this often, and the same one again after
#: HEARTBEAT_S (an owner that starts without a clock record, or hears nothing, hears it soon).
ANNOUNCE_EVERY_S = 0.2
HEARTBEAT_S = 1.0


def is_forwarded(event: EventT) -> bool:
    return event.message.topic in SOURCES


def announcement(event: EventT) -> tuple[int, int, bool] | None:
    """(partition, watermark ms, resting) if the event is a watermark announcement."""
    raw = event.headers.get(WATERMARK_HEADER) if is_forwarded(event) else None
    if raw is None:
        return None
    partition, watermark_ms = parse_partition_tag(raw)
    return partition, watermark_ms, event.headers.get(RESTING_HEADER) == b"1"


@dataclass
class Forwarded:
    """What a batch sent on from its partition (forwarded or re-keyed): the deliveries and the
    event times, which move the partition's clock only once the broker has them all. The
    clock is a table cell, on disk at the next flush of the cell cache, which may come before
    the records leave the producer: after a SIGKILL a clock restored ahead of records the
    broker never got would let their owners' watermarks pass them, and they would be late
    when sent again."""

    deliveries: list[Awaitable[RecordMetadata]] = field(default_factory=list)
    #: The newest event time sent (None: none): all the clock takes.
    newest: int | None = None

    def add(self, deliveries: Iterable[Awaitable[RecordMetadata]], times: Iterable[int]) -> None:
        self.deliveries.extend(deliveries)
        latest = max(times, default=None)
        if latest is not None and (self.newest is None or latest > self.newest):
            self.newest = latest

    async def acknowledged(self) -> None:
        """Wait until the broker has every record sent (a failed delivery raises)."""
        await asyncio.gather(*self.deliveries)

    def move(self, clock: EventClock, wall_ms: int) -> None:
        """`clock` takes the times (after `acknowledged`)."""
        if self.newest is not None:
            clock.observe(self.newest, wall_ms)


def hear_all(clock: EventClock, events: Sequence[EventT]) -> None:
    """Give `clock` the announcements among `events`."""
    for event in events:
        heard = announcement(event)
        if heard is not None:
            clock.hear(*heard)


#: (source topic, partition) → (what it announced last: watermark and resting, when).
_announced: dict[tuple[str, int], tuple[tuple[int, bool], float]] = {}


def others(partition: int) -> frozenset[int]:
    """The partitions whose announcements `partition`'s watermark waits for."""
    return frozenset(range(settings.partitions)) - {partition}


async def announce(
    source: TopicT,
    partition: int,
    own_watermark: int | None,
    idle: bool | None,
    to: TopicT | None = None,
) -> None:
    """Tell every other partition of `source`'s routed topic (or every partition of `to`,
    where a re-keyed copy goes), after what this partition forwarded, how far its own
    messages are (`UNBOUNDED`: it has none) and whether it is caught up (`idle`: then it holds
    no one back, EventClock): when that changed, at most every ANNOUNCE_EVERY_S; the same
    again (a resting partition's mark follows the wall clock: counts as the same) every
    HEARTBEAT_S. Nothing while `idle` is unknown and there is no watermark yet."""
    watermark_ms = own_watermark if own_watermark is not None else UNBOUNDED if idle else None
    if watermark_ms is None:
        return
    destination = to or ROUTES[source.get_topic_name()]
    name, now, resting = destination.get_topic_name(), time.monotonic(), bool(idle)
    last = _announced.get((name, partition))
    if last is not None:
        (last_mark, was_resting), at = last
        same = was_resting == resting and (resting or last_mark == watermark_ms)
        if now - at < (HEARTBEAT_S if same else ANNOUNCE_EVERY_S):
            return
    _announced[(name, partition)] = ((watermark_ms, resting), now)
    headers = {WATERMARK_HEADER: partition_tag(partition, watermark_ms)}
    if resting:
        headers[RESTING_HEADER] = b"1"
    for other in range(settings.partitions):
        if other != partition or to is not None:
            await destination.send(key=b"watermark", value=b"", partition=other, headers=headers)


def origin_of(event: EventT) -> tuple[str, int, int]:
    """(topic, partition, offset) a message was first written to: a dead letter names it, so
    `tally dlq replay` and a person reading it find the message where the producer put it."""
    message = event.message
    topic = SOURCES.get(message.topic)
    raw = event.headers.get(ORIGIN_HEADER) if topic is not None else None
    if topic is None or raw is None:
        return message.topic, message.partition, message.offset
    partition, offset = parse_partition_tag(raw)
    return topic, partition, offset


def source_of(event: EventT) -> tuple[Source, int]:
    """The message's origin as records keep it (core.applied): (None, offset) for a message
    of the record's own partition, (source partition, offset) for a forwarded one."""
    raw = event.headers.get(ORIGIN_HEADER) if is_forwarded(event) else None
    if raw is None:  # the partition's own message, or an announcement (no origin)
        return None, event.message.offset
    return parse_partition_tag(raw)


async def forward(
    event: EventT,
    owner: int,
    value: bytes | None = None,
    to: TopicT | None = None,
    origin_offset: int | None = None,
) -> Awaitable[RecordMetadata]:
    """Send the message (or `value`: the part of it `owner` needs) to `owner`'s partition of
    `to` (default: the source's routed topic), with its key and origin (`origin_offset`:
    another message of its partition, when `value` holds several messages' records);
    counted as `forwarded`, or `rekeyed` when `to` is another pipeline's topic. Returns
    its delivery (awaited: acknowledged by the broker)."""
    message = event.message
    offset = message.offset if origin_offset is None else origin_offset
    delivery = await (to or ROUTES[message.topic]).send(
        key=message.key,
        value=message.value if value is None else value,
        partition=owner,
        headers={ORIGIN_HEADER: partition_tag(message.partition, offset)},
    )
    EVENTS.labels(message.topic, "forwarded" if to is None else "rekeyed").inc()
    return delivery


async def hand_over(
    last: EventT,
    owner: int,
    carried: Sequence[tuple[int, Record]],
    handed: HandedRecords,
    to: TopicT,
) -> list[Awaitable[RecordMetadata]]:
    """A partition's records for `owner`, each with the offset of the message of `last`'s
    partition that brought it (in offset order), to `owner`'s partition of `to`, in as few
    messages as they fit (`HandedRecords.messages`), each with the origin of the last
    message whose records it holds. Returns their deliveries."""
    return [
        await forward(last, owner, value, to=to, origin_offset=origin_offset)
        for origin_offset, value in handed.messages(carried)
    ]


async def hand_over_all(
    last: EventT,
    by_owner: Mapping[int, Sequence[tuple[int, Record]]],
    handed: HandedRecords,
    to: TopicT,
) -> list[Awaitable[RecordMetadata]]:
    """`hand_over` each owner's records; returns every delivery."""
    return [
        delivery
        for owner, theirs in by_owner.items()
        for delivery in await hand_over(last, owner, theirs, handed, to)
    ]


def rekeyed_from(source: TopicT, rekeyed: TopicT) -> None:
    """Messages of `rekeyed` are `source`'s, cut by another key (one message per origin and
    target partition): known by their origin, as forwarded ones are (records keep their
    offsets per source partition; a dead letter names the message the producer wrote)."""
    SOURCES[rekeyed.get_topic_name()] = source.get_topic_name()
