"""Sales benchmark: purchases/s per worker end to end for Tally (single purchases, and
per-partition envelopes), next to Faust's own `.hopping(86400, 3600)` table, Quix Streams'
`hopping_window(24 h, 1 h)` and the raw ceiling (aiokafka consume + Avro decode, no state),
all reading the same Avro messages on one local broker per run; Tally's query latency and
top-10 reads by 1 and 100 concurrent clients once the input is processed.

    .venv/bin/python -m bench.sales [--count 100000] [--items 1000000] [--envelope 200]
                                    [--faust-count 3000] [--quix-count 30000] [--runs 3]

Tally's input is produced once its worker is ready; its rate counts the events counted after
the first observation (polled every 100 ms), over the time from then to the last. The peers
read their own topic holding the last N of the same purchases and time themselves from their
first event. Every system's answer (the top-10 of the last 24-hour window) is checked against
brute force over the purchases it read before its speed counts.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.baseline import top_items
from bench.common import (
    KEEP_ALL,
    PARTITIONS,
    WRITE_THROUGH,
    WRITE_THROUGH_SETTINGS,
    Message,
    Result,
    consumed_latency_ms,
    latency_ms,
    on_workers_loop,
    peer_arguments,
    produce,
    purchase_batch_codec,
    purchase_codec,
    raw_ceiling,
    report,
    run_baseline,
    run_tally,
)
from bench.query import TOP10_PATH, query_load
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, Record
from tally.core.partitioning import group_by_partition
from tally.feed import historical_purchases
from tests.harness import Worker

HOUR_MS = 3_600_000
END_MS = 1_767_225_600_000 + 30 * 60_000  # 2026-01-01T00:30Z, mid-hour
#: The last window: the 24 hours up to the end of END_MS's hour.
WINDOW_START_MS = (END_MS // HOUR_MS - 23) * HOUR_MS
FAUST = "faust .hopping(86400, 3600)"
QUIX = "quix hopping_window(24 h, 1 h).sum()"
RAW = "raw ceiling: aiokafka consume + Avro decode"
SINGLE = "tally, single purchases"
#: Markers whose latency is measured, and the queries each loaded worker is read with.
MARKERS = 60
QUERY_CONNECTIONS = (1, 100)


def expected_top(events: list[Record]) -> list[list[object]]:
    """Brute force: the top-10 of the last window (never empty for the inputs here: a check
    against an empty answer could not fail)."""
    totals: Counter[str] = Counter()
    for e in events:
        if WINDOW_START_MS <= e["event_time_ms"] < WINDOW_START_MS + 24 * HOUR_MS:
            totals[e["item_id"]] += e["quantity"]
    if not totals:
        raise SystemExit("no purchase falls in the checked window: enlarge the input")
    return top_items(totals)


def shown_top(worker: Worker) -> list[list[object]]:
    """The worker's top-10 as [item, quantity] pairs, as `expected_top` gives them."""
    return [[i["item_id"], i["quantity"]] for i in worker.get(TOP10_PATH)["items"]]


def check_top(worker: Worker, events: list[Record], label: str) -> None:
    expected = expected_top(events)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = shown_top(worker)
        if got == expected:
            return
        time.sleep(0.2)
    raise SystemExit(f"{label}: top-10 differs from brute force:\n got {got}\n want {expected}")


def check_answer(label: str, answer: object, events: list[Record]) -> None:
    if answer != expected_top(events):
        raise SystemExit(f"{label}: top-10 differs from brute force:\n got {answer}")


def markers(codec: AvroCodec) -> list[Message]:
    """Purchases of new items, each sent alone to time produced → visible."""
    return [
        (
            None,
            f"marker-{n:04d}".encode(),
            codec.dumps(
                {
                    "purchase_id": f"marker-{n}",
                    "item_id": f"marker-{n:04d}",
                    "quantity": 1,
                    "unit_price_cents": 100,
                    "event_time_ms": END_MS,
                    "metadata": {},
                }
            ),
            END_MS,
        )
        for n in range(MARKERS)
    ]


def measure_loaded(
    broker: LocalBroker, codec: AvroCodec, queries: bool
) -> Callable[[Worker, Result], None]:
    """What `run_tally` measures on the loaded worker: produced → visible latency of new
    purchases (read back by `/api/sales/items/{id}`), then top-10 reads."""

    def afterwards(worker: Worker, result: Result) -> None:
        result.latency_ms = latency_ms(
            broker.bootstrap,
            "purchases",
            markers(codec),
            lambda n: f"{worker.url}/api/sales/items/marker-{n:04d}",
            lambda _n, body: body["quantity"] >= 1,
        )
        if queries:
            result.queries = [query_load(worker.url + TOP10_PATH, c) for c in QUERY_CONNECTIONS]

    return afterwards


def envelopes_of(codec: AvroCodec, purchases: list[Record], size: int) -> list[Message]:
    """`PurchaseBatch` messages of ~`size` purchases, each for one partition's items."""
    messages: list[Message] = []
    for start in range(0, len(purchases), size * PARTITIONS):
        chunk = purchases[start : start + size * PARTITIONS]
        for partition, group in group_by_partition(chunk, "item_id", PARTITIONS).items():
            value = codec.dumps({"purchases": group})
            messages.append(
                (partition, group[0]["item_id"].encode(), value, group[-1]["event_time_ms"])
            )
    return messages


def purchases_of(args: argparse.Namespace, count: int) -> list[Record]:
    """`count` purchases over `args.items` (Zipf), each run's the same: over the same 30 h,
    so the window's shape does not depend on the count."""
    return historical_purchases(
        random.Random(42), count=count, items=args.items, end_ms=END_MS, span_ms=30 * HOUR_MS
    )


def one_per_message(codec: AvroCodec, purchases: list[Record]) -> list[Message]:
    return [(None, e["item_id"].encode(), codec.dumps(e), e["event_time_ms"]) for e in purchases]


def run(args: argparse.Namespace) -> dict[str, list[Result]]:
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    single, envelope = purchase_codec(workdir), purchase_batch_codec(workdir)
    events, enveloped = (purchases_of(args, n) for n in (args.count, args.envelope_count))
    singles = one_per_message(single, events)
    envelopes = envelopes_of(envelope, enveloped, args.envelope)
    print(
        f"sales: {args.count:,} purchases one per message, {args.envelope_count:,} in "
        f"envelopes, {args.items:,} items (Zipf), 30 h of event time, "
        f"{PARTITIONS} partitions, one worker, local broker on this host; peers read the last "
        f"{args.faust_count:,} (Faust) and {args.quix_count:,} (Quix); {args.runs} run(s) each",
        flush=True,
    )

    peers = [
        (FAUST, ["bench.faust_hopping", "worker", "--loglevel", "warn"], args.faust_count),
        (QUIX, ["bench.quix_windows", "sales"], args.quix_count),
    ]
    results: dict[str, list[Result]] = {}
    for run_number in range(1, args.runs + 1):
        in_envelopes = f"tally, envelopes of ~{args.envelope}"
        for label, messages, purchases, cells in (
            (SINGLE, singles, events, {}),
            (in_envelopes, envelopes, enveloped, {}),
            (f"{in_envelopes}, {WRITE_THROUGH}", envelopes, enveloped, WRITE_THROUGH_SETTINGS),
        ):
            with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
                afterwards = measure_loaded(broker, single, queries=label == SINGLE)
                measured = [
                    run_tally(
                        broker,
                        workdir,
                        label,
                        "purchases",
                        messages,
                        len(purchases),
                        lambda worker, purchases=purchases: check_top(worker, purchases, "tally"),
                        afterwards=afterwards,
                        settings=cells,
                    )
                ]
                if label == SINGLE:
                    raw = raw_ceiling(broker.bootstrap, "purchases", len(events), RAW, single)
                    measured.append(on_workers_loop(raw))
                    measured[-1].latency_ms = consumed_latency_ms(
                        broker.bootstrap, "purchases", markers(single)
                    )
                    for peer, argv, count in peers:
                        topic = f"purchases-{count}"
                        # The last purchases: the ones in the checked window.
                        asyncio.run(produce(broker.bootstrap, topic, singles[-count:], KEEP_ALL))
                        result, answer = run_baseline(
                            argv,
                            peer,
                            broker,
                            workdir,
                            count,
                            BENCH_TOPIC=topic,
                            BENCH_WINDOW_START_MS=str(WINDOW_START_MS),
                        )
                        check_answer(peer, answer, events[-count:])
                        measured.append(result)
            for result in measured:
                results.setdefault(result.system, []).append(result)
                print(f"  run {run_number}: {result.system}: {result.rate:,.0f}/s", flush=True)
    return results


def arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--count", type=int, default=100_000, help="purchases per Tally run")
    parser.add_argument("--items", type=int, default=1_000_000, help="distinct items (Zipf)")
    parser.add_argument("--envelope", type=int, default=200, help="purchases per envelope")
    parser.add_argument(
        "--envelope-count",
        type=int,
        default=500_000,
        help="purchases per Tally run in envelopes (a few seconds' worth at least, so that "
        "the commit interval's writes are a small part of it)",
    )
    return peer_arguments(parser, "purchases", faust_count=3_000, quix_count=30_000)


def main() -> None:
    args = arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0])).parse_args()
    report("sales", run(args), "purchases", [FAUST, QUIX, RAW])


if __name__ == "__main__":
    main()
