"""Where a metrics worker's time goes, and its CPU per sample: one worker of the metrics
pipeline takes `make bench`'s envelopes (1,000 servers x 50 metrics, 500 samples each, as
`bench.metrics`); py-spy samples it (`--seconds`; 0: no sampling) and the samples are grouped
by stage, beside the worker's CPU µs per sample and the raw consume+decode ceiling's.

    .venv/bin/python -m bench.profile_metrics [--seconds 0] [--runs 3] [--minutes 1]

What it is for: the issue asks the worker for 0.5x the ceiling; this says which stages stand
between the two (CPU per sample varies far less than rates on this shared machine).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from statistics import median

from bench.common import metric_batch_codec, on_workers_loop, raw_ceiling, run_tally
from bench.metrics import arguments, envelope_messages, envelopes
from bench.profile_sales import print_medians, profiled_runs, py_spy

#: Stages, by the function (as py-spy names it) whose inclusive samples they are.
STAGES = {
    "rolling up (the samples stage's batch)": "roll_up (tally/metrics/",
    "  decoding the envelopes (Avro)": "loads (tally/codecs/avro",
    "  folding the samples": "fold_message (tally/metrics/",
    "  records read and written": "persist (tally/metrics/",
    "  rollups handed to the by-metric stage": "send_to_metric_index (tally/metrics/",
    "indexing by metric (the second stage's batch)": "index_partition (tally/metrics/",
    "closing minutes": "close_partition_minutes (tally/metrics/",
    "the cell cache written out": "flush (tally/runtime/cells",
    "Faust's consumer thread (aiokafka fetches)": "Thread._bootstrap (threading",
    "folding envelopes ahead (the offload process, or the loop in its place)": (
        "prefold (tally/metrics/prefold"
    ),
}


def main() -> None:
    parser = arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--seconds", type=int, default=0, help="py-spy sampling (0: none)")
    args = parser.parse_args()
    if args.seconds:
        py_spy()  # installed, before anything starts
    workdir = Path(tempfile.mkdtemp(prefix="tally-profile-metrics-"))
    raw = workdir / "samples.raw"
    codec = metric_batch_codec(workdir)
    batches = envelopes(random.Random(7), args)
    total = sum(len(b["samples"]) for b in batches)
    messages = envelope_messages(codec, batches)
    rates, ceilings, cpu_us = [], [], []
    for run in profiled_runs(args.runs, workdir, raw, args.seconds):
        result = run_tally(
            run.broker,
            workdir,
            "metrics",
            "metric-samples",
            messages,
            total,
            check=lambda worker: None,
            then=("metric-rollups-by-metric",),
            beside=run.beside,
        )
        ceiling = on_workers_loop(
            raw_ceiling(
                run.broker.bootstrap,
                "metric-samples",
                total,
                "raw",
                codec,
                lambda b: len(b["samples"]),
            )
        )
        rates.append(result.rate)
        ceilings.append(ceiling.rate)
        cpu_us.append(run.cpu["used"] / total * 1e6)
        print(
            f"run {run.number}: {result.rate:,.0f} samples/s ({result.rate / ceiling.rate:.2f}x "
            f"the ceiling's {ceiling.rate:,.0f}), {cpu_us[-1]:.2f} worker CPU µs each",
            flush=True,
        )
    summary = (
        f"{median(rates):,.0f} samples/s, ceiling {median(ceilings):,.0f}/s, "
        f"{median(cpu_us):.2f} worker CPU µs each"
    )
    print_medians(summary, raw, args.seconds, STAGES)


if __name__ == "__main__":
    main()
