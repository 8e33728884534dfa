"""The local broker process, its known deviation (canary), and the shim's correction of it."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from faust.types import TP

from tally.broker.admin import ensure_topics, offsets_at_time
from tally.broker.identity import describe_cluster
from tally.broker.local import LocalBroker, free_port, port_accepts
from tally.broker.shim import FETCH_MAX_WAIT_MS, fetched_high_watermarks
from tally.core.errors import BrokerError

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


async def parked_fetch_seconds(
    bootstrap: str, topic: str, wait_ms: int, record_after: float
) -> float:
    """How long a Fetch at the end of `topic` (waiting up to `wait_ms` for one byte) takes to
    answer when a record is produced `record_after` seconds into its wait."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await producer.start()
    await client.bootstrap()
    try:
        await producer.send_and_wait(topic, b"first", partition=0)
        await client._metadata_update(client.cluster, [topic])
        leader = client.cluster.leader_for_partition(TopicPartition(topic, 0))
        request = FetchRequest(
            max_wait_time=wait_ms,
            min_bytes=1,
            max_bytes=1 << 20,
            isolation_level=0,
            topics=[(topic, [(0, 1, 1 << 20)])],
        )
        started = time.monotonic()
        fetch = asyncio.ensure_future(client.send(leader, request))
        await asyncio.sleep(record_after)
        await producer.send_and_wait(topic, b"second", partition=0)
        await fetch
        return time.monotonic() - started
    finally:
        await client.close()
        await producer.stop()


def test_canary_parked_fetch_is_not_answered_when_records_arrive(broker: LocalBroker) -> None:
    """If this fails, the broker answers a waiting Fetch as soon as records come, as Kafka
    does: drop FETCH_MAX_WAIT_MS in tally/broker/shim.py (and this canary)."""
    took = asyncio.run(parked_fetch_seconds(broker.bootstrap, "parked", 3000, 0.2))
    assert took >= 1.0, (
        f"a Fetch waiting 3 s answered {took:.2f} s after it was sent, 0.2 s after a record "
        "came: the broker deviation is gone, the shim's short Fetch wait can be removed"
    )


def test_shim_worker_consumer_waits_less_than_fausts_default() -> None:
    from tally.app import app

    assert app.conf.broker[0].scheme == "tansu"

    async def created_wait() -> int:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(created_wait()) == FETCH_MAX_WAIT_MS < 1500


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


async def stamped_history(bootstrap: str, topic: str, base_ms: int) -> None:
    """300 records per partition on 3 partitions, stamped base + n seconds, in batches."""
    await ensure_topics([bootstrap], {topic: 3}, partitions=3, replication=1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, b"x", partition=p, timestamp_ms=base_ms + n * 1000)
            for n in range(300)
            for p in range(3)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_replay_start_offsets_follow_record_timestamps(broker: LocalBroker) -> None:
    """The broker's ListOffsets by time answers offset 0 whatever the time (canary), so a
    replay's start is searched over record timestamps; this checks that search."""
    base = 1_700_000_000_000
    asyncio.run(stamped_history(broker.bootstrap, "stamped", base))

    async def by_broker(at_ms: int) -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            tp = TopicPartition("stamped", 0)
            found = await consumer.offsets_for_times({tp: at_ms})
            return found[tp].offset  # type: ignore[union-attr]
        finally:
            await consumer.stop()

    assert asyncio.run(by_broker(base + 150_000)) == 0  # the deviation the search works around
    for at_ms, expected in [(base - 1, 0), (base + 150_000, 150), (base + 150_500, 151)]:
        found = asyncio.run(offsets_at_time([broker.bootstrap], "stamped", at_ms))
        assert {tp.partition: v for tp, v in found.items()} == dict.fromkeys(
            range(3), (expected, 300)
        )
    past_end = asyncio.run(offsets_at_time([broker.bootstrap], "stamped", base + 10**9))
    assert set(past_end.values()) == {(300, 300)}


def uvarint(data: bytes, at: int) -> tuple[int, int]:
    """An unsigned varint of Kafka's flexible versions: (value, position after it)."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def api_versions_v3_trailing_tags(bootstrap: str) -> int:
    """How many tagged fields end the broker's ApiVersions v3 answer (the local broker writes
    them at their defaults; librdkafka before 2.2 reads them one byte short,
    confluentinc/librdkafka#4278)."""
    host, port = bootstrap.rsplit(":", 1)
    client_id = b"canary"
    header = struct.pack(">hhih", 18, 3, 7, len(client_id)) + client_id + b"\x00"
    body = b"\x07canary\x021\x00"  # compact strings: software name and version; no tags
    request = header + body
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", connection.recv(4, socket.MSG_WAITALL))[0]
        answer = connection.recv(size, socket.MSG_WAITALL)
    correlation, error = struct.unpack_from(">ih", answer)
    assert (correlation, error) == (7, 0), (correlation, error)
    count, at = uvarint(answer, 6)
    for _ in range(count - 1):  # api_key, min, max, then the entry's tagged fields
        at += 6
        tags, at = uvarint(answer, at)
        for _ in range(tags):
            _, at = uvarint(answer, at)
            length, at = uvarint(answer, at)
            at += length
    at += 4  # throttle_time_ms
    tags, at = uvarint(answer, at)
    return tags


def test_canary_api_versions_answer_ends_with_tagged_fields(broker: LocalBroker) -> None:
    """Why Debian's kcat (librdkafka 2.0.2) cannot connect ("ApiVersionRequest failed: Local:
    Read underflow"; librdkafka ≥ 2.2 can, confluent-kafka's wheels bundle newer). If this
    fails, the broker stopped sending them: check kcat again and update docs/operations.md."""
    assert api_versions_v3_trailing_tags(broker.bootstrap) > 0, (
        "the broker's ApiVersions v3 answer has no trailing tagged fields any more: older "
        "librdkafka (kcat from Debian) may connect now"
    )
