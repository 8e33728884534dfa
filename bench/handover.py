"""What handing purchases from one stage to the next costs per envelope: fastavro (the
`PurchaseBatch` schema producers use) against orjson (codecs.handover, what the merchants
pipeline's re-keying stage writes and its counting stage reads).

    .venv/bin/python -m bench.handover [--size 50] [--rounds 7]

An envelope of `--size` purchases as the re-keying stage writes them (a quarter of a
producer's envelope of 200 goes to each of 4 partitions); each round encodes and decodes it
2,000 times with each; medians of the rounds, and the ratio.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from io import BytesIO
from statistics import median

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from tally.codecs.avro import load_schema
from tally.codecs.handover import HandedRecords
from tally.feed import historical_purchases

REPEATS = 2_000


def per_call_us(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(REPEATS):
        work()
    return (time.perf_counter() - started) / REPEATS * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(1)
    purchases = historical_purchases(
        rng, count=args.size, items=20_000, end_ms=1_767_225_600_000, span_ms=3_600_000
    )
    for n, purchase in enumerate(purchases):
        purchase.update(tenant=f"m{n:05d}", customer_id=f"c{n}", metadata={"channel": "web"})
    schema = parse_schema(load_schema("purchase_batch"))
    envelope = {"purchases": purchases}
    handed = HandedRecords("purchases", list(purchases[0]))

    def avro_bytes() -> bytes:
        buffer = BytesIO()
        schemaless_writer(buffer, schema, envelope)
        return buffer.getvalue()

    avro, json = avro_bytes(), handed.dumps(purchases)
    timings: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, work in (
            ("fastavro encode", avro_bytes),
            ("fastavro decode", lambda: schemaless_reader(BytesIO(avro), schema, None)),
            ("orjson encode", lambda: handed.dumps(purchases)),
            ("orjson decode", lambda: handed.loads(json)),
        ):
            timings.setdefault(name, []).append(per_call_us(work))
    med = {name: median(values) for name, values in timings.items()}
    print(f"envelope of {args.size} purchases: {len(avro):,} bytes Avro, {len(json):,} JSON")
    print(f"(medians of {args.rounds} rounds of {REPEATS:,} calls)\n")
    print("| step | fastavro µs | orjson µs | fastavro ÷ orjson |\n|---|---:|---:|---:|")
    for step in ("encode", "decode"):
        avro_us, json_us = med[f"fastavro {step}"], med[f"orjson {step}"]
        print(f"| {step} | {avro_us:,.1f} | {json_us:,.1f} | {avro_us / json_us:.1f}x |")


if __name__ == "__main__":
    main()
