"""What a window's totals per tenant cost the garbage collector: the merchants' window holds
one RankedTotals per merchant, and CPython's full collection traverses every tracked object
of the worker (while it runs, nothing else does: no event, no answer).

    .venv/bin/python -m bench.ranked_totals [--merchants 100000] [--purchases 600000]

Purchases Zipf over merchants (every merchant at least one), items uniform over 20,000: the
totals as the merchants' window holds them after a bench.merchants run. Each variant is
built in this process: with a rank index always (INDEXED_FROM = 0, as before) and with it only
for merchants of many items (the default). Prints objects tracked, the median of 7 full
collections, and the seconds to add the purchases.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from statistics import median

from tally.core.topk import GroupedTotals, RankedTotals
from tally.feed import merchant_names, zipf_weights


def measure(keys: list[tuple[str, int]], indexed_from: int) -> tuple[int, float, float]:
    """(objects tracked by the totals, full collection ms, seconds to add) for one variant."""
    RankedTotals.INDEXED_FROM = indexed_from
    gc.collect()
    before = len(gc.get_objects())
    started = time.perf_counter()
    totals = GroupedTotals()
    for key, amount in keys:
        totals.add(key, amount)
    added_s = time.perf_counter() - started
    gc.collect()
    tracked = len(gc.get_objects()) - before
    pauses = []
    for _ in range(7):
        started = time.perf_counter()
        gc.collect()
        pauses.append((time.perf_counter() - started) * 1000)
    del totals
    return tracked, median(pauses), added_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, default=100_000)
    parser.add_argument("--purchases", type=int, default=600_000)
    args = parser.parse_args()
    rng = random.Random(1)
    names = merchant_names(args.merchants)
    busy = rng.choices(names, cum_weights=zipf_weights(args.merchants), k=args.purchases)
    keys = [
        (f"{names[n] if n < args.merchants else merchant}|item{rng.randrange(20_000)}", 1)
        for n, merchant in enumerate(busy)
    ]
    default = RankedTotals.INDEXED_FROM
    print(f"{args.merchants:,} merchants, {args.purchases:,} purchases")
    print("| rank index | objects tracked | full collection, ms (median of 7) | adding, s |")
    print("|---|---:|---:|---:|")
    for label, indexed_from in (("always", 0), (f"from {default} items", default)):
        tracked, pause_ms, added_s = measure(keys, indexed_from)
        print(f"| {label} | {tracked:,} | {pause_ms:.0f} | {added_s:.2f} |")


if __name__ == "__main__":
    main()
