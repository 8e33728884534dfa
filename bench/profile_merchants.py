"""Where a worker's time goes on live merchants purchases, and its CPU per purchase: one
worker of the merchants pipeline (fresh, nothing held before) takes `--count` purchases of
100,000 merchants with event times in the last 10 minutes, in envelopes of ~200; py-spy
samples it (`--seconds`; 0: no sampling) and the samples are grouped by stage.

    .venv/bin/python -m bench.profile_merchants [--count 400000] [--seconds 0] [--runs 3]

The worker's CPU seconds per purchase (/proc, from the first message to the last committed)
vary far less than its rate on this shared machine: to compare two versions, run this at each
(e.g. in a `git worktree` of the older commit, from its own directory) and take the medians.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from statistics import median

from bench.common import run_tally
from bench.merchants import LIVE_SPAN_MS, envelopes, merchant_purchases
from bench.profile_sales import print_medians, profiled_runs, py_spy
from tally.topics import MERCHANT_PURCHASES

#: Stages, by the function (as py-spy names it) whose inclusive samples they are.
STAGES = {
    "re-keying (decode, validate, hand on)": "rekey_partition (tally/merchants/",
    "  decoding the input (Avro)": "RecordTypeCodec.loads (tally/codecs/",
    "counting (the merchants stage's batch)": "count_partition (tally/merchants/",
    "  decoding what was handed over": "unpacked (tally/merchants/",
    "  merchant-hours read, updated, written": "fold_hours (tally/merchants/",
    "  the window and its pane cells": "SlidingTotals.ingest (tally/core/",
    "the cell cache written out": "flush (tally/runtime/cells",
    "Faust's consumer thread (aiokafka fetches)": "Thread._bootstrap (threading",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400_000, help="live purchases")
    parser.add_argument("--seconds", type=int, default=0, help="py-spy sampling (0: none)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.seconds:
        py_spy()  # installed, before anything starts
    workdir = Path(tempfile.mkdtemp(prefix="tally-profile-merchants-"))
    raw = workdir / "samples.raw"
    events = merchant_purchases(args.count, 100_000, 1, LIVE_SPAN_MS)
    messages = envelopes(events, 200, workdir)
    rates, cpu_us = [], []
    for run in profiled_runs(args.runs, workdir, raw, args.seconds):
        result = run_tally(
            run.broker,
            workdir,
            "merchants, live",
            "purchases",
            messages,
            len(events),
            check=lambda worker: None,
            beside=run.beside,
            settings={"TALLY_PIPELINES": "merchants", "TALLY_ARCHIVE_DIR": str(workdir / "a")},
            counts=MERCHANT_PURCHASES,
        )
        rates.append(result.rate)
        cpu_us.append(run.cpu["used"] / len(events) * 1e6)
        print(f"run {run.number}: {result.rate:,.0f} purchases/s, {cpu_us[-1]:.1f} CPU µs each")
    summary = f"{median(rates):,.0f} purchases/s, {median(cpu_us):.1f} worker CPU µs each"
    print_medians(summary, raw, args.seconds, STAGES)


if __name__ == "__main__":
    main()
