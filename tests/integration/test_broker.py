"""The local broker process, its known deviation (canary), and the shim's correction of it."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from tally.broker.identity import describe_cluster
from tally.broker.local import LocalBroker, free_port, port_accepts
from tally.broker.shim import fetched_high_watermarks
from tally.errors import BrokerError

RECORDS = 500


async def produce_batched(bootstrap: str, topic: str) -> None:
    """Many records per batch (linger), the case where the broker's ListOffsets goes wrong."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        futures = [await producer.send(topic, b"x" * 50, partition=0) for _ in range(RECORDS)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def offsets(bootstrap: str, topic: str) -> tuple[int, int]:
    """(ListOffsets LATEST, Fetch high watermark corrected by the shim) of partition 0."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        listed = (await consumer.end_offsets([tp]))[tp]
        corrected = await fetched_high_watermarks(consumer._client, {TP(topic, 0): listed})
        return listed, corrected[TP(topic, 0)]
    finally:
        await consumer.stop()


def test_canary_list_offsets_deviation_still_exists(broker: LocalBroker) -> None:
    """If this fails, the broker's ListOffsets is fixed: drop the highwater correction in
    tally/broker/shim.py (and this canary)."""
    asyncio.run(produce_batched(broker.bootstrap, "canary"))
    listed, _ = asyncio.run(offsets(broker.bootstrap, "canary"))
    assert listed < RECORDS, (
        f"ListOffsets now answers {listed} for {RECORDS} records: the broker deviation is gone, "
        "the shim's highwater correction can be removed"
    )


def test_shim_corrects_highwater_to_last_offset_plus_one(broker: LocalBroker) -> None:
    asyncio.run(produce_batched(broker.bootstrap, "highwater"))
    _, corrected = asyncio.run(offsets(broker.bootstrap, "highwater"))
    assert corrected == RECORDS


def test_each_start_is_a_new_cluster(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    ids = []
    for _ in range(2):
        with LocalBroker("127.0.0.1", port, log_path=tmp_path / "b.log") as local:
            cluster_id, _ = asyncio.run(describe_cluster([local.bootstrap]))
            ids.append(cluster_id)
            assert cluster_id == local.cluster_id
        assert not port_accepts("127.0.0.1", port), "broker still listening after stop"
    assert ids[0] != ids[1]


def test_port_in_use_is_a_clear_error(broker: LocalBroker) -> None:
    with pytest.raises(BrokerError, match="already listens"):
        LocalBroker("127.0.0.1", broker.port).start()
