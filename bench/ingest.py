"""Ingest throughput: metric samples per second through `POST /api/ingest/metrics` on the
stateless `tally ingest` tier (JSON parse, row checks, Avro, Kafka acks), against the same
samples sent as ready-made `MetricBatch` messages by a raw aiokafka producer in the same run.

    python -m bench.ingest [--runs 3] [--requests 400] [--rows 500] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.common import UNLIMITED, run_in_scratch
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, load_schema
from tally.codecs.registry import FileSchemaRegistry
from tally.ingest.gateway import Accepted, Encode, endpoints
from tally.settings import Settings
from tests.harness import ACCESS, Worker, bearer

SERVERS = 100


Row = dict[str, object]


def bodies(requests: int, rows: int, now_ms: int, seed: int) -> list[list[Row]]:
    """`requests` bodies of `rows` samples, each from one server (as an agent posts)."""
    rng = random.Random(seed)
    out = []
    for n in range(requests):
        server = f"server-{n % SERVERS:04d}"
        out.append(
            [
                {
                    "server_id": server,
                    "metric_id": f"metric.{i % 20}",
                    "ts_ms": now_ms - (rows - i) * 10,
                    "value": round(rng.uniform(0, 100), 3),
                }
                for i in range(rows)
            ]
        )
    return out


async def through_http(
    url: str, payloads: list[bytes], concurrency: int
) -> tuple[float, list[float]]:
    """Seconds for all posts, and each post's latency; every post must be a 202."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)
    latencies: list[float] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            payload = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(
                url, data=payload, headers={"Content-Type": "application/x-ndjson"}
            ) as response:
                body = await response.read()
                assert response.status == 202, (response.status, body[:300])
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers=bearer(ACCESS.operator_token)
    ) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


async def through_producer(bootstrap: str, encode: Encode, batches: list[list[Row]]) -> float:
    """Seconds to encode the same rows as the gateway does and send them, all acked."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        started = time.perf_counter()
        acks = [
            await producer.send(m.topic, m.value, key=m.key, partition=m.partition)
            for rows in batches
            for m in encode([Accepted(row, 0) for row in rows], 0)
        ]
        await asyncio.gather(*acks)
        return time.perf_counter() - started
    finally:
        await producer.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each; medians quoted")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rows", type=int, default=500, help="samples per request")
    parser.add_argument("--concurrency", type=int, default=8, help="clients posting at once")
    run_in_scratch(parser, "bench-ingest-", run_all)


def run_all(args: argparse.Namespace, root: Path) -> None:
    samples = args.requests * args.rows
    http_rates, raw_rates, p50s, p99s = [], [], [], []
    with LocalBroker("127.0.0.1", free_port(), log_path=root / "broker.log") as broker:
        registry_dir = root / "registry"
        tier = Worker(
            env={
                "TALLY_BROKER": broker.url,
                "TALLY_APP_ID": f"b{uuid.uuid4().hex[:8]}",
                "TALLY_DATA_DIR": str(root / "ingest"),
                "TALLY_SCHEMA_REGISTRY": registry_dir.resolve().as_uri(),
                "TALLY_PARTITIONS": "4",
                "TALLY_LOG_LEVEL": "warn",
                **UNLIMITED,
            },
            log_path=root / "ingest.log",
            command=("ingest",),
        ).start()
        registry = FileSchemaRegistry(registry_dir)
        codec = AvroCodec(registry, "metric-samples-value", load_schema("metric_batch"))
        encode = endpoints(Settings(partitions=4), lambda: codec, lambda: codec)["metrics"].encode
        try:
            for run in range(args.runs):
                batches = bodies(args.requests, args.rows, int(time.time() * 1000), run)
                payloads = [b"\n".join(json.dumps(r).encode() for r in rows) for rows in batches]
                seconds, latencies = asyncio.run(
                    through_http(tier.url + "/api/ingest/metrics", payloads, args.concurrency)
                )
                raw_seconds = asyncio.run(through_producer(broker.bootstrap, encode, batches))
                http_rates.append(samples / seconds)
                raw_rates.append(samples / raw_seconds)
                p50s.append(percentile(latencies, 0.5) * 1000)
                p99s.append(percentile(latencies, 0.99) * 1000)
                print(
                    f"run {run + 1}: ingest {samples / seconds:,.0f} samples/s, raw producer "
                    f"{samples / raw_seconds:,.0f} samples/s",
                    flush=True,
                )
        finally:
            tier.stop()
    http, raw = statistics.median(http_rates), statistics.median(raw_rates)
    print(
        f"\nIngest, {args.requests} requests x {args.rows} samples, {args.concurrency} clients, "
        f"{args.runs} run(s), medians\n"
        f"| path | samples/s | request p50 | request p99 |\n|---|---|---|---|\n"
        f"| POST /api/ingest/metrics (tally ingest) | {http:,.0f} | "
        f"{statistics.median(p50s):,.1f} ms | {statistics.median(p99s):,.1f} ms |\n"
        f"| raw aiokafka producer, same samples encoded as the gateway does | {raw:,.0f} "
        "| - | - |\n"
        f"ratio ingest / raw: {http / raw:.2f}"
    )


if __name__ == "__main__":
    main()
