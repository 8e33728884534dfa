"""Query answers at cache speed: the top-10 and one item's answer read by 100 clients (wrk),
straight from a worker and through the shipped micro-cache (docker/nginx.conf, Debian's nginx),
while a steady load of purchases keeps the answers changing.

    .venv/bin/python -m bench.cached_reads [--runs 3] [--seconds 8] [--connections 100]
                                           [--paced-rate 20000] [--paced-only]

One broker and one worker (all pipelines) for the whole run; the load (tests.load: ~200
purchases/s, 80 metric batches/s) runs throughout. First the top-10 through the cache at a
steady `--paced-rate`, `--runs` times (the latency at that load, not at saturation): before the
saturating runs, which leave the worker behind its input, and early, while the local broker
holds little (its CPU grows with the length of the run: ~8 % of a core in the first minute
of this load, 16-23 % two to three minutes in, on the cores the p99 is measured on). Then
each saturating configuration `--runs` times, alternating, with the medians, the cache's
ratio to the direct reads and the answers the worker sent meanwhile (200s, and 304s: the
cache revalidating). `--paced-only` runs only the steady runs, e.g. to compare settings the
worker reads from the environment (`TALLY_CACHE_STALE_SECONDS=0`,
`TALLY_CACHE_MAX_AGE_SECONDS=60`).
Before the numbers count, one answer through the cache is checked against the worker's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    bench_worker,
    caught_up,
    cpu_shares,
    metric_batch_codec,
    purchase_codec,
    query_answers,
)
from bench.query import TOP10_PATH, QueryLoad, query_load
from tally.broker.local import LocalBroker, free_port
from tests.answer_cache import nginx_binary, start_cache
from tests.harness import Worker, start_all, wait_until
from tests.load import Load

PATHS = {"top-10": TOP10_PATH, "an item": "/api/sales/items/item-000"}


def settled_answers(worker: Worker, timeout_s: float = 30.0) -> Counter[str]:
    """The worker's answers so far, once it has answered the last requests of the load before
    (up to one per client, which would count in the next run's)."""
    answered = query_answers(worker)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = query_answers(worker)
        if now == answered:
            return now
        answered = now
    raise SystemExit(f"the worker kept answering for {timeout_s:.0f} s after a load ended")


#: Messages waiting on the worker's inputs that count as caught up (the load sends ~280 a
#: second), and how long to wait for it before measuring anyway.
CAUGHT_UP_MESSAGES = 200
CATCH_UP_S = 30.0


def settled_intake(worker: Worker) -> None:
    """Wait until the worker has processed what the load sent meanwhile: a saturating run
    starves its intake, and catching up afterwards would compete with the next
    measurement for the cores."""
    left = caught_up(worker, CATCH_UP_S, CAUGHT_UP_MESSAGES)
    if left > CAUGHT_UP_MESSAGES:
        print(f"  (still {left:,} messages behind after {CATCH_UP_S:.0f} s)", flush=True)


def core_shares(shares: dict[str, float]) -> str:
    """The share of a core each process used, as a sentence's clause."""
    return ", ".join(f"{name} used {share:.0%} of a core" for name, share in shares.items())


@dataclass
class CachedReads:
    #: The reads' table (markdown), with how it was made.
    table: str
    #: The top-10 through the cache at the steady rate: requests/s reached and p99 (medians).
    paced_rate: float
    paced_p99_ms: float


def measure(
    runs: int, seconds: int, connections: int, paced_rate: int = 20_000, paced_only: bool = False
) -> CachedReads:
    """Run the reads (`paced_only`: only the steady run through the cache)."""
    saturating = {} if paced_only else PATHS
    nginx_binary()
    workdir = Path(tempfile.mkdtemp(prefix="tally-cached-reads-"))
    print(f"cached reads: one worker under ~200 purchases/s; logs in {workdir}", flush=True)
    loads: dict[tuple[str, str], list[QueryLoad]] = {}
    answered: dict[tuple[str, str], list[Counter[str]]] = {}
    paced: list[QueryLoad] = []
    #: The share of a core each process used during each steady run.
    busy: dict[str, list[float]] = {}
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        worker = bench_worker(broker, workdir, "cachedreads", "w1")
        start_all(worker, timeout=120)
        load = Load(broker.bootstrap, purchase_codec(workdir), metric_batch_codec(workdir))
        load.start()
        cache = None
        try:
            wait_until(lambda: worker.get(PATHS["top-10"])["items"], 60, what="a top-10 with items")
            cache = start_cache(workdir, worker, PATHS["top-10"])
            via_cache = cache.client.get(PATHS["an item"])
            assert via_cache["item_id"] == "item-000", via_cache
            assert worker.process is not None
            processes = {
                "the worker": worker.process.pid,
                "the broker": broker.pid,
                "nginx": cache.process.pid,
            }
            for run in range(runs):
                settled_intake(worker)
                measured, shares = cpu_shares(
                    processes,
                    lambda: query_load(
                        cache.url + PATHS["top-10"], connections, seconds, rate=paced_rate
                    ),
                )
                paced.append(measured)
                for name, share in shares.items():
                    busy.setdefault(name, []).append(share)
                print(
                    f"  run {run + 1}: top-10 from the cache at {paced_rate:,} req/s offered: "
                    f"{measured.requests_per_s:,.0f} req/s, p50 {measured.p50_ms:.1f} ms, "
                    f"p99 {measured.p99_ms:.1f} ms; {core_shares(shares)}",
                    flush=True,
                )
            for run in range(runs):
                for what, path in saturating.items():
                    for where, base in (("worker", worker.url), ("cache", cache.url)):
                        before = settled_answers(worker)
                        settled_intake(worker)
                        measured = query_load(base + path, connections, seconds)
                        sent = settled_answers(worker) - before
                        loads.setdefault((what, where), []).append(measured)
                        answered.setdefault((what, where), []).append(sent)
                        print(
                            f"  run {run + 1}: {what} from the {where}: "
                            f"{measured.requests_per_s:,.0f} req/s, p50 {measured.p50_ms:.1f} "
                            f"ms, p99 {measured.p99_ms:.1f} ms; the worker answered "
                            f"{sent['200']:,} (200) and {sent['304']:,} (304)",
                            flush=True,
                        )
        finally:
            load.stop()
            if cache is not None:
                cache.stop()
            worker.stop()
    lines = [
        "### cached reads",
        "",
        f"`python -m bench.cached_reads`: one worker under ~200 purchases/s and 80 metric "
        f"batches/s, {connections} clients (wrk), {seconds} s each, medians of {runs} runs, "
        "straight from the worker and through docker/nginx.conf (Debian's nginx), all on the "
        "same cores; each load starts once the worker has caught up with the purchases "
        "and metrics sent during the one before.",
    ]
    if saturating:
        lines += [
            "",
            "| answer | from | req/s | p50 ms | p99 ms | ratio to the worker | the worker's "
            "200s / 304s |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
    for what in saturating:
        direct = statistics.median(r.requests_per_s for r in loads[(what, "worker")])
        for where in ("worker", "cache"):
            runs_of = loads[(what, where)]
            rate = statistics.median(r.requests_per_s for r in runs_of)
            sent = answered[(what, where)]
            lines.append(
                f"| {what} | {where} | {rate:,.0f} | "
                f"{statistics.median(r.p50_ms for r in runs_of):.1f} | "
                f"{statistics.median(r.p99_ms for r in runs_of):.1f} | {rate / direct:.2f}x | "
                f"{statistics.median(c['200'] for c in sent):,.0f} / "
                f"{statistics.median(c['304'] for c in sent):,.0f} |"
            )
    reached = statistics.median(r.requests_per_s for r in paced)
    p99 = statistics.median(r.p99_ms for r in paced)
    lines += [
        "",
        f"The top-10 through the cache at a steady {paced_rate:,} requests/s offered by the "
        f"same {connections} clients (bench/paced.lua): {reached:,.0f} req/s reached, p50 "
        f"{statistics.median(r.p50_ms for r in paced):.1f} ms, p99 {p99:.1f} ms (medians of "
        f"{runs} runs{', made before the saturating runs' if saturating else ''}); meanwhile "
        f"{core_shares({name: statistics.median(shares) for name, shares in busy.items()})}.",
    ]
    return CachedReads("\n".join(lines) + "\n", reached, p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument(
        "--paced-rate", type=int, default=20_000, help="requests/s offered in the steady run"
    )
    parser.add_argument(
        "--paced-only", action="store_true", help="only the steady run through the cache"
    )
    args = parser.parse_args()
    measured = measure(args.runs, args.seconds, args.connections, args.paced_rate, args.paced_only)
    print(measured.table)


if __name__ == "__main__":
    main()
