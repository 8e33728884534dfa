"""Fraud benchmark: one worker of the fraud pipeline. Orders decided per second through a
backlog that leaves it holding `--customers` customers' state (each customer, card and
device an entity of its own, so three entities per customer), its peak RSS then; and, on that
loaded worker, the decision latency (order produced → its decision on fraud-decisions, read
by a plain consumer) at 25, 50, 75 and 90 % of that rate, p50 and p99.

    .venv/bin/python -m bench.fraud [--customers 1000000] [--seconds 20] [--runs 1]
                                    [--out bench/results/<date>-fraud.md]

The backlog's orders are placed over the last 6 hours (each customer's first: new address,
no history). The paced orders are the order feed's (`tally feed fraud`: shoppers, card
testing, takeovers, rings), placed as they are sent: the latency includes waiting for the
models to be known up to the order's time (fraud.models: at most about 0.1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import random
import time
from pathlib import Path
from statistics import median
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import PARTITIONS, Message, codec_in, run_in_scratch, run_tally
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, validate_order
from tally.core.clock import now_ms
from tally.feed import orders
from tests.harness import Worker

#: The paced loads, as shares of the backlog rate.
LOADS = (0.25, 0.5, 0.75, 0.9)


def backlog(codec: AvroCodec, customers: int) -> list[Message]:
    """One order per customer, each with a card and a device of its own, over 6 hours."""
    wall = now_ms()
    rng = random.Random(5)
    messages: list[Message] = []
    for n in range(customers):
        order = {
            "order_id": f"b{n}",
            "customer_id": f"c{n:07d}",
            "card_id": f"k{n}",
            "device_id": f"d{n}",
            "amount_cents": rng.randrange(500, 20_000),
            "currency": "USD",
            "shipping_address": f"{n} Main St",
            "created_at_ms": wall - 6 * 3_600_000 + n * 6 * 3_600_000 // customers,
            "tenant": f"shop{n % 20}",
        }
        messages.append((None, order["customer_id"].encode(), codec.dumps(order), 0))
    return messages


async def paced_latencies(
    bootstrap: str, codec: AvroCodec, rate: float, seconds: float, seed: int
) -> list[float]:
    """Orders at `rate` a second for `seconds` (their own, by `seed`: an order id decided
    already is not decided again); each one's ms from produced to decided."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}
    found: list[float] = []
    try:
        tps = [TopicPartition("fraud-decisions", p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)

        async def read() -> None:
            while True:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    arrived = time.perf_counter()
                    for record in records:
                        at = sent.pop(record.key.decode(), None)
                        if at is not None:
                            found.append((arrived - at) * 1000)

        reader = asyncio.create_task(read())
        merchants = [f"shop{n}" for n in range(20)]
        placed = orders(random.Random(seed), clock_ms=now_ms, tenants=merchants)
        started = time.perf_counter()
        count = 0
        while time.perf_counter() - started < seconds:
            due = started + count / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            order, _ = next(placed)
            sent[order["order_id"]] = time.perf_counter()
            await producer.send("orders", codec.dumps(order), key=order["customer_id"].encode())
            count += 1
        deadline = time.perf_counter() + 30
        while sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        reader.cancel()
        if sent:
            raise SystemExit(f"{len(sent)} of {count} paced orders were not decided within 30 s")
    finally:
        await producer.stop()
        await consumer.stop()
    return found


def caught_up(worker: Worker, timeout_s: float = 1800.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(worker.get("/api/health")["lag"].values()):
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker did not catch up within {timeout_s:.0f} s")
        time.sleep(1.0)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def one_run(args: argparse.Namespace, workdir: Path, run: int) -> dict[str, Any]:
    codec = codec_in(workdir, "orders-value", "order", validate_order)
    messages = backlog(codec, args.customers)
    measured: dict[str, Any] = {}

    def afterwards(worker: Worker, result: Any) -> None:
        # The backlog's last stages (the audit's archive) may still be at work: the paced
        # loads start once nothing waits on any of the worker's topics.
        caught_up(worker)
        for share in LOADS:
            rate = result.rate * share
            latencies = asyncio.run(
                paced_latencies(
                    worker.env["TALLY_BROKER"].split("//")[1],
                    codec,
                    rate,
                    args.seconds,
                    seed=int(share * 100),
                )
            )
            measured[share] = (rate, percentile(latencies, 0.5), percentile(latencies, 0.99))
            print(
                f"  {share:.0%} of the backlog rate ({rate:,.0f} orders/s): p50 "
                f"{measured[share][1]:.0f} ms, p99 {measured[share][2]:.0f} ms",
                flush=True,
            )

    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / f"broker{run}.log") as broker:
        result = run_tally(
            broker,
            workdir,
            "tally fraud worker",
            "orders",
            messages,
            len(messages),
            lambda worker: None,
            afterwards=afterwards,
            counts="fraud-features",
            settings={"TALLY_PIPELINES": "fraud"},
            timeout_s=3600.0,
        )
    return {"rate": result.rate, "rss": result.peak_rss_mb, "loads": measured}


def main(args: argparse.Namespace, workdir: Path) -> None:
    runs = []
    for run in range(args.runs):
        found = one_run(args, workdir, run)
        print(
            f"run {run + 1}: {found['rate']:,.0f} orders/s through the backlog, peak RSS "
            f"{found['rss']:,.0f} MB with {args.customers:,} customers' state",
            flush=True,
        )
        runs.append(found)
    lines = [
        f"{args.customers:,} customers (three entities each), {args.runs} run(s)",
        "",
        "| figure | median | runs |",
        "|---|---:|---|",
        f"| orders/s decided through the backlog | {median(r['rate'] for r in runs):,.0f} | "
        + " · ".join(f"{r['rate']:,.0f}" for r in runs)
        + " |",
        f"| peak RSS, MB | {median(r['rss'] for r in runs):,.0f} | "
        + " · ".join(f"{r['rss']:,.0f}" for r in runs)
        + " |",
    ]
    for share in LOADS:
        rates = [r["loads"][share][0] for r in runs]
        p50 = [r["loads"][share][1] for r in runs]
        p99 = [r["loads"][share][2] for r in runs]
        lines.append(
            f"| decision latency at {share:.0%} ({median(rates):,.0f} orders/s): p50 · p99 ms | "
            f"{median(p50):,.0f} · {median(p99):,.0f} | "
            + " · ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(p50, p99, strict=True))
            + " |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    now = datetime.datetime.now(datetime.UTC)
    out = Path(args.out or f"bench/results/{now:%Y-%m-%d}-fraud.md")
    out.write_text(f"# `python -m bench.fraud` — {now:%Y-%m-%d %H:%M} UTC\n\n{table}")
    print(f"written to {out}")


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--customers", type=int, default=1_000_000)
parser.add_argument("--seconds", type=float, default=20.0, help="each paced load's length")
parser.add_argument("--runs", type=int, default=1)
parser.add_argument("--out", default="")

if __name__ == "__main__":
    run_in_scratch(parser, "tally-bench-fraud-", main)
