"""Messages on another partition than their key's go to the owner of the key.

State and queries of a key live with the partition murmur2 gives it (core.partitioning); a
producer with another partitioner (librdkafka's default CRC32, random) writes elsewhere. Such a
message is forwarded, as it came or cut down to the records the owner needs, to the same
partition number of the source's routed topic (co-partitioned: the owner's worker reads it),
carrying its origin. The owner's pipeline reads both topics; records keep per-source offsets
(core.applied), so a message forwarded twice counts once.
"""

from __future__ import annotations

from faust.types import EventT, TopicT

from tally.core.applied import Source
from tally.core.partitioning import ORIGIN_HEADER, origin_header, parse_origin
from tally.runtime.topics import metric_samples, purchases, routed_metric_samples, routed_purchases
from tally.telemetry import EVENTS

#: source topic name → the topic its misplaced messages are forwarded to.
ROUTES: dict[str, TopicT] = {
    purchases.get_topic_name(): routed_purchases,
    metric_samples.get_topic_name(): routed_metric_samples,
}
#: routed topic name → its source topic name.
SOURCES = {topic.get_topic_name(): source for source, topic in ROUTES.items()}


def is_forwarded(event: EventT) -> bool:
    return event.message.topic in SOURCES


def origin_of(event: EventT) -> tuple[str, int, int]:
    """(topic, partition, offset) a message was first written to: a dead letter names it, so
    `tally dlq replay` and a person reading it find the message where the producer put it."""
    message = event.message
    topic = SOURCES.get(message.topic)
    raw = event.headers.get(ORIGIN_HEADER) if topic is not None else None
    if topic is None or raw is None:
        return message.topic, message.partition, message.offset
    partition, offset = parse_origin(raw)
    return topic, partition, offset


def source_of(event: EventT) -> tuple[Source, int]:
    """The message's origin as records keep it (core.applied): (None, offset) for a message
    of the record's own partition, (source partition, offset) for a forwarded one."""
    if not is_forwarded(event):
        return None, event.message.offset
    _, partition, offset = origin_of(event)
    return partition, offset


async def forward(event: EventT, owner: int, value: bytes | None = None) -> None:
    """Send the message (or `value`: the part of it `owner` needs) to `owner`'s partition of
    the source's routed topic, with its key and origin."""
    message = event.message
    await ROUTES[message.topic].send(
        key=message.key,
        value=message.value if value is None else value,
        partition=owner,
        headers={ORIGIN_HEADER: origin_header(message.partition, message.offset)},
    )
    EVENTS.labels(message.topic, "forwarded").inc()
