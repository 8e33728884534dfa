"""The cost of forwarding (any partitioner): the same single purchases placed by murmur2 (each
lands on its item's partition and is counted there) and placed as librdkafka's default
partitioner places them (CRC32 of the key: most land elsewhere and are forwarded to their owner
through `purchases-routed`), one worker, a fresh broker per run.

    .venv/bin/python -m bench.routing [--count 50000] [--items 100000] [--runs 3] [--hours 1]

Both placements are produced with explicit partitions by aiokafka (CRC32 as librdkafka's
`consistent_random` computes it for a keyed message), so only the placement differs. The
purchases span `--hours` of event time, read as a backlog at full speed: forwarded purchases
fall far behind the owner's own in event time, and each run reports how many purchases were
judged late (there should be none: partitions hold their watermark to the slowest one's, see
docs/architecture.md). Each run's top-10 is checked against brute force before its speed
counts.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from bench import sales
from bench.common import PARTITIONS, Message, Result, report, run_tally
from bench.query import TOP10_PATH
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import (
    AvroCodec,
    load_schema,
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
        span_ms=args.hours * sales.HOUR_MS,
    )
    messages = sales.one_per_message(codec, events)
    moved = sum(PLACEMENTS[CRC32](k) != PLACEMENTS[MURMUR2](k) for _, k, _, _ in messages)
    print(
        f"sales: {args.count:,} single purchases over {args.items:,} items; CRC32 places "
        f"{moved / len(messages):.0%} of them off their murmur2 partition",
        flush=True,
    )

    def check(worker: Worker) -> None:
        sales.check_top(worker, events, "tally")
        late = worker.get(TOP10_PATH)["late_events"]
        print(f"    {late:,} of {len(events):,} purchases judged late", flush=True)

    return measure(workdir, "purchases", messages, len(events), check, (), args.runs, "purchases")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000, help="purchases per run")
    parser.add_argument("--items", type=int, default=100_000, help="distinct items (Zipf)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hours", type=int, default=1, help="event-time span of the purchases")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    report("forwarding: sales", run_sales(args, workdir), "purchases", [MURMUR2])


if __name__ == "__main__":
    main()
