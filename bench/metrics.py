"""Metrics benchmark: samples/s per worker end to end with batched envelopes, next to the raw
ceiling (aiokafka consume + Avro decode of the same envelopes, no state), Faust's own
`.tumbling(60)` table and Quix Streams' `tumbling_window(1 min)` (min, max, sum, count), both
fed one sample per message, in one run on one local broker each; Tally's query latency and a
2-hour by-server series read by 1 and 100 concurrent clients once the input is processed.

    .venv/bin/python -m bench.metrics [--servers 1000] [--metrics 50] [--per-metric 10]
                                      [--minutes 1] [--faust-count 3000] [--quix-count 100000]
                                      [--runs 3]

An envelope is one server's samples for one interval: every metric, `--per-metric` samples
each. The peers read their own topic of single-sample messages (the first N samples, keyed by
"<server>|<metric>"). Tally's answers for two servers and one metric across servers, and the
peers' minutes of two servers, are checked against brute force before their speed counts.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    KEEP_ALL,
    PARTITIONS,
    WRITE_THROUGH,
    WRITE_THROUGH_SETTINGS,
    Message,
    Result,
    consumed_latency_ms,
    latency_ms,
    metric_batch_codec,
    on_workers_loop,
    peer_arguments,
    produce,
    raw_ceiling,
    report,
    run_baseline,
    run_tally,
)
from bench.query import query_load
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, Record
from tally.core.clock import iso
from tests.harness import Worker, wait_until

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
FAUST = "faust .tumbling(60), one sample per message"
QUIX = "quix tumbling_window(1 min).agg(), one sample per message"
RAW = "raw ceiling: aiokafka consume + Avro decode"
TALLY = "tally, envelopes"
#: The peers report these servers' minutes; they are checked against brute force.
CHECKED = ("server-0000|", "server-0001|")
MARKERS = 60
QUERY_CONNECTIONS = (1, 100)


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
        # The index answers once it has its first watermark (a tick after the samples).
        answer = wait_until(
            lambda: (a := worker.get(f"/api/metrics/{metric}?{window}"))["watermark"] and a,
            30,
            what=f"{metric} across servers to have a watermark",
        )
        assert_equal({p["t"]: p for p in answer["series"]}, across, f"{metric} across servers")

    return check


def singles(batches: list[Record], count: int) -> list[Record]:
    """The first `count` samples, one per message: (key "<server>|<metric>", batch of one)."""
    out = []
    for batch in batches:
        for sample in batch["samples"]:
            if len(out) == count:
                return out
            out.append({**batch, "samples": [sample]})
    return out


def expected_minutes(messages: list[Record]) -> dict[str, list[float]]:
    """Brute force over single-sample messages: "<key>|<minute ms>" → [min, max, sum, count]
    of the CHECKED servers."""
    values: dict[str, list[float]] = defaultdict(list)
    for batch in messages:
        sample = batch["samples"][0]
        key = f"{batch['server_id']}|{sample['metric_id']}"
        if key.startswith(CHECKED):
            values[f"{key}|{sample['ts_ms'] - sample['ts_ms'] % 60_000}"].append(sample["value"])
    if not values:
        raise SystemExit("the checked servers have no samples: enlarge the input")
    return {k: [min(v), max(v), math.fsum(v), len(v)] for k, v in values.items()}


def same_minutes(got: dict[str, list[float]], want: dict[str, list[float]]) -> bool:
    """Equal keys, min, max and count; sums equal but for float summation order."""
    return got.keys() == want.keys() and all(
        got[k][0:2] == want[k][0:2]
        and got[k][3] == want[k][3]
        and math.isclose(got[k][2], want[k][2], rel_tol=1e-9)
        for k in got
    )


def markers(codec: AvroCodec) -> list[Message]:
    """One sample each of new servers, sent alone to time produced → visible. Ahead of
    everything sent: an idle partition's event time advances with the wall clock, so a marker
    at a fixed time would turn late while the markers are measured."""
    out: list[Message] = []
    for n in range(MARKERS):
        ts = T0 + 600_000 + n * 1000
        batch = {
            "server_id": f"marker-{n:04d}",
            "sent_at_ms": ts,
            "samples": [{"metric_id": "m000", "ts_ms": ts, "value": 1.0}],
        }
        out.append((None, f"marker-{n:04d}".encode(), codec.dumps(batch), ts))
    return out


def series_path(server: str) -> str:
    """A server's series over the 2 hours from T0, as the query load reads it."""
    return f"/api/servers/{server}/metrics?from={iso(T0)}&to={iso(T0 + 2 * 3_600_000)}"


def envelope_messages(codec: AvroCodec, batches: list[Record]) -> list[Message]:
    return [(None, b["server_id"].encode(), codec.dumps(b), b["sent_at_ms"]) for b in batches]


def measure_loaded(broker: LocalBroker, codec: AvroCodec) -> Callable[[Worker, Result], None]:
    """Produced → visible latency of samples of new servers (read back by their series),
    then reads of a 2-hour by-server series."""

    def afterwards(worker: Worker, result: Result) -> None:
        result.latency_ms = latency_ms(
            broker.bootstrap,
            "metric-samples",
            markers(codec),
            lambda n: worker.url + series_path(f"marker-{n:04d}"),
            lambda _n, body: bool(body["metrics"].get("m000")),
        )
        series = worker.url + series_path("server-0000")
        result.queries = [query_load(series, c) for c in QUERY_CONNECTIONS]

    return afterwards


def run(args: argparse.Namespace) -> dict[str, list[Result]]:
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    codec = metric_batch_codec(workdir)
    batches = envelopes(random.Random(7), args)
    total = sum(len(b["samples"]) for b in batches)
    messages = envelope_messages(codec, batches)
    print(
        f"metrics: {total:,} samples in {len(batches):,} envelopes of "
        f"{args.metrics * args.per_metric} ({args.servers} servers x {args.metrics} metrics, "
        f"{args.minutes} min of event time), {PARTITIONS} partitions, one worker, local broker on "
        f"this host; peers read the first {args.faust_count:,} (Faust) and {args.quix_count:,} "
        f"(Quix) samples one per message; {args.runs} run(s) each",
        flush=True,
    )
    check = check_answers(batches, ["server-0000", f"server-{args.servers - 1:04d}"], "m000")
    peers = [
        (FAUST, ["bench.faust_tumbling", "worker", "--loglevel", "warn"], args.faust_count),
        (QUIX, ["bench.quix_windows", "metrics"], args.quix_count),
    ]
    results: dict[str, list[Result]] = defaultdict(list)
    for run_number in range(1, args.runs + 1):
        with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
            measured = [
                run_tally(
                    broker,
                    workdir,
                    TALLY,
                    "metric-samples",
                    messages,
                    total,
                    check,
                    then=("metric-rollups-by-metric",),
                    afterwards=measure_loaded(broker, codec),
                )
            ]
            raw = raw_ceiling(
                broker.bootstrap, "metric-samples", total, RAW, codec, lambda b: len(b["samples"])
            )
            measured.append(on_workers_loop(raw))
            measured[-1].latency_ms = consumed_latency_ms(
                broker.bootstrap, "metric-samples", markers(codec)
            )
            for peer, argv, count in peers:
                topic = f"metric-singles-{count}"
                one_each = singles(batches, count)
                asyncio.run(
                    produce(
                        broker.bootstrap,
                        topic,
                        [
                            (
                                None,
                                f"{b['server_id']}|{b['samples'][0]['metric_id']}".encode(),
                                codec.dumps(b),
                                b["samples"][0]["ts_ms"],
                            )
                            for b in one_each
                        ],
                        KEEP_ALL,
                    )
                )
                result, answer = run_baseline(
                    argv,
                    peer,
                    broker,
                    workdir,
                    count,
                    BENCH_TOPIC=topic,
                    BENCH_KEY_PREFIXES=",".join(CHECKED),
                )
                if not same_minutes(answer, expected_minutes(one_each)):  # type: ignore[arg-type]
                    raise SystemExit(f"{peer}: minutes differ from brute force:\n got {answer}")
                measured.append(result)
        with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
            measured.append(
                run_tally(
                    broker,
                    workdir,
                    f"{TALLY}, {WRITE_THROUGH}",
                    "metric-samples",
                    messages,
                    total,
                    check,
                    then=("metric-rollups-by-metric",),
                    settings=WRITE_THROUGH_SETTINGS,
                )
            )
        for result in measured:
            results[result.system].append(result)
            print(f"  run {run_number}: {result.system}: {result.rate:,.0f} samples/s", flush=True)
    return dict(results)


def arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=50)
    parser.add_argument(
        "--per-metric", type=int, default=10, help="samples per metric per envelope"
    )
    parser.add_argument("--minutes", type=int, default=1, help="event time covered")
    return peer_arguments(parser, "samples", faust_count=3_000, quix_count=100_000)


def main() -> None:
    args = arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0])).parse_args()
    results = run(args)
    report("metrics", results, "samples", [RAW, FAUST, QUIX])
    rate = statistics.median(r.rate for r in results[TALLY])
    print(f"the seeds' 2,000,000 samples/s would take {math.ceil(2_000_000 / rate)} such workers")


if __name__ == "__main__":
    main()
