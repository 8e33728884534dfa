"""What access control costs: the top-10 read by 100 clients (wrk) and metric samples posted to
`/api/ingest/metrics`, on a worker with tokens checked (TALLY_AUTH=on, no rate limit: one load
generator, one token) and on one without (TALLY_AUTH=off), side by side in one run.

    .venv/bin/python -m bench.access [--runs 3] [--seconds 8] [--requests 300] [--rows 200]

One broker, both workers up for the whole run (sales and metrics pipelines), each fed the same
purchases first; the measurements alternate between them, and medians are printed with the
overhead (on / off - 1). Every request carries the same token either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from bench.common import bench_worker, run_in_scratch
from bench.ingest import bodies, through_http
from bench.query import TOP10_PATH, query_load
from tally.broker.local import LocalBroker, free_port
from tests.harness import Worker, purchase_row, start_all, wait_until

MODES = ("on", "off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode; medians quoted")
    parser.add_argument("--seconds", type=int, default=8, help="length of each read run")
    parser.add_argument("--connections", type=int, default=100, help="wrk's clients")
    parser.add_argument("--requests", type=int, default=300, help="ingest posts per run")
    parser.add_argument("--rows", type=int, default=200, help="samples per ingest post")
    run_in_scratch(parser, "bench-access-", lambda args, root: print(measure(args, root)))


def feed(worker: Worker, purchases: int) -> None:
    now = int(time.time() * 1000)
    rows = [purchase_row(n, f"item-{n % 50:03d}", 1 + n % 7, now) for n in range(purchases)]
    for start in range(0, purchases, 500):
        status, answer, _ = worker.post(
            "/api/ingest/purchases", json.dumps(rows[start : start + 500]).encode()
        )
        assert status == 202 and answer["rejected"] == 0, answer
    wait_until(lambda: len(worker.get(TOP10_PATH)["items"]) == 10, 60, what="a top-10")


def measure(args: argparse.Namespace, root: Path) -> str:
    reads: dict[str, list[float]] = {mode: [] for mode in MODES}
    ingest: dict[str, list[float]] = {mode: [] for mode in MODES}
    samples = args.requests * args.rows
    with LocalBroker("127.0.0.1", free_port(), log_path=root / "broker.log") as broker:
        workers = {
            mode: bench_worker(
                broker,
                root,
                f"access-{mode}",
                "w1",
                TALLY_AUTH=mode,
                TALLY_PIPELINES="sales,metrics",
                TALLY_LOG_LEVEL="warn",
            )
            for mode in MODES
        }
        start_all(*workers.values())
        try:
            for worker in workers.values():
                feed(worker, 5_000)
            for run in range(args.runs):
                order = MODES if run % 2 == 0 else MODES[::-1]
                for mode in order:
                    worker = workers[mode]
                    load = query_load(worker.url + TOP10_PATH, args.connections, args.seconds)
                    reads[mode].append(load.requests_per_s)
                    batches = bodies(args.requests, args.rows, int(time.time() * 1000), run)
                    payloads = [b"\n".join(json.dumps(r).encode() for r in b) for b in batches]
                    seconds, _ = asyncio.run(
                        through_http(worker.url + "/api/ingest/metrics", payloads, 8)
                    )
                    ingest[mode].append(samples / seconds)
                    print(
                        f"run {run + 1}, auth {mode}: top-10 {load.requests_per_s:,.0f} req/s, "
                        f"ingest {samples / seconds:,.0f} samples/s",
                        flush=True,
                    )
        finally:
            for worker in workers.values():
                worker.stop()
    return table(reads, ingest, args)


def table(
    reads: dict[str, list[float]], ingest: dict[str, list[float]], args: argparse.Namespace
) -> str:
    lines = [
        f"\nAccess control on vs off, one worker each, {args.runs} runs alternating, medians",
        "| measure | auth on | auth off | overhead |",
        "|---|---:|---:|---:|",
    ]
    for name, unit, figures in (
        (f"top-10 reads, {args.connections} clients", "req/s", reads),
        (f"ingest, {args.requests} posts x {args.rows} samples, 8 clients", "samples/s", ingest),
    ):
        on, off = statistics.median(figures["on"]), statistics.median(figures["off"])
        lines.append(f"| {name} | {on:,.0f} {unit} | {off:,.0f} {unit} | {1 - on / off:+.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
