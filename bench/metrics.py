"""Metrics benchmark: samples/s per worker end to end with batched envelopes, next to the raw
ceiling (aiokafka consume + Avro decode of the same envelopes, no state) and Faust's own
`.tumbling(60)` table fed one sample per message, in one run on one local broker each.

    .venv/bin/python -m bench.metrics [--servers 100] [--metrics 50] [--per-metric 10]
                                      [--minutes 5] [--baseline-count 3000] [--runs 3]

An envelope is one server's samples for one interval: every metric, `--per-metric` samples
each. Tally's answers for two servers are checked against brute force before its speed counts.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import PARTITIONS, Message, Result, produce, report, run_faust_baseline, run_tally
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, Record, load_schema, validate_metric_batch
from tally.codecs.registry import FileSchemaRegistry
from tally.web.params import iso
from tests.harness import Worker

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
FAUST = "faust .tumbling(60), one sample per message"
RAW = "raw ceiling: aiokafka consume + Avro decode"


def envelopes(rng: random.Random, args: argparse.Namespace) -> list[Record]:
    """Servers report every interval; the intervals span `--minutes` of event time."""
    interval_ms = args.per_metric * 1000
    rounds = args.minutes * 60_000 // interval_ms
    out = []
    for n in range(rounds):
        start = T0 + n * interval_ms
        for server in range(args.servers):
            out.append(
                {
                    "server_id": f"server-{server:04d}",
                    "sent_at_ms": start + interval_ms,
                    "samples": [
                        {
                            "metric_id": f"m{metric:03d}",
                            "ts_ms": start + k * 1000,
                            "value": round(rng.uniform(-10, 90), 2),
                        }
                        for metric in range(args.metrics)
                        for k in range(args.per_metric)
                    ],
                }
            )
    return out


async def raw_ceiling(bootstrap: str, codec: AvroCodec, topic: str, samples: int) -> Result:
    """Consume and decode every envelope with no state: what any pipeline could reach."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, started = 0, time.monotonic()
        while seen < samples:
            for records in (await consumer.getmany(timeout_ms=500, max_records=2000)).values():
                for record in records:
                    seen += len(codec.loads(record.value)["samples"])
        return Result(RAW, seen, time.monotonic() - started, 0, 0)
    finally:
        await consumer.stop()


def assert_equal(points: dict[str, dict], truth: dict[int, list[float]], where: str) -> None:
    """Answer points (by ISO minute) equal brute force over the raw values (by minute ms)."""
    assert len(points) == len(truth), f"{where}: {len(points)} minutes, want {len(truth)}"
    for minute, values in truth.items():
        point = points[iso(minute)]
        assert (point["min"], point["max"], point["count"]) == (
            min(values),
            max(values),
            len(values),
        ), (where, minute)
        assert math.isclose(point["avg"], math.fsum(values) / len(values), rel_tol=1e-9)


def check_answers(
    batches: list[Record], servers: list[str], metric: str
) -> Callable[[Worker], None]:
    """Servers' series (by-server index) and a metric across servers (by-metric index)."""
    window = f"from={iso(T0)}&to={iso(T0 + 86_400_000)}"

    def minute(ts: int) -> int:
        return ts - ts % 60_000

    def check(worker: Worker) -> None:
        for server in servers:
            truth: dict[tuple[str, int], list[float]] = defaultdict(list)
            for batch in batches:
                if batch["server_id"] == server:
                    for s in batch["samples"]:
                        truth[(s["metric_id"], minute(s["ts_ms"]))].append(s["value"])
            body = worker.get(f"/api/servers/{server}/metrics?{window}")
            for name in {m for m, _ in truth}:
                assert_equal(
                    {p["t"]: p for p in body["metrics"].get(name, [])},
                    {t: v for (m, t), v in truth.items() if m == name},
                    f"{server} {name}",
                )
        across: dict[int, list[float]] = defaultdict(list)
        for batch in batches:
            for s in batch["samples"]:
                if s["metric_id"] == metric:
                    across[minute(s["ts_ms"])].append(s["value"])
        series = worker.get(f"/api/metrics/{metric}?{window}")["series"]
        assert_equal({p["t"]: p for p in series}, across, f"{metric} across servers")

    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=50)
    parser.add_argument(
        "--per-metric", type=int, default=10, help="samples per metric per envelope"
    )
    parser.add_argument("--minutes", type=int, default=5, help="event time covered")
    parser.add_argument(
        "--baseline-count",
        type=int,
        default=3_000,
        help="single-sample messages the Faust baseline processes (it is slow)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each system; medians quoted")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    codec = AvroCodec(
        FileSchemaRegistry(workdir / "registry"),
        "metric-samples-value",
        load_schema("metric_batch"),
        validate_metric_batch,
    )
    batches = envelopes(random.Random(7), args)
    total = sum(len(b["samples"]) for b in batches)
    messages: list[Message] = [
        (None, b["server_id"].encode(), codec.dumps(b), b["sent_at_ms"]) for b in batches
    ]
    singles: list[Message] = [
        (None, b["server_id"].encode(), codec.dumps({**b, "samples": [s]}), s["ts_ms"])
        for b in batches[: args.baseline_count]
        for s in b["samples"][:1]
    ]
    print(
        f"metrics benchmark: {total:,} samples in {len(batches):,} envelopes of "
        f"{args.metrics * args.per_metric} ({args.servers} servers x {args.metrics} metrics, "
        f"{args.minutes} min of event time), {PARTITIONS} partitions, one worker, local broker on "
        f"this host; {args.runs} run(s) each, medians",
        flush=True,
    )
    check = check_answers(batches, ["server-0000", f"server-{args.servers - 1:04d}"], "m000")
    results: dict[str, list[Result]] = defaultdict(list)
    for run in range(1, args.runs + 1):
        with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
            tally = run_tally(
                broker,
                workdir,
                "tally, envelopes",
                "metric-samples",
                messages,
                total,
                check,
                then=("metric-rollups-by-metric",),
            )
            raw = asyncio.run(raw_ceiling(broker.bootstrap, codec, "metric-samples", total))
            asyncio.run(produce(broker.bootstrap, "metric-singles", singles))
            faust = run_faust_baseline(
                "bench.faust_tumbling",
                FAUST,
                broker,
                workdir,
                len(singles),
                BENCH_TOPIC="metric-singles",
            )
        for result in (tally, raw, faust):
            results[result.system].append(result)
            print(f"  run {run}: {result.system}: {result.rate:,.0f} samples/s", flush=True)
    report(dict(results), "samples", [RAW, FAUST])
    rate = statistics.median(r.rate for r in results["tally, envelopes"])
    print(f"the seeds' 2,000,000 samples/s would take {math.ceil(2_000_000 / rate)} such workers")


if __name__ == "__main__":
    main()
