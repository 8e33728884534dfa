"""Sales benchmark: purchases/s per worker end to end, state writes and changelog records per
event, for Tally (single purchases, and per-partition envelopes) next to Faust's own
`.hopping(86400, 3600)` table, all in one run on one local broker each.

    .venv/bin/python -m bench.sales [--count 100000] [--items 10000] [--envelope 200]
                                    [--baseline-count 3000] [--runs 3]

Tally's input is produced once its worker is ready; its rate counts the events counted after
the first observation (polled every 20 ms), over the time from then to the last. Faust's
baseline then reads the same topic and is timed in its own process from its first event.
Tally's answer is checked against brute force before its speed counts.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import PARTITIONS, Result, report, run_faust_baseline, run_tally
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, Record, load_schema, validate_purchase
from tally.codecs.registry import FileSchemaRegistry
from tally.feed import historical_purchases
from tally.partitioning import group_by_partition
from tally.tables.topk import rank_key
from tests.harness import Worker

HOUR_MS = 3_600_000
END_MS = 1_767_225_600_000 + 30 * 60_000  # 2026-01-01T00:30Z, mid-hour
FAUST = "faust .hopping(86400, 3600)"


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
            value = envelope.dumps({"purchases": group})
            envelopes.append(
                (partition, group[0]["item_id"].encode(), value, group[-1]["event_time_ms"])
            )
    print(
        f"sales benchmark: {args.count:,} purchases, {args.items:,} items (Zipf), 30 h of event "
        f"time, {PARTITIONS} partitions, one worker, local broker on this host; "
        f"{args.runs} run(s) each, medians",
        flush=True,
    )

    def check(worker: Worker) -> None:
        check_top(worker, events, "tally")

    results: dict[str, list[Result]] = {}
    for run in range(1, args.runs + 1):
        for label, messages in (
            ("tally, single purchases", singles),
            (f"tally, envelopes of ~{args.envelope}", envelopes),
        ):
            with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
                result = run_tally(
                    broker, workdir, label, "purchases", messages, len(events), check
                )
                if label.startswith("tally, single"):
                    count = min(args.baseline_count, len(events))
                    baseline = run_faust_baseline(
                        "bench.faust_hopping", FAUST, broker, workdir, count
                    )
                    results.setdefault(FAUST, []).append(baseline)
                    print(f"  run {run}: {FAUST}: {baseline.rate:,.0f}/s", flush=True)
            results.setdefault(label, []).append(result)
            print(f"  run {run}: {label}: {result.rate:,.0f}/s", flush=True)
    report(results, "purchases", [FAUST])


if __name__ == "__main__":
    main()
