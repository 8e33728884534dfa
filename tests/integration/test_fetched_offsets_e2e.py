"""What the Kafka client fetches reaches the gap record through the patch of Faust's fetch
(runtime.faust_compat.record_fetched_offsets), against the real broker: the agents' source
topics only, every fetched offset, a jump between fetches as a gap."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from tally.broker.local import LocalBroker
from tally.runtime.faust_compat import log_gaps, record_fetched_offsets


def test_fetched_offsets_of_the_sources_reach_the_gap_record(broker: LocalBroker) -> None:
    record_fetched_offsets()
    source, changelog = TopicPartition("purchases", 0), TopicPartition("metric-samples", 0)

    async def fetch_all() -> tuple[list[int], int]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        for _ in range(10):
            for tp in (source, changelog):
                await producer.send_and_wait(tp.topic, b"v", key=b"k", partition=tp.partition)
        await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        # What of Faust's consumer thread the patched method reads: flow on, the acked topics.
        thread = SimpleNamespace(
            consumer=SimpleNamespace(flow_active=True),
            app=SimpleNamespace(
                topics=SimpleNamespace(acks_enabled_for=lambda topic: topic == "purchases")
            ),
        )
        try:
            consumer.assign([source, changelog])
            consumer.seek(source, 0)
            consumer.seek(changelog, 0)
            changelog_jumped = False
            fetched: list[int] = []
            jumped_after = None
            for _ in range(40):
                records = await AIOKafkaConsumerThread._fetch_records(
                    thread, consumer, {source, changelog}, timeout=1.0, max_records=3
                )
                fetched += [r.offset for r in records.get(source, [])]
                if records.get(changelog) and not changelog_jumped:
                    changelog_jumped = True  # a jump there too, never recorded: not a source
                    consumer.seek(changelog, records[changelog][-1].offset + 3)
                if fetched and jumped_after is None:
                    jumped_after = fetched[-1]  # a jump forward: the next two read as a gap
                    consumer.seek(source, jumped_after + 3)
                if fetched and fetched[-1] == 9:
                    return fetched, jumped_after
            raise AssertionError(f"fetched {fetched}")
        finally:
            await consumer.stop()

    try:
        fetched, jumped_after = asyncio.run(fetch_all())
        skipped = [jumped_after + 1, jumped_after + 2]
        assert fetched == [o for o in range(10) if o not in skipped]
        lacks = log_gaps.lacks(("purchases", 0))
        assert [offset for offset in range(10) if lacks(offset)] == skipped
        holds = log_gaps.holds(("purchases", 0))
        assert [offset for offset in range(12) if holds(offset, offset + 1)] == fetched
        assert not any(log_gaps.lacks(("metric-samples", 0))(o) for o in range(10))
    finally:
        log_gaps.forget(("purchases", 0))
