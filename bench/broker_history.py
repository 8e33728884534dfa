"""The local broker's answers as a partition's history grows: a Produce, a ListOffsets and
Fetches of the newest record (median ms) on one partition holding more and more record
batches, and the same on a topic of its own beside it; and whether each Fetch of the newest
record returned it. Kafka finds an offset through its index; the local broker's memory
engine lists every batch the partition holds for a ListOffsets and for a Fetch that finds
records, until the Fetch's wait has passed (so one that may not wait gets nothing), which is
why `python -m bench.fraud` runs its latency loads against a fresh broker.

    .venv/bin/python -m bench.broker_history [--batches 10000 50000 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from statistics import median

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from bench.common import run_in_scratch
from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker, free_port
from tally.broker.shim import FETCH_MAX_WAIT_MS, aiokafka_client

VALUE = b"x" * 200
#: Each kind of request timed this many times at each step (each probe adds a batch).
PROBES = 20


async def fetch_ms(
    client: AIOKafkaClient, leader: int, topic: str, offset: int, max_wait_ms: int
) -> tuple[float, bool]:
    """One Fetch from `offset` (its own request, nothing prefetched): ms, and whether the
    answer held the record at `offset`."""
    request = FetchRequest(
        max_wait_time=max_wait_ms,
        min_bytes=1,
        max_bytes=1 << 20,
        isolation_level=0,
        topics=[(topic, [(0, offset, 1 << 20)])],
    )
    started = time.perf_counter()
    response = await client.send(leader, request)
    elapsed = (time.perf_counter() - started) * 1000
    raws = [partition[-1] for _, partitions in response.topics for partition in partitions]
    fetched = MemoryRecords(raws[0]) if raws and raws[0] else None
    while fetched is not None and (batch := fetched.next_batch()) is not None:
        if batch.base_offset <= offset < batch.next_offset:
            return elapsed, True
    return elapsed, False


async def answers(bootstrap: str, topic: str) -> tuple[list[float], int]:
    """Median ms of: a one-record Produce (acknowledged), a ListOffsets of the partition's
    end, a Fetch of the record just produced that may not wait (Kafka's max wait 0) and one
    that may wait up to a worker's FETCH_MAX_WAIT_MS, and one from the end (nothing to
    answer: a consumer that has caught up asks that, again and again, with its wait); and how
    many of the Fetches of the newest record came back without it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    times: list[list[float]] = [[] for _ in range(5)]
    missed = 0
    try:
        client = aiokafka_client(consumer)
        leader = client.cluster.leader_for_partition(tp)
        for _ in range(PROBES):
            started = time.perf_counter()
            written = await (await producer.send(topic, VALUE, partition=0))
            times[0].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await consumer.end_offsets([tp])
            times[1].append((time.perf_counter() - started) * 1000)
            for column, offset, wait_ms in (
                (2, written.offset, 0),
                (3, written.offset, FETCH_MAX_WAIT_MS),
                (4, written.offset + 1, FETCH_MAX_WAIT_MS),
            ):
                elapsed, held = await fetch_ms(client, leader, topic, offset, wait_ms)
                times[column].append(elapsed)
                missed += column < 4 and not held
    finally:
        await producer.stop()
        await consumer.stop()
    return [median(column) for column in times], missed


async def add_batches(bootstrap: str, topic: str, batches: int) -> None:
    """`batches` one-record batches (as a worker's small sends make them), 200 in flight."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        pending = []
        for _ in range(batches):
            batch = producer.create_batch()
            batch.append(key=None, value=VALUE, timestamp=None)
            batch.close()
            pending.append(await producer.send_batch(batch, topic, partition=0))
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def measure(bootstrap: str, steps: list[int]) -> list[str]:
    await ensure_topics([bootstrap], ["long", "short"], partitions=1, replication=1)
    lines = [
        "| batches the partition holds (then 1 more per probe) | Produce ms | ListOffsets ms "
        f"| Fetch of the newest, no wait, ms | the same, up to {FETCH_MAX_WAIT_MS} ms, ms "
        "| Fetch from the end ms | Fetches of the newest without it |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    held = 0
    for target in [0, *steps]:
        await add_batches(bootstrap, "long", max(0, target - held))
        lines.append(row(f"{target:,}", *await answers(bootstrap, "long")))
        held = target + PROBES
        print(lines[-1], flush=True)
    lines.append(row("a new topic beside it", *await answers(bootstrap, "short")))
    return lines


def row(label: str, timed: list[float], missed: int) -> str:
    return f"| {label} | {' | '.join(f'{ms:,.1f}' for ms in timed)} | {missed} of {2 * PROBES} |"


def main(args: argparse.Namespace, workdir: Path) -> None:
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        lines = asyncio.run(measure(broker.bootstrap, sorted(args.batches)))
    print("\n".join(lines))


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--batches", type=int, nargs="+", default=[10_000, 50_000, 200_000])

if __name__ == "__main__":
    run_in_scratch(parser, "tally-bench-broker-history-", main)
