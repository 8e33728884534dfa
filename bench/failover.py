"""Failover and recovery benchmark: how long a dead worker's keys go unanswered, and how fast
a worker rebuilds its tables from the changelogs.

    .venv/bin/python -m bench.failover [--runs 3] [--load-seconds 20]

Each run, on a fresh local broker:
1. **failover**: two workers (standby replicas on) under a steady load (~200 purchases/s and
   80 metric batches/s, `tests.load`); after 8 s one is SIGKILLed; the time until the survivor
   answers health, the top-K, and an item and a server of every partition (200s), polled
   every 0.2 s;
2. **recovery**: after `--load-seconds` of load, `--history` purchases over 23 hours of
   event time and 50,000 items (envelopes) are added so the tables hold many records; the
   survivor is stopped, its local tables are deleted, and it is started again. Records/s =
   every changelog record (one worker owns every partition) over the start-to-ready time
   minus the start-to-ready time of a worker with empty tables, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

from bench.common import (
    Message,
    bench_worker,
    changelog_records,
    counted,
    metric_batch_codec,
    produce,
    purchase_batch_codec,
    purchase_codec,
)
from bench.sales import HOUR_MS
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec
from tally.core.partitioning import group_by_partition
from tally.feed import historical_purchases
from tests.harness import Worker, cpu_hog, start_all, wait_until
from tests.load import PARTITIONS, Load, kill_after


def worker(broker: LocalBroker, workdir: Path, app_id: str, name: str) -> Worker:
    return bench_worker(broker, workdir, app_id, name, TALLY_STANDBY_REPLICAS="1")


def one_run(
    workdir: Path, load_seconds: float, history_size: int
) -> tuple[float, int, float, float]:
    """(failover s, changelog records, recovery s, an empty worker's start s) of one run."""
    purchases, batches = purchase_codec(workdir), metric_batch_codec(workdir)
    envelope = purchase_batch_codec(workdir)
    app_id = f"benchfo{uuid.uuid4().hex[:8]}"
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        empty: Worker | None = None
        first, second = start_all(
            worker(broker, workdir, app_id, "w1"), worker(broker, workdir, app_id, "w2")
        )
        try:
            load = Load(broker.bootstrap, purchases, batches).start()
            failover = kill_after(8, first, second, timeout=60)
            time.sleep(max(0.0, load_seconds - 8))
            load.stop()
            asyncio.run(produce(broker.bootstrap, "purchases", history(envelope, history_size)))
            before = counted(second, "purchases")
            wait_until(
                lambda: (
                    counted(second, "purchases") >= before + history_size
                    # The metrics pipeline's ticks keep its own topics busy: purchases only.
                    and not any(
                        second.get("/api/health")["lag"].get(topic)
                        for topic in ("purchases", "purchases-routed")
                    )
                ),
                300,
                what="the history counted",
            )
            second.stop()
            records = asyncio.run(changelog_records(broker.bootstrap, app_id))
            shutil.rmtree(Path(second.env["TALLY_DATA_DIR"]) / "v1", ignore_errors=True)
            started = time.monotonic()
            second.start(ready_timeout=600)
            recovery = time.monotonic() - started
            empty = worker(broker, workdir, f"{app_id}e", "w3")
            started = time.monotonic()
            empty.start()
            baseline = time.monotonic() - started
        finally:
            for w in (first, second, empty):
                if w is not None:
                    w.stop()
    return failover, records, recovery, baseline


def history(envelope: AvroCodec, count: int) -> list[Message]:
    """Purchases over the last 23 hours (inside the current window: none late) and 50,000
    items, as per-partition envelopes."""
    end_ms = int(time.time() * 1000)
    events = historical_purchases(
        random.Random(3), count=count, items=50_000, end_ms=end_ms, span_ms=23 * HOUR_MS
    )
    out: list[Message] = []
    for start in range(0, len(events), 800):
        chunk = events[start : start + 800]
        for partition, group in group_by_partition(chunk, "item_id", PARTITIONS).items():
            key = group[0]["item_id"].encode()
            out.append((partition, key, envelope.dumps({"purchases": group}), end_ms))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--history", type=int, default=300_000, help="purchases added")
    parser.add_argument(
        "--cpu-hog",
        action="store_true",
        help="a process spinning on one of the cores throughout (a busy machine)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    print(
        f"failover benchmark: 2 workers, {PARTITIONS} partitions, standby replicas 1, "
        f"{args.runs} run(s), medians{', a CPU hog on one core' if args.cpu_hog else ''}",
        flush=True,
    )
    failovers, rates, recoveries = [], [], []
    for run in range(1, args.runs + 1):
        with cpu_hog() if args.cpu_hog else nullcontext():
            failover, records, recovery, baseline = one_run(
                workdir, args.load_seconds, args.history
            )
        rate = records / max(recovery - baseline, 0.1)
        failovers.append(failover)
        recoveries.append(recovery)
        rates.append(rate)
        print(
            f"  run {run}: failover {failover:.1f} s; {records:,} changelog records recovered "
            f"into empty tables: start to ready {recovery:.1f} s, an empty worker's "
            f"{baseline:.1f} s, so {rate:,.0f} records/s",
            flush=True,
        )
    print(
        f"\nfailover (SIGKILL -> every query answered by the survivor): median "
        f"{statistics.median(failovers):.1f} s (runs {min(failovers):.1f}-{max(failovers):.1f})"
    )
    print(
        f"recovery from the changelogs into empty tables: median {statistics.median(rates):,.0f} "
        f"records/s ({statistics.median(recoveries):.1f} s from start to ready)"
    )


if __name__ == "__main__":
    main()
