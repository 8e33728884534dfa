"""Query answers from a worker of this checkout and from a worker of an earlier commit, side by
side in one run: the top-10 and a server's metrics, 100 clients (wrk), alternating.

    .venv/bin/python -m bench.reads_against [--commit dfdf324] [--runs 3] [--seconds 8]
                                            [--count 100000] [--servers 1000]

Why: issue #21 asks for the top-10 from a worker at 2x, and a server's metrics at 3x, the
requests/s `make bench` measured on 2026-12-03 (at dfdf324). This machine's speed moves
several-fold from hour to hour (Quix's hopping window: 1,314 purchases/s that day, 4,261 on
2026-12-07), so fixed figures are met or missed by the hour; both commits in one run, on the
same input and the same cores, give the ratio whatever the hour.

Each side has its own local broker (internal topics are named without the app id, so two
workers on one broker would read each other's) and one worker with its default pipelines,
fed the same input as `make bench`'s: single purchases over 1,000,000 items (Zipf, 30 h of
event time) and the metric envelopes. Both answers are checked against brute force before any
read counts. Both stacks stay up throughout: the one not being read idles beside the other.
The earlier commit's tree comes from `git archive` of this repository and runs in this
checkout's virtualenv.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import metrics, sales
from bench.common import (
    Message,
    bench_worker,
    metric_batch_codec,
    produce,
    purchase_codec,
)
from bench.query import QueryLoad, query_load
from tally.broker.local import LocalBroker, free_port
from tally.core.clock import iso
from tally.feed import historical_purchases
from tests.harness import Worker, start_all, wait_until

#: The commit whose `make bench` gave issue #21's baselines (2,529 and 884 req/s).
ISSUE_COMMIT = "dfdf324"
REPOSITORY = Path(__file__).resolve().parents[1]
#: How long a worker may take to process the input before its answers are checked.
PROCESSED_S = 600.0


def checkout(commit: str, into: Path) -> Path:
    """`commit`'s tree under `into` (git archive: no work tree of this repository is touched)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", commit], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(
            f"git archive {commit} failed: {archive.stderr.decode().strip()} (a clone with "
            "its history is needed; `git fetch --unshallow` in a shallow one)"
        )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


@dataclass
class Inputs:
    """What both workers read, and how to tell that a worker has read all of it."""

    purchases: list[Message]
    metric_envelopes: list[Message]
    #: Raises (AssertionError, KeyError) while a worker's answers differ from brute force.
    check: Callable[[Worker], None]
    #: The server's metrics read under load.
    series_path: str


def inputs(workdir: Path, count: int, servers: int) -> Inputs:
    """`make bench`'s inputs (bench.sales, bench.metrics), encoded once for both sides."""
    single, batch = purchase_codec(workdir), metric_batch_codec(workdir)
    events = historical_purchases(
        random.Random(42),
        count=count,
        items=1_000_000,
        end_ms=sales.END_MS,
        span_ms=30 * sales.HOUR_MS,
    )
    expected = sales.expected_top(events)
    metrics_args = metrics.arguments(argparse.ArgumentParser()).parse_args([])
    metrics_args.servers = servers
    envelopes = metrics.envelopes(random.Random(7), metrics_args)
    series = metrics.check_answers(envelopes, ["server-0000"], "m000")

    def check(worker: Worker) -> None:
        got = [[i["item_id"], i["quantity"]] for i in worker.get("/api/sales/top")["items"]]
        assert got == expected, f"top-10 {got}, brute force {expected}"
        series(worker)

    window = f"from={iso(metrics.T0)}&to={iso(metrics.T0 + 2 * 3_600_000)}"
    return Inputs(
        [(None, e["item_id"].encode(), single.dumps(e), e["event_time_ms"]) for e in events],
        [(None, b["server_id"].encode(), batch.dumps(b), b["sent_at_ms"]) for b in envelopes],
        check,
        f"/api/servers/server-0000/metrics?{window}",
    )


def answers_right(check: Callable[[Worker], None], worker: Worker) -> bool:
    try:
        check(worker)
    except (AssertionError, KeyError):
        return False
    return True


@dataclass
class Side:
    name: str
    worker: Worker


def start_side(
    stack: ExitStack, workdir: Path, name: str, tree: Path | None, given: Inputs
) -> Side:
    """A broker and a worker of `tree` (None: this checkout), fed and checked."""
    broker = stack.enter_context(
        LocalBroker("127.0.0.1", free_port(), log_path=workdir / f"broker-{name}.log")
    )
    worker = bench_worker(broker, workdir, f"against-{name}", "w1", tree)
    start_all(worker, timeout=120)
    stack.callback(worker.stop)
    asyncio.run(produce(broker.bootstrap, "purchases", given.purchases))
    asyncio.run(produce(broker.bootstrap, "metric-samples", given.metric_envelopes))
    wait_until(
        lambda: answers_right(given.check, worker),
        PROCESSED_S,
        interval=1.0,
        what=f"the {name} worker's answers to match brute force",
    )
    given.check(worker)  # (raises with what differs, had the wait not been enough)
    return Side(name, worker)


@dataclass
class AgainstCommit:
    #: The reads' table (markdown), with how it was made.
    table: str
    #: answer ("top-10", "a server's metrics") → this checkout's requests/s ÷ the commit's.
    ratios: dict[str, float]
    commit: str


def measure(
    commit: str, runs: int, seconds: int, connections: int, count: int, servers: int
) -> AgainstCommit:
    workdir = Path(tempfile.mkdtemp(prefix="tally-reads-against-"))
    print(
        f"reads against {commit}: {count:,} purchases and {servers:,} servers' metrics to a "
        f"worker of each; logs in {workdir}",
        flush=True,
    )
    given = inputs(workdir, count, servers)
    then_tree = checkout(commit, workdir / "then")
    loads: dict[tuple[str, str], list[QueryLoad]] = {}
    with ExitStack() as stack:
        sides = [
            start_side(stack, workdir, "now", None, given),
            start_side(stack, workdir, commit, then_tree, given),
        ]
        paths = {"top-10": "/api/sales/top", "a server's metrics": given.series_path}
        for side in sides:  # warm-up, not counted
            for path in paths.values():
                query_load(side.worker.url + path, connections, 3)
        for run in range(runs):
            for what, path in paths.items():
                for side in sides:
                    measured = query_load(side.worker.url + path, connections, seconds)
                    loads.setdefault((what, side.name), []).append(measured)
                    print(
                        f"  run {run + 1}: {what} from the {side.name} worker: "
                        f"{measured.requests_per_s:,.0f} req/s, p99 {measured.p99_ms:.1f} ms",
                        flush=True,
                    )
    lines = [
        f"### reads against {commit}",
        "",
        f"`python -m bench.reads_against`: a worker of this checkout and one of {commit} "
        f"(issue #21's baselines), each on its own local broker, fed {count:,} single "
        f"purchases and {servers:,} servers' metric envelopes, answers checked against brute "
        f"force; then {connections} clients (wrk), {seconds} s each, alternating, medians of "
        f"{runs} runs, both stacks up throughout on the same cores.",
        "",
        "| answer | worker | req/s | p50 ms | p99 ms | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    ratios: dict[str, float] = {}
    for what in paths:
        rate = {
            s.name: statistics.median(q.requests_per_s for q in loads[(what, s.name)])
            for s in sides
        }
        ratios[what] = rate["now"] / rate[commit]
        for side in sides:
            runs_of = loads[(what, side.name)]
            lines.append(
                f"| {what} | {side.name} | {rate[side.name]:,.0f} | "
                f"{statistics.median(q.p50_ms for q in runs_of):.1f} | "
                f"{statistics.median(q.p99_ms for q in runs_of):.1f} | "
                f"{rate[side.name] / rate[commit]:.2f}x |"
            )
    return AgainstCommit("\n".join(lines) + "\n", ratios, commit)


def arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--commit", default=ISSUE_COMMIT, help="the earlier commit")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8, help="each wrk run")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--count", type=int, default=100_000, help="single purchases")
    parser.add_argument("--servers", type=int, default=1000, help="servers reporting metrics")
    return parser


def main() -> None:
    args = arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0])).parse_args()
    measured = measure(
        args.commit, args.runs, args.seconds, args.connections, args.count, args.servers
    )
    print(measured.table)


if __name__ == "__main__":
    main()
