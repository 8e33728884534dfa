"""The write-behind cell cache's size against speed, writes and memory (issue #21).

    .venv/bin/python -m bench.cell_cache [--runs 3] [--sizes 0,2000,10000,100000]

The sales envelope workload of `make bench` (500,000 purchases over 1,000,000 items, Zipf, in
envelopes of ~200) through one worker per TALLY_CELL_CACHE_CELLS size (0: cells written after
every batch, the baseline), sizes interleaved run by run on a fresh broker each. A run is timed
to its last counted purchase plus the flushes before the commit after it (the writes the cache
put off: bench.common.run_tally), and the top-10 is checked against brute force. Prints medians
of the rate, the changelog records per purchase and the worker's peak RSS, and each size's rate
ratio to the baseline.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

from bench.common import Result, purchase_batch_codec, run_tally
from bench.sales import END_MS, HOUR_MS, check_top, envelopes_of
from tally.broker.local import LocalBroker, free_port
from tally.feed import historical_purchases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="0,2000,10000,100000", help="cache sizes, cells")
    parser.add_argument("--count", type=int, default=500_000, help="purchases per run")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="tally-cells-"))
    codec = purchase_batch_codec(workdir)
    purchases = historical_purchases(
        random.Random(42), count=args.count, items=1_000_000, end_ms=END_MS, span_ms=30 * HOUR_MS
    )
    messages = envelopes_of(codec, purchases, 200)
    print(
        f"cell cache: {args.count:,} purchases in envelopes of ~200 over 1,000,000 items, "
        f"sizes {sizes} cells, {args.runs} run(s) each, interleaved",
        flush=True,
    )
    results: dict[int, list[Result]] = {size: [] for size in sizes}
    for run_number in range(1, args.runs + 1):
        for size in sizes:
            with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
                result = run_tally(
                    broker,
                    workdir,
                    f"cells={size}",
                    "purchases",
                    messages,
                    len(purchases),
                    lambda worker: check_top(worker, purchases, "tally"),
                    settings={"TALLY_CELL_CACHE_CELLS": str(size)},
                )
            results[size].append(result)
            print(
                f"  run {run_number}: {size:,} cells: {result.rate:,.0f}/s, "
                f"{result.records_per_event:.3f} records/purchase, "
                f"peak RSS {result.peak_rss_mb:.0f} MB",
                flush=True,
            )
    baseline = sizes[0]
    print(
        "\n| TALLY_CELL_CACHE_CELLS | purchases/s (median) | ratio to "
        f"{baseline:,} (run by run) | changelog records / purchase | peak RSS MB |"
    )
    print("|---:|---:|---:|---:|---:|")
    for size, runs in results.items():
        ratios = [r.rate / b.rate for r, b in zip(runs, results[baseline], strict=True)]
        print(
            f"| {size:,} | {statistics.median(r.rate for r in runs):,.0f} "
            f"| {statistics.median(ratios):.2f}x "
            f"| {statistics.median(r.records_per_event for r in runs):.3f} "
            f"| {statistics.median(r.peak_rss_mb for r in runs):.0f} |"
        )


if __name__ == "__main__":
    main()
