"""How fresh the sales answers are at a given load: produced → visible latency of a purchase
while purchases arrive at 25, 50, 75 and 100 % of the rate one worker sustains.

    .venv/bin/python -m bench.latency_at_load [--backlog 40000] [--seconds 15]

One broker, one worker. The sustainable rate is measured first, in the same run, as the rate
at which the worker folds a backlog of single purchases (100,000 items, Zipf, event time now).
Then, for each level, an open-loop producer sends purchases at that share of the rate (on a
clock: a slow worker does not slow it down) while a probe sends one purchase of a new item at
a time and polls `/api/sales/items/{item}` until it shows: sent → visible (the broker's
acknowledgement included). Medians and 99th percentiles of the probes per level (the 99th is
the slowest probe when there are fewer than 100); the rate actually offered is printed beside
the asked one (the producer shares the 2 cores with the worker and the broker).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.common import Message, Result, purchase_codec, run_tally
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec
from tally.feed import purchases
from tests.harness import Worker, purchase_record

LEVELS = (0.25, 0.5, 0.75, 1.0)
#: Between two probes: enough of them per level, little load of their own.
PROBE_PAUSE_S = 0.1


def zipf_items(seed: str, count: int) -> list[str]:
    """`count` item ids of 100,000, Zipf-distributed (tally.feed)."""
    feed = purchases(random.Random(seed), items=100_000, clock_ms=lambda: 0)
    return [p["item_id"] for p in itertools.islice(feed, count)]


def purchase(codec: AvroCodec, item: str, n: int) -> tuple[bytes, bytes]:
    record = purchase_record(f"{item}-{n}", item, int(time.time() * 1000))
    return item.encode(), codec.dumps(record)


async def level(
    bootstrap: str, worker: Worker, codec: AvroCodec, rate: float, seconds: float, name: str
) -> tuple[float, list[float]]:
    """(purchases/s offered, probe latencies ms) of one level."""
    items = zipf_items(name, 50_000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    stop = time.monotonic() + seconds

    async def feed() -> float:
        """Purchases/s offered: sent over the time the feed ran."""
        began, sent = time.monotonic(), 0
        while time.monotonic() < stop:
            due = int((time.monotonic() - began) * rate)
            while sent < due:
                key, value = purchase(codec, items[sent % len(items)], sent)
                await producer.send("purchases", value, key=key)
                sent += 1
            await asyncio.sleep(0.005)
        return sent / (time.monotonic() - began)

    async def probe() -> list[float]:
        found: list[float] = []
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < stop:
                item = f"probe-{name}-{len(found):04d}"
                key, value = purchase(codec, item, 0)
                began = time.perf_counter()
                await producer.send_and_wait("purchases", value, key=key)
                while True:
                    async with session.get(f"{worker.url}/api/sales/items/{item}") as answer:
                        body = await answer.json() if answer.status == 200 else None
                    if body is not None and body["quantity"] >= 1:
                        break
                    if time.perf_counter() - began > 60:
                        raise SystemExit(f"{item} not visible within 60 s at {rate:,.0f}/s")
                    await asyncio.sleep(0.005)
                found.append((time.perf_counter() - began) * 1000)
                await asyncio.sleep(PROBE_PAUSE_S)
        return found

    try:
        offered, latencies = await asyncio.gather(feed(), probe())
        await producer.flush()
    finally:
        await producer.stop()
    return offered, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=40_000, help="purchases to time the rate")
    parser.add_argument("--seconds", type=float, default=15.0, help="each level's duration")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tally-latency-"))
    codec = purchase_codec(workdir)
    items = zipf_items("backlog", args.backlog)
    backlog: list[Message] = []
    for n, item in enumerate(items):
        key, value = purchase(codec, item, n)
        backlog.append((None, key, value, int(time.time() * 1000)))
    rows: list[tuple[float, float, float, list[float]]] = []

    def at_levels(worker: Worker, sustained: Result) -> None:
        print(f"sustained (backlog): {sustained.rate:,.0f} purchases/s", flush=True)
        for share in LEVELS:
            asked = share * sustained.rate
            offered, latencies = asyncio.run(
                level(broker.bootstrap, worker, codec, asked, args.seconds, f"{share:.2f}")
            )
            rows.append((share, asked, offered, latencies))
            print(
                f"  {share:.0%}: asked {asked:,.0f}/s, offered {offered:,.0f}/s, "
                f"{len(latencies)} probes, p50 {statistics.median(latencies):.0f} ms",
                flush=True,
            )

    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        run_tally(
            broker,
            workdir,
            "backlog",
            "purchases",
            backlog,
            len(backlog),
            lambda _worker: None,  # the levels' probes check that purchases show
            afterwards=at_levels,
        )
    print(f"\nsales, one worker, {args.seconds:g} s per level ({time.strftime('%Y-%m-%d')}):\n")
    print("| load | asked purchases/s | offered | probes | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for share, asked, offered, latencies in rows:
        p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
        print(
            f"| {share:.0%} | {asked:,.0f} | {offered:,.0f} | {len(latencies)} | "
            f"{statistics.median(latencies):.0f} | {p99:.0f} |"
        )


if __name__ == "__main__":
    main()
