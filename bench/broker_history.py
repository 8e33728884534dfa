"""The local broker's answers as a partition's history grows: a Produce, a ListOffsets and
Fetches of the newest record (median ms) on one partition holding more and more record
batches, and the same on a topic of its own beside it; and whether each Fetch of the newest
record returned it. Kafka finds an offset through its index; the local broker's memory
engine takes longer for a ListOffsets and for a Fetch that has records to return the more
batches the partition holds (its source lists them all), which is why `python -m
bench.fraud` runs its latency loads against a fresh broker.

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

from bench.common import record_batches, run_in_scratch
from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker, free_port
from tally.broker.shim import FETCH_MAX_WAIT_MS, aiokafka_client

VALUE = b"x" * 200
#: Each kind of request timed this many times at each step (each probe adds a batch).
PROBES = 20


#: The Fetches of each probe: its column, whether it asks for the record just produced (else
#: from the end: nothing to answer, what a consumer that has caught up asks again and again)
#: and how long it may wait (0 as Kafka allows; or as long as a worker's consumer).
FETCHES = (
    ("Fetch of the newest, no wait, ms", True, 0),
    (f"the same, waiting up to {FETCH_MAX_WAIT_MS} ms, ms", True, FETCH_MAX_WAIT_MS),
    ("Fetch from the end ms", False, FETCH_MAX_WAIT_MS),
)
COLUMNS = ("Produce ms", "ListOffsets ms", *(column for column, _, _ in FETCHES))
MISSED = "Fetches of the newest that came back without it"


async def timed_fetch(
    client: AIOKafkaClient, leader: int, topic: str, offset: int, max_wait_ms: int
) -> tuple[float, bool]:
    """One Fetch from `offset` (its own request, nothing prefetched): how many ms it took, and
    whether the answer held the record at `offset`."""
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
    answered = [partition for _, partitions in response.topics for partition in partitions]
    if answered and answered[0][1] != 0:
        raise SystemExit(f"the broker answered a Fetch of {topic} with error {answered[0][1]}")
    raw = answered[0][-1] if answered else None
    held = any(b.base_offset <= offset < b.next_offset for b in record_batches(raw))
    return elapsed, held


async def answers(bootstrap: str, topic: str) -> tuple[dict[str, float], int]:
    """Each column's median ms (a one-record Produce, acknowledged; a ListOffsets of the
    partition's end; the FETCHES), and how many Fetches of the newest record came back
    without it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    times: dict[str, list[float]] = {column: [] for column in COLUMNS}
    missed = 0
    try:
        client = aiokafka_client(consumer)
        leader = client.cluster.leader_for_partition(tp)
        for _ in range(PROBES):
            started = time.perf_counter()
            written = await (await producer.send(topic, VALUE, partition=0))
            times["Produce ms"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await consumer.end_offsets([tp])
            times["ListOffsets ms"].append((time.perf_counter() - started) * 1000)
            for column, newest, wait_ms in FETCHES:
                offset = written.offset if newest else written.offset + 1
                elapsed, held = await timed_fetch(client, leader, topic, offset, wait_ms)
                times[column].append(elapsed)
                if newest and not held:
                    missed += 1
    finally:
        await producer.stop()
        await consumer.stop()
    return {column: median(taken) for column, taken in times.items()}, missed


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
        f"| batches the partition holds (then 1 more per probe) | {' | '.join(COLUMNS)} "
        f"| {MISSED} |",
        "|---:|" + "---:|" * (len(COLUMNS) + 1),
    ]
    held = 0
    for target in [0, *steps]:
        await add_batches(bootstrap, "long", max(0, target - held))
        lines.append(row(f"{target:,}", *await answers(bootstrap, "long")))
        held = target + PROBES
        print(lines[-1], flush=True)
    lines.append(row("a new topic beside it", *await answers(bootstrap, "short")))
    return lines


def row(label: str, timed: dict[str, float], missed: int) -> str:
    asked = PROBES * sum(newest for _, newest, _ in FETCHES)
    cells = " | ".join(f"{timed[column]:,.1f}" for column in COLUMNS)
    return f"| {label} | {cells} | {missed} of {asked} |"


def main(args: argparse.Namespace, workdir: Path) -> None:
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        lines = asyncio.run(measure(broker.bootstrap, sorted(args.batches)))
    print("\n".join(lines))


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--batches", type=int, nargs="+", default=[10_000, 50_000, 200_000])

if __name__ == "__main__":
    run_in_scratch(parser, "tally-bench-broker-history-", main)
