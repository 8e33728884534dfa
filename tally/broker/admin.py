"""Plain Kafka chores outside Faust: creating topics, reading one to its end, moving a group.

Topics are created with the configured partition count before anyone writes: a producer that
writes first would have the broker auto-create the topic with the broker's default partition
count, which need not match the tables' changelogs (TALLY_PARTITIONS).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import suppress

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord

from tally.broker.shim import aiokafka_client, fetched_high_watermarks
from tally.core.errors import BrokerError
from tally.core.generations import SERVING_TOPIC_CONFIG, first_offset_at

logger = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap_servers: list[str],
    names: Iterable[str] | Mapping[str, int],
    *,
    partitions: int,
    replication: int,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create each missing topic (`names` may map a name to its own partition count) with
    `configs`; existing ones are left as they are."""
    counts = dict(names) if isinstance(names, Mapping) else dict.fromkeys(names, partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=count,
                replication_factor=replication,
                topic_configs=dict(configs or {}),
            )
            for name, count in counts.items()
            if name not in existing
        ]
        if missing:
            with suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def track_topics(producer: AIOKafkaProducer, names: Iterable[str]) -> None:
    """Make `producer` keep the metadata (leaders, partitions) of every topic in `names`.

    aiokafka refreshes metadata only for topics it was asked about: a topic that merely came
    with the bootstrap metadata drops out at the next refresh, so a batch for it waits for a
    leader until it times out, and key routing cannot find its partitions.
    """
    for name in names:
        await producer.client.add_topic(name)
        await producer.partitions_for(name)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await aiokafka_client(consumer).force_metadata_update()  # the topic may be new to it
        partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def end_offsets(
    consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Each partition's end; the local broker's ListOffsets is off by a batch, a Fetch gets
    the true end (on Kafka the two agree)."""
    listed = await consumer.end_offsets(list(tps))
    return await fetched_high_watermarks(aiokafka_client(consumer), listed)


def reader(bootstrap_servers: list[str], group: str | None = None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def read_topic(bootstrap_servers: list[str], topic: str) -> AsyncIterator[ConsumerRecord]:
    """Every record from the start of the topic to its end as of this call."""
    consumer = reader(bootstrap_servers)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return
        ends = await end_offsets(consumer, tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        if not pending:
            return
        consumer.assign(list(pending))
        await consumer.seek_to_beginning(*pending)
        while pending:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
            if not batch:
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
    finally:
        await consumer.stop()


async def send_record(
    bootstrap_servers: list[str], topic: str, key: bytes, value: bytes | None
) -> None:
    """One record (None: a tombstone), acknowledged by the broker before this returns."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def offsets_at_time(
    bootstrap_servers: list[str], topic: str, from_ms: int
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition: (the first offset stamped at or after `from_ms`, the end offset).

    A binary search over record timestamps: the local broker answers every ListOffsets by
    time with offset 0, so Kafka's time index cannot be used on both brokers alike."""
    consumer = reader(bootstrap_servers)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await end_offsets(consumer, tps)
        found: dict[TopicPartition, tuple[int, int]] = {}
        for tp in tps:

            async def stamp_at(offset: int, tp: TopicPartition = tp) -> tuple[int, int] | None:
                consumer.seek(tp, offset)
                for _ in range(20):  # the broker may answer an empty fetch before the data
                    batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                    if batch.get(tp):
                        record = batch[tp][0]
                        return record.offset, record.timestamp
                    if await consumer.position(tp) >= ends[tp]:
                        return None
                raise BrokerError(f"{tp.topic}[{tp.partition}]@{offset} could not be read")

            found[tp] = (await first_offset_at(stamp_at, starts[tp], ends[tp], from_ms), ends[tp])
        return found
    finally:
        await consumer.stop()


async def commit_offsets(
    bootstrap_servers: list[str], group: str, offsets: Mapping[TopicPartition, int]
) -> None:
    """Set `group`'s committed offsets (the group must have no members: before its first
    start, or stopped), so that its next member starts there."""
    consumer = reader(bootstrap_servers, group)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(dict(offsets))
    finally:
        await consumer.stop()


async def committed_offsets(
    bootstrap_servers: list[str], group: str, topic: str
) -> dict[TopicPartition, int | None]:
    consumer = reader(bootstrap_servers, group)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        return {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def ensure_compacted_topic(bootstrap_servers: list[str], name: str, replication: int) -> None:
    """A deployment-wide topic of facts by key (which generation serves, revoked tokens): one
    partition, compacted, read whole by every worker (`follow_topic`)."""
    await ensure_topics(
        bootstrap_servers,
        {name: 1},
        partitions=1,
        replication=replication,
        configs=SERVING_TOPIC_CONFIG,
    )


async def follow_topic(
    bootstrap_servers: list[str],
    topic: str,
    absorb: Callable[[bytes | None, bytes | None], None],
    loaded: Callable[[], None],
    poll_ms: int = 500,
    replication: int | None = None,
    restart: Callable[[], None] = lambda: None,
) -> None:
    """Hand every record of a one-partition topic to `absorb`, from its start and then as they
    come, until cancelled; `loaded` is called once the records written before the call are in
    (until then a reader cannot know whether a later fact overrides what it has). With
    `replication`, the topic is created first if missing (`ensure_compacted_topic`). A broker
    that fails is retried every second, from the start again, after `restart` (a reader that
    rebuilds what it holds then sees keys compaction removed meanwhile go away)."""
    failures = 0
    while True:
        try:
            if replication is not None:
                await ensure_compacted_topic(bootstrap_servers, topic, replication)
            await _follow(bootstrap_servers, topic, absorb, loaded, poll_ms)
        except (KafkaError, OSError, BrokerError) as exc:
            failures += 1
            # Once, not every second: a broker that is gone is said once (BrokerWatch) too.
            log = logger.warning if failures == 1 else logger.debug
            log(
                "following %s failed (%s: %s); retrying every second",
                topic,
                type(exc).__name__,
                exc,
            )
            await asyncio.sleep(1.0)
            restart()


async def _follow(
    bootstrap_servers: list[str],
    topic: str,
    absorb: Callable[[bytes | None, bytes | None], None],
    loaded: Callable[[], None],
    poll_ms: int,
) -> None:
    consumer = reader(bootstrap_servers)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await end_offsets(consumer, [tp]))[tp]
        caught_up = False
        while True:
            batch = await consumer.getmany(tp, timeout_ms=poll_ms)
            for record in batch.get(tp, []):
                absorb(record.key, record.value)
            if not caught_up and await consumer.position(tp) >= end:
                caught_up = True
                loaded()
    finally:
        await consumer.stop()
