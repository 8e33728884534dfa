"""Sales benchmark: purchases/s per worker end to end, state writes and changelog records per
event, for Tally (single purchases, and per-partition envelopes) next to Faust's own
`.hopping(86400, 3600)` table, all in one run on one local broker each.

    .venv/bin/python -m bench.sales [--count 100000] [--items 10000] [--envelope 200]
                                    [--baseline-count 3000] [--runs 3]

Each system's input is produced before its worker starts; the clock runs from the first event
counted to the last. Tally's answer is checked against brute force before its speed counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.types import TP

from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker, free_port
from tally.broker.shim import fetched_high_watermarks
from tally.codecs.avro import AvroCodec, Record, load_schema, validate_purchase
from tally.codecs.registry import FileSchemaRegistry
from tally.feed import historical_purchases
from tally.partitioning import group_by_partition
from tally.tables.topk import rank_key
from tests.harness import Worker

HOUR_MS = 3_600_000
END_MS = 1_767_225_600_000 + 30 * 60_000  # 2026-01-01T00:30Z, mid-hour
PARTITIONS = 4


@dataclass
class Result:
    system: str
    events: int
    seconds: float
    changelog_records: int
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def records_per_event(self) -> float:
        return self.changelog_records / self.events


async def produce(bootstrap: str, messages: list[tuple[int | None, bytes, bytes, int]]) -> None:
    await ensure_topics([bootstrap], ["purchases"], partitions=PARTITIONS, replication=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 << 20,
    )
    await producer.start()
    try:
        for partition, key, value, ts in messages:
            await producer.send("purchases", value, key=key, partition=partition, timestamp_ms=ts)
        await producer.flush()
    finally:
        await producer.stop()


async def changelog_records(bootstrap: str, app_id: str) -> int:
    """Records written to the app's changelog topics (high watermarks read through a Fetch)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        topics = [
            t for t in await consumer.topics() if t.startswith(app_id) and t.endswith("-changelog")
        ]
        tps = [TP(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        listed = await consumer.end_offsets(tps)
        return sum((await fetched_high_watermarks(consumer._client, listed)).values())
    finally:
        await consumer.stop()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counted(worker: Worker) -> int:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(
        r'tally_events_total\{outcome="counted",topic="purchases"\} ([0-9.e+]+)', text
    )
    return int(float(match.group(1))) if match else 0


def run_tally(broker: LocalBroker, workdir: Path, events: list[Record], label: str) -> Result:
    app_id = f"bench{uuid.uuid4().hex[:8]}"
    worker = Worker(
        env={
            "TALLY_BROKER": broker.url,
            "TALLY_APP_ID": app_id,
            "TALLY_DATA_DIR": str(workdir / app_id),
            "TALLY_SCHEMA_REGISTRY": (workdir / "registry").resolve().as_uri(),
            "TALLY_PARTITIONS": str(PARTITIONS),
            "TALLY_STANDBY_REPLICAS": "0",
            "TALLY_LOG_LEVEL": "warn",
        },
        log_path=workdir / f"{app_id}.log",
    )
    worker.start()
    try:
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = counted(worker)
            now = time.monotonic()
            if done and first is None:
                first = now
            if done >= len(events):
                break
            time.sleep(0.05)
        else:
            raise SystemExit(
                f"{label}: only {counted(worker)} of {len(events)} counted; see {worker.log_path}"
            )
        elapsed = time.monotonic() - (first or time.monotonic())
        check_top(worker, events, label)
        rss = peak_rss_mb(worker.process.pid)  # type: ignore[union-attr]
    finally:
        worker.stop()
    records = asyncio.run(changelog_records(broker.bootstrap, app_id))
    return Result(label, len(events), elapsed, records, rss)


def check_top(worker: Worker, events: list[Record], label: str) -> None:
    last = END_MS // HOUR_MS
    totals: Counter[str] = Counter()
    for e in events:
        if last - 23 <= e["event_time_ms"] // HOUR_MS <= last:
            totals[e["item_id"]] += e["quantity"]
    expected = [[item, qty] for item, qty in sorted(totals.items(), key=rank_key)[:10]]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = [[i["item_id"], i["quantity"]] for i in worker.get("/api/sales/top")["items"]]
        if got == expected:
            return
        time.sleep(0.2)
    raise SystemExit(f"{label}: top-10 differs from brute force:\n got {got}\n want {expected}")


def run_faust_hopping(broker: LocalBroker, workdir: Path, expect: int) -> Result:
    app_id = f"benchfaust{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BENCH_APP_ID": app_id,
        "BENCH_BROKER": broker.url,
        "BENCH_DATA_DIR": str(workdir / app_id),
        "BENCH_EXPECT": str(expect),
        "BENCH_PARTITIONS": str(PARTITIONS),
    }
    log = workdir / f"{app_id}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.faust_hopping", "worker", "--loglevel", "warn"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            found = re.search(r"BENCH done (\d+) ([0-9.]+)", log.read_text(errors="replace"))
            if found:
                break
            if process.poll() is not None:
                raise SystemExit(f"Faust baseline exited early; see {log}")
            time.sleep(0.2)
        else:
            raise SystemExit(f"Faust baseline did not finish; see {log}")
        rss = peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    records = asyncio.run(changelog_records(broker.bootstrap, app_id))
    return Result("faust .hopping(86400, 3600)", expect, float(found.group(2)), records, rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="purchases per Tally run")
    parser.add_argument("--items", type=int, default=10_000, help="distinct items (Zipf)")
    parser.add_argument("--envelope", type=int, default=200, help="purchases per envelope")
    parser.add_argument(
        "--baseline-count",
        type=int,
        default=3_000,
        help="purchases the Faust baseline processes (it is slow)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each system; medians quoted")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    registry = FileSchemaRegistry(workdir / "registry")
    single = AvroCodec(registry, "purchases-value", load_schema("purchase"), validate_purchase)
    envelope = AvroCodec(registry, "tally.sales.PurchaseBatch", load_schema("purchase_batch"))
    events = historical_purchases(
        random.Random(42), count=args.count, items=args.items, end_ms=END_MS, span_ms=30 * HOUR_MS
    )
    singles = [(None, e["item_id"].encode(), single.dumps(e), e["event_time_ms"]) for e in events]
    envelopes = []
    for start in range(0, len(events), args.envelope * PARTITIONS):
        chunk = events[start : start + args.envelope * PARTITIONS]
        for partition, group in group_by_partition(chunk, "item_id", PARTITIONS).items():
            envelopes.append(
                (
                    partition,
                    group[0]["item_id"].encode(),
                    envelope.dumps({"purchases": group}),
                    group[-1]["event_time_ms"],
                )
            )
    print(
        f"sales benchmark: {args.count:,} purchases, {args.items:,} items (Zipf), 30 h of event "
        f"time, {PARTITIONS} partitions, one worker, local broker on this host; "
        f"{args.runs} run(s) each, medians",
        flush=True,
    )

    results: dict[str, list[Result]] = {}
    for run in range(1, args.runs + 1):
        for label, messages in (
            ("tally, single purchases", singles),
            (f"tally, envelopes of ~{args.envelope}", envelopes),
        ):
            with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
                asyncio.run(produce(broker.bootstrap, messages))
                result = run_tally(broker, workdir, events, label)
                if label.startswith("tally, single"):
                    baseline = run_faust_hopping(
                        broker, workdir, min(args.baseline_count, len(events))
                    )
                    results.setdefault(baseline.system, []).append(baseline)
                    print(f"  run {run}: {baseline.system}: {baseline.rate:,.0f}/s", flush=True)
            results.setdefault(label, []).append(result)
            print(f"  run {run}: {label}: {result.rate:,.0f}/s", flush=True)

    def median(label: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[label])

    print(f"\n{'system':34} {'purchases/s':>12} {'changelog rec/event':>20} {'peak RSS MB':>12}")
    for label in results:
        print(
            f"{label:34} {median(label, 'rate'):>12,.0f} "
            f"{median(label, 'records_per_event'):>20.3f} {median(label, 'peak_rss_mb'):>12,.0f}"
        )
    faust = results["faust .hopping(86400, 3600)"]
    for label in results:
        if label.startswith("tally"):
            ratios = [r.rate / f.rate for r, f in zip(results[label], faust, strict=True)]
            print(
                f"ratio {label} / faust hopping (run by run, median): "
                f"{statistics.median(ratios):,.1f}x"
            )
    print("(state writes = changelog records: every table write is one changelog record)")


if __name__ == "__main__":
    main()
