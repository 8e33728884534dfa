"""The local broker's answers as a partition's history grows: a Produce, a ListOffsets and a
Fetch of the newest record (median ms) on one partition holding more and more record batches,
and the same on a topic of its own beside it. Kafka finds an offset through its index; the
local broker's memory engine takes longer the more batches the partition holds, which is why
`python -m bench.fraud` runs its latency loads against a fresh broker.

    .venv/bin/python -m bench.broker_history [--batches 10000 50000 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from statistics import median

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest

from bench.common import run_in_scratch
from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker, free_port
from tally.broker.shim import aiokafka_client

VALUE = b"x" * 200
#: Each kind of request timed this many times at each step (each probe adds a batch).
PROBES = 20


async def answers(bootstrap: str, topic: str) -> tuple[float, ...]:
    """Median ms of: a one-record Produce (acknowledged), a ListOffsets of the partition's
    end, a Fetch (its own request, nothing prefetched) of the record just produced, and one
    from the end (nothing to answer: a consumer that has caught up asks that, again and
    again)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    produced, listed, fetched, caught_up = [], [], [], []
    try:
        client = aiokafka_client(consumer)
        leader = client.cluster.leader_for_partition(tp)
        for _ in range(PROBES):
            started = time.perf_counter()
            written = await (await producer.send(topic, VALUE, partition=0))
            produced.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await consumer.end_offsets([tp])
            listed.append((time.perf_counter() - started) * 1000)
            for offset, times in ((written.offset, fetched), (written.offset + 1, caught_up)):
                request = FetchRequest(
                    max_wait_time=0,
                    min_bytes=0,
                    max_bytes=1 << 20,
                    isolation_level=0,
                    topics=[(topic, [(0, offset, 1 << 20)])],
                )
                started = time.perf_counter()
                await client.send(leader, request)
                times.append((time.perf_counter() - started) * 1000)
    finally:
        await producer.stop()
        await consumer.stop()
    return median(produced), median(listed), median(fetched), median(caught_up)


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
        "| Fetch of the newest ms | Fetch from the end ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    held = 0
    for target in [0, *steps]:
        await add_batches(bootstrap, "long", max(0, target - held))
        timed = await answers(bootstrap, "long")
        held = target + PROBES
        lines.append(f"| {target:,} | " + " | ".join(f"{ms:,.1f}" for ms in timed) + " |")
        print(lines[-1], flush=True)
    timed = await answers(bootstrap, "short")
    lines.append("| a new topic beside it | " + " | ".join(f"{ms:,.1f}" for ms in timed) + " |")
    return lines


def main(args: argparse.Namespace, workdir: Path) -> None:
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        lines = asyncio.run(measure(broker.bootstrap, sorted(args.batches)))
    print("\n".join(lines))


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--batches", type=int, nargs="+", default=[10_000, 50_000, 200_000])

if __name__ == "__main__":
    run_in_scratch(parser, "tally-bench-broker-history-", main)
