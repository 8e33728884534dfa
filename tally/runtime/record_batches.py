"""Records sent in record batches straight to the Kafka client.

Faust's producer hands records over one at a time, each with a future and a callback: for the
thousands of records a flush of the cell cache or a batch of coupons sends, that per-record
cost dominates. Here records fill aiokafka batches, each closed (sent now, not after the
client's linger) and awaited for room in the client only. Not for a transactional app:
these go around Faust's transactions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata
from faust.types import TP

from tally.app import app
from tally.runtime.faust_compat import aiokafka_producer

logger = logging.getLogger(__name__)

#: A record batch's acknowledgement by the broker.
Delivery = asyncio.Future[RecordMetadata]
#: Told of each batch once the broker answered: its delivery and how many records it held.
OnAcknowledged = Callable[[Delivery, int], None]


async def send_records(
    tp: TP,
    records: Iterable[tuple[bytes | None, bytes | None]],
    acknowledged: OnAcknowledged | None = None,
) -> list[Delivery]:
    """(key, value) records (a None value: a tombstone) to one partition, in as few record
    batches as they fit; returns each batch's delivery."""
    producer = aiokafka_producer(app.producer)
    batch, count, deliveries = producer.create_batch(), 0, []
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:  # full
            deliveries.append(await send_batch(producer, batch, tp, count, acknowledged))
            batch, count = producer.create_batch(), 0
            batch.append(key=key, value=value, timestamp=None)  # a batch takes its first
        count += 1
    if count:
        deliveries.append(await send_batch(producer, batch, tp, count, acknowledged))
    return deliveries


async def partition_count(topic: str) -> int:
    """The topic's partitions as the broker has them (it is made on first use if the broker
    makes topics so): what a key is partitioned over, as Kafka's default partitioner does."""
    return len(await aiokafka_producer(app.producer).partitions_for(topic))


async def send_batch(
    producer: AIOKafkaProducer,
    batch: BatchBuilder,
    tp: TP,
    count: int,
    acknowledged: OnAcknowledged | None,
) -> Delivery:
    batch.close()  # sent now, not after the client's linger
    while True:
        try:
            delivered = await producer.send_batch(batch, tp.topic, partition=tp.partition)
            break
        except KafkaTimeoutError:  # no room for it in the client yet (the broker is away)
            logger.warning(
                "%d records for %s[%s] wait for room in the Kafka client (their sender waits)",
                count,
                tp.topic,
                tp.partition,
            )
    if acknowledged is not None:
        delivered.add_done_callback(lambda done: acknowledged(done, count))
    return delivered
