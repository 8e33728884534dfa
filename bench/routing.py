"""The cost of forwarding (any partitioner): the same purchases and metric batches, placed by
murmur2 (every message lands on its key's partition and is counted there) and placed as
librdkafka's default partitioner places them (CRC32 of the key: about 3 in 4 land elsewhere and
are forwarded to their owner through the routed topic), one worker, a fresh broker per run.

    .venv/bin/python -m bench.routing [--count 50000] [--items 100000] [--servers 1000]
                                      [--runs 3]

Both placements are produced with explicit partitions by aiokafka (CRC32 as librdkafka's
`consistent_random` computes it for a keyed message), so only the placement differs. Each
run's answers are checked against brute force before its speed counts.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from bench import metrics, sales
from bench.common import PARTITIONS, Message, Result, report, run_tally
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import (
    AvroCodec,
    Record,
    load_schema,
    validate_metric_batch,
    validate_purchase,
)
from tally.codecs.registry import FileSchemaRegistry
from tally.core.partitioning import partition_for
from tally.feed import historical_purchases
from tests.harness import Worker

MURMUR2 = "tally, placed by murmur2 (Java client, aiokafka)"
CRC32 = "tally, placed by CRC32 (librdkafka's default)"
#: How each placement picks a partition for a key.
PLACEMENTS: dict[str, Callable[[bytes], int]] = {
    MURMUR2: lambda key: partition_for(key.decode(), PARTITIONS),
    CRC32: lambda key: zlib.crc32(key) % PARTITIONS,
}


def placed(messages: list[Message], place: Callable[[bytes], int]) -> list[Message]:
    return [(place(key), key, value, ts) for _, key, value, ts in messages]


def measure(
    workdir: Path,
    topic: str,
    messages: list[Message],
    total: int,
    check: Callable[[Worker], None],
    then: tuple[str, ...],
    runs: int,
    unit: str,
) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {}
    for run_number in range(1, runs + 1):
        for label, place in PLACEMENTS.items():
            with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
                result = run_tally(
                    broker, workdir, label, topic, placed(messages, place), total, check, then
                )
            results.setdefault(label, []).append(result)
            print(f"  run {run_number}: {label}: {result.rate:,.0f} {unit}/s", flush=True)
    return results


def run_sales(args: argparse.Namespace, workdir: Path) -> dict[str, list[Result]]:
    registry = FileSchemaRegistry(workdir / "registry")
    codec = AvroCodec(registry, "purchases-value", load_schema("purchase"), validate_purchase)
    events = historical_purchases(
        random.Random(42),
        count=args.count,
        items=args.items,
        end_ms=sales.END_MS,
        span_ms=30 * sales.HOUR_MS,
    )
    messages: list[Message] = [
        (None, e["item_id"].encode(), codec.dumps(e), e["event_time_ms"]) for e in events
    ]
    moved = sum(PLACEMENTS[CRC32](k) != PLACEMENTS[MURMUR2](k) for _, k, _, _ in messages)
    print(
        f"sales: {args.count:,} single purchases over {args.items:,} items; CRC32 places "
        f"{moved / len(messages):.0%} of them off their murmur2 partition",
        flush=True,
    )

    def check(worker: Worker) -> None:
        sales.check_top(worker, events, "tally")

    return measure(workdir, "purchases", messages, len(events), check, (), args.runs, "purchases")


def run_metrics(args: argparse.Namespace, workdir: Path) -> dict[str, list[Result]]:
    codec = AvroCodec(
        FileSchemaRegistry(workdir / "registry"),
        "metric-samples-value",
        load_schema("metric_batch"),
        validate_metric_batch,
    )
    shape = argparse.Namespace(servers=args.servers, metrics=50, per_metric=10, minutes=1)
    batches: list[Record] = metrics.envelopes(random.Random(7), shape)
    total = sum(len(b["samples"]) for b in batches)
    messages: list[Message] = [
        (None, b["server_id"].encode(), codec.dumps(b), b["sent_at_ms"]) for b in batches
    ]
    print(f"metrics: {total:,} samples in {len(batches):,} batches of 500", flush=True)
    check = metrics.check_answers(
        batches, ["server-0000", f"server-{args.servers - 1:04d}"], "m000"
    )
    return measure(
        workdir,
        "metric-samples",
        messages,
        total,
        check,
        ("metric-rollups-by-metric",),
        args.runs,
        "samples",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000, help="purchases per run")
    parser.add_argument("--items", type=int, default=100_000, help="distinct items (Zipf)")
    parser.add_argument("--servers", type=int, default=1000, help="servers (50 metrics each)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    report("forwarding: sales", run_sales(args, workdir), "purchases", [MURMUR2])
    report("forwarding: metrics", run_metrics(args, workdir), "samples", [MURMUR2])


if __name__ == "__main__":
    main()
