"""Fraud benchmark: one worker of the fraud pipeline. Orders decided per second through a
backlog that leaves it holding `--customers` customers' state (each customer, card and
device an entity of its own, so three entities per customer), its peak RSS then; then the
same worker restarted on a fresh broker holding its tables' changelogs (the backlog's broker
has slowed down: see `one_run`), its peak RSS restoring them, and there the decision
latency (order produced → its decision on fraud-decisions, read by a plain consumer), p50
and p99, at paced loads stepped up from 25 % of the backlog rate by 10 % until one is not
sustained: the highest sustained load is the figure the target is about.

    .venv/bin/python -m bench.fraud [--customers 1000000] [--seconds 20] [--runs 1]
                                    [--out bench/results/<date>-fraud.md]

A load is *sustained* when every order is decided and the latency does not keep growing
while it lasts: the median of the orders sent in its last quarter is at most 1.25 times
that of its second quarter, plus 100 ms (the first quarter warms up). A load the worker
cannot keep up with builds a queue, and every order waits longer than the one before
(Karimov et al., "Benchmarking Distributed Stream Data Processing Systems", ICDE 2018: the
sustainable throughput is the highest load without a continuously increasing latency).

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
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import (
    PARTITIONS,
    Message,
    caught_up,
    codec_in,
    peak_rss_mb,
    run_in_scratch,
    run_tally,
    scraped,
)
from tally.broker.admin import end_offsets, ensure_topics
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, validate_order
from tally.core.clock import now_ms
from tally.feed import orders
from tests.harness import Worker

#: The paced loads, as shares of the backlog rate: from the first, a step more each time.
FIRST_LOAD, LOAD_STEP, LAST_LOAD = 0.25, 0.1, 1.25


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


class Paced(NamedTuple):
    """One paced load: each order's (seconds into the load it was sent, ms to its decision),
    and how many were not decided within 30 s of the load's end."""

    latencies: list[tuple[float, float]]
    undecided: int

    def percentile(self, share: float) -> float:
        """Of the decided orders (inf: none was)."""
        ordered = sorted(ms for _, ms in self.latencies)
        if not ordered:
            return float("inf")
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    def sustained(self, seconds: float) -> bool:
        """Every order decided, and the latency not growing: see the module's docstring."""
        if self.undecided or not self.latencies:
            return False
        second = [ms for at, ms in self.latencies if seconds / 4 <= at < seconds / 2]
        last = [ms for at, ms in self.latencies if at >= seconds * 3 / 4]
        if not second or not last:  # too few orders to tell a trend: all decided will do
            return True
        return median(last) <= 1.25 * median(second) + 100


class Load(NamedTuple):
    """What one paced load showed."""

    share: float  # of the backlog rate
    rate: float
    p50_ms: float
    p99_ms: float
    sustained: bool
    undecided: int

    def __str__(self) -> str:
        return (
            f"{self.share:.0%} of the backlog rate ({self.rate:,.0f} orders/s): p50 "
            f"{self.p50_ms:,.0f} ms, p99 {self.p99_ms:,.0f} ms, "
            + ("sustained" if self.sustained else "NOT sustained")
            + (f" ({self.undecided} not decided within 30 s)" if self.undecided else "")
        )


def highest(loads: list[Load], meets: Callable[[Load], bool]) -> Load | None:
    """The highest of the loads below the first that does not meet `meets`."""
    found = None
    for load in loads:
        if not meets(load):
            break
        found = load
    return found


async def paced_latencies(
    bootstrap: str, codec: AvroCodec, rate: float, seconds: float, seed: int
) -> Paced:
    """Orders at `rate` a second for `seconds` (their own, by `seed`: an order id decided
    already is not decided again)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}
    found: list[tuple[float, float]] = []
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
                            found.append((at - started, (arrived - at) * 1000))

        merchants = [f"shop{n}" for n in range(20)]
        placed = orders(random.Random(seed), clock_ms=now_ms, tenants=merchants)
        started = time.perf_counter()
        reader = asyncio.create_task(read())
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
    finally:
        await producer.stop()
        await consumer.stop()
    return Paced(found, len(sent))


def drained(worker: Worker, timeout_s: float = 1800.0) -> None:
    if caught_up(worker, timeout_s):
        raise SystemExit(f"the worker did not catch up within {timeout_s:.0f} s")


def table_keys(worker: Worker, table: str) -> float:
    """The keys a table of the worker holds (RocksDB's estimate)."""
    found = scraped(worker, "tally_table_keys")
    return sum(value for labels, value in found if labels == {"table": table})


def paced_loads(
    worker: Worker, codec: AvroCodec, backlog_rate: float, seconds: float
) -> list[Load]:
    """Loads stepped up from FIRST_LOAD of the backlog rate until one is not sustained."""
    measured: list[Load] = []
    share, step = FIRST_LOAD, 0
    while share <= LAST_LOAD:
        # Each load starts with nothing waiting on any of the worker's topics (a sustained
        # load may still leave a tail to drain).
        drained(worker)
        rate = backlog_rate * share
        bootstrap = worker.env["TALLY_BROKER"].split("//")[1]
        paced = asyncio.run(paced_latencies(bootstrap, codec, rate, seconds, step))
        load = Load(
            share,
            rate,
            paced.percentile(0.5),
            paced.percentile(0.99),
            paced.sustained(seconds),
            paced.undecided,
        )
        measured.append(load)
        print(f"  {load}", flush=True)
        if not load.sustained:
            break
        share, step = round(share + LOAD_STEP, 2), step + 1
    return measured


#: The fraud pipeline's tables: what a worker holding the customers restores.
TABLES = ("fraud_entities", "fraud_orders", "fraud_reviews")
#: How long reading the changelogs from the backlog's broker may take.
COPY_TIMEOUT_S = 1800.0


async def copy_changelogs(source: str, target: str, app_id: str) -> int:
    """Each table's changelog from broker `source` to `target`, as the worker left it: the
    newest record of each key (none for a deleted one), in large batches. Returns the records
    copied."""
    deadline = time.monotonic() + COPY_TIMEOUT_S
    consumer = AIOKafkaConsumer(
        bootstrap_servers=source, max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=target, linger_ms=50, max_batch_size=1 << 20, max_request_size=8 << 20
    )
    await consumer.start()
    await producer.start()
    copied = 0
    try:
        for table in TABLES:
            topic = f"{app_id}-{table}-changelog"
            await ensure_topics([target], [topic], partitions=PARTITIONS, replication=1)
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await end_offsets(consumer, tps)
            newest: dict[tuple[int, bytes], bytes | None] = {}
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{topic}: not read to its end within {COPY_TIMEOUT_S:.0f} s")
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    for record in records:
                        newest[(tp.partition, record.key)] = record.value
            live = [(partition, key, value) for (partition, key), value in newest.items() if value]
            for partition, key, value in live:
                await producer.send(topic, value, key=key, partition=partition)
            await producer.flush()
            copied += len(live)
            print(f"  {table}: {len(live):,} keys copied to the fresh broker", flush=True)
    finally:
        await producer.stop()
        await consumer.stop()
    return copied


def one_run(args: argparse.Namespace, workdir: Path, run: int) -> dict[str, Any]:
    codec = codec_in(workdir, "orders-value", "order", validate_order)
    messages = backlog(codec, args.customers)
    loaded: dict[str, str] = {}

    def afterwards(worker: Worker, _result: Any) -> None:
        drained(worker)  # the backlog's last stages (the audit's archive) done too
        loaded.update(worker.env)

    # The local broker's answers slow down with the record batches a partition holds (see
    # docs/operations.md, the local broker): after the backlog of a million customers a
    # Fetch took seconds, and the broker, not the worker, used both cores. The loads run
    # against a fresh broker holding the tables' changelogs as the worker left them, which
    # the worker (restarted on it, its local tables dropped) restores: it then holds the
    # customers' state, and the partitions it reads and writes are short.
    with (
        LocalBroker("127.0.0.1", free_port(), log_path=workdir / f"broker{run}.log") as broker,
        LocalBroker("127.0.0.1", free_port(), log_path=workdir / f"broker{run}-2.log") as fresh,
    ):
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
        copied = asyncio.run(
            copy_changelogs(broker.bootstrap, fresh.bootstrap, loaded["TALLY_APP_ID"])
        )
        broker.stop()  # (the gigabytes it holds)
        log = workdir / f"{loaded['TALLY_APP_ID']}-loads.log"
        worker = Worker(env={**loaded, "TALLY_BROKER": fresh.url}, log_path=log)
        worker.start(ready_timeout=1800.0)
        try:
            held = table_keys(worker, "fraud_entities")
            if held < 0.8 * 3 * args.customers:
                raise SystemExit(
                    f"the restarted worker holds {held:,.0f} entities, not its state:\n"
                    + worker.tail()
                )
            print(
                f"restarted on the fresh broker ({copied:,} changelog records), holding "
                f"~{held:,.0f} entities",
                flush=True,
            )
            pid = worker.process.pid  # type: ignore[union-attr]
            restore_rss = peak_rss_mb(pid)
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # its peak RSS starts again
            measured = paced_loads(worker, codec, result.rate, args.seconds)
            loads_rss = peak_rss_mb(pid)
        finally:
            worker.stop()
    return {
        "rate": result.rate,
        "rss": result.peak_rss_mb,
        "restore_rss": restore_rss,
        "loads_rss": loads_rss,
        "loads": measured,
    }


#: A run's figures, as the table names them.
FIGURES = {
    "rate": "orders/s decided through the backlog",
    "rss": "peak RSS taking in the backlog, MB",
    "restore_rss": "peak RSS restoring the tables (restarted), MB",
    "loads_rss": "peak RSS through the loads, MB",
}


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
        *(
            f"| {title} | {median(r[name] for r in runs):,.0f} | "
            + " · ".join(f"{r[name]:,.0f}" for r in runs)
            + " |"
            for name, title in FIGURES.items()
        ),
    ]
    for title, meets in (
        ("highest sustained load", lambda load: load.sustained),
        ("highest load with p99 < 1 s", lambda load: load.sustained and load.p99_ms < 1000),
    ):
        best = [highest(r["loads"], meets) for r in runs]
        shown = [
            "none"
            if b is None
            else f"{b.rate:,.0f} ({b.share:.0%}{', the last tried' * (b.share >= LAST_LOAD)})"
            f": {b.p50_ms:,.0f}/{b.p99_ms:,.0f}"
            for b in best
        ]
        rates = [0.0 if b is None else b.rate for b in best]
        lines.append(
            f"| {title}, orders/s (share of the backlog rate): p50/p99 ms | "
            f"{median(rates):,.0f} | " + " · ".join(shown) + " |"
        )
    lines += ["", "Every paced load, in order:", ""]
    lines += [f"- run {n + 1}: {load}" for n, r in enumerate(runs) for load in r["loads"]]
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
