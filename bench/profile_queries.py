"""Where a worker's event loop goes while it answers one query as fast as it can: one worker
(its default pipelines, as in `make bench`'s sales runs), a few hundred purchases ingested,
then `wrk` (100 clients, the run's operator token) on the top-10 without py-spy, then again
while py-spy samples the worker; the samples of the event loop's thread are grouped by stage.

    .venv/bin/python -m bench.profile_queries [--seconds 10] [--connections 100] [--runs 3]
                                              [--path /api/sales/top] [--pipelines sales]

What it is for: the issue asks for the top-10 from a worker at 2x its requests/s; this says
how much of each request is Tally's (the gate, readiness, routing, the kept answer and its
validators) and how much is aiohttp's and Faust's around it. py-spy pauses the worker for
each sample (bench.profile_sales), so the sampled rate is lower than the unsampled one; the
shares are what count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from statistics import median

from bench.common import bench_worker
from bench.profile_sales import print_shares, py_spy, sampled
from bench.query import TOP10_PATH, query_load
from tally.broker.local import LocalBroker, free_port
from tally.core.clock import now_ms
from tests.harness import purchase_row, start_all, wait_until

#: Stages of the event loop's thread, by the function (as py-spy names it) whose inclusive
#: samples they are.
STAGES = {
    "aiohttp: a request read and parsed": "RequestHandler.data_received (aiohttp/",
    "aiohttp: the request's handlers (below)": "Application._handle (aiohttp/",
    "  the access gate (token, scope)": "Gate.admit (tally/http/",
    "  Faust's view (dispatch, sensors; Tally's query below)": "View.dispatch (faust/web/",
    "    Tally's query view (readiness, routing, validators)": "OwnedView.get (tally/runtime/",
    "      the answer (kept, serialized)": ".owned (tally/",
    "aiohttp: the answer written": "RequestHandler.finish_response (aiohttp/",
    "Faust's agents and timers (heartbeats)": "Agent._execute_actor (faust/",
}
#: What marks a sample of the event loop's thread (the worker's main thread).
EVENT_LOOP = "tally/__main__.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run, and py-spy's")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="unsampled wrk runs (median)")
    parser.add_argument("--path", default=TOP10_PATH)
    parser.add_argument("--pipelines", help="TALLY_PIPELINES (default: the worker's)")
    args = parser.parse_args()
    py_spy()  # installed, before anything starts
    workdir = Path(tempfile.mkdtemp(prefix="tally-profile-queries-"))
    raw = workdir / "samples.raw"
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        chosen = {"TALLY_PIPELINES": args.pipelines} if args.pipelines else {}
        worker = bench_worker(broker, workdir, "profile-queries", "w1", **chosen)
        start_all(worker, timeout=120)
        try:
            rows = [purchase_row(n, f"item-{n % 30:03d}", 1 + n % 7, now_ms()) for n in range(300)]
            status, answer, _ = worker.post("/api/ingest/purchases", json.dumps(rows).encode())
            if status != 202:
                raise SystemExit(f"the ingest refused the purchases: {status} {answer}")
            wait_until(lambda: worker.get(TOP10_PATH)["items"], 60, what="a top-10")
            url = worker.url + args.path
            query_load(url, args.connections, 3)  # warm-up, not counted
            rates = []
            for run in range(1, args.runs + 1):
                rates.append(query_load(url, args.connections, args.seconds).requests_per_s)
                print(f"run {run}: {rates[-1]:,.0f} req/s", flush=True)
            with sampled(worker, args.seconds, raw, {}):
                load = query_load(url, args.connections, args.seconds + 1)
        finally:
            worker.stop()
    print(
        f"\n{args.path}, {args.connections} clients: {median(rates):,.0f} req/s (median of "
        f"{args.runs}), {load.requests_per_s:,.0f} while sampled"
    )
    print_shares(
        raw, STAGES, EVENT_LOOP, "everything else (the event loop)", "the event loop's samples"
    )


if __name__ == "__main__":
    main()
