"""Query answers from a worker of this checkout and from a worker of an earlier commit, side by
side in one run: the top-10 and a server's metrics, 100 clients (wrk), alternating.

    .venv/bin/python -m bench.reads_against [--commit dfdf324] [--runs 3] [--seconds 8]
                                            [--connections 100] [--count 100000]
                                            [--servers 1000]

Why: issue #21 asks for the top-10 from a worker at 2x, and a server's metrics at 3x, the
requests/s `make bench` measured on 2026-12-03 (at dfdf324). This machine's speed moves
several-fold from hour to hour (Quix's hopping window: 1,314 purchases/s that day, 4,261 on
2026-12-07), so fixed figures are met or missed by the hour; both commits in one run, on the
same input and the same cores, give the ratio whatever the hour.

Each side has its own local broker (internal topics are named without the app id, so two
workers on one broker would read each other's) and one worker with its default pipelines,
fed `make bench`'s inputs: single purchases (bench.sales) and metric envelopes
(bench.metrics). Both answers are checked against brute force before any read counts. Both
stacks stay up throughout: the one not being read idles beside the other, and the order of
the sides alternates from run to run. The earlier commit's tree comes from `git archive` of
this repository and runs in this checkout's virtualenv, on its own default event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import urllib.error
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import metrics, sales
from bench.common import Message, bench_worker, metric_batch_codec, produce, purchase_codec
from bench.query import TOP10_PATH, QueryLoad, query_load
from tally.broker.local import LocalBroker, free_port
from tests.harness import Verdict, Worker, start_all, wait_until

#: The commit whose `make bench` gave issue #21's baselines (2,529 and 884 req/s).
ISSUE_COMMIT = "dfdf324a71a32d9d2fcacf2add1c86d831a91a9a"
REPOSITORY = Path(__file__).resolve().parents[1]
#: The answers read, and their paths (a server's: bench.metrics' query load).
TOP10, SERVER_METRICS = "top-10", "a server's metrics"
PATHS = {TOP10: TOP10_PATH, SERVER_METRICS: metrics.series_path("server-0000")}
#: The side of this checkout.
NOW = "now"
#: How long a worker may take to process the input before its answers are checked.
PROCESSED_S = 600.0


def require_commit(commit: str) -> None:
    """Fail at once, not after the rest of `make bench`, when `commit` is not in this clone."""
    found = subprocess.run(
        ["git", "-C", str(REPOSITORY), "cat-file", "-e", f"{commit}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        raise SystemExit(
            f"commit {commit} is not in {REPOSITORY}: bench.reads_against needs a clone with "
            "its history (`git fetch --unshallow` in a shallow one)"
        )


def extract_tree(commit: str, into: Path) -> Path:
    """`commit`'s tree under `into` (git archive: this checkout's work tree is not touched),
    checked to be what `python -m tally` imports there: `-m` puts the working directory
    ahead of the editable install's finder."""
    require_commit(commit)
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", commit], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    imported = subprocess.run(
        [sys.executable, "-c", "import tally; print(tally.__file__)"],
        cwd=into,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(imported).is_relative_to(into):
        raise SystemExit(f"in {into}, `import tally` finds {imported}, not {commit}'s tree")
    return into


@dataclass
class Inputs:
    """What both workers read, and whether a worker's answers equal brute force over it."""

    purchases: list[Message]
    metric_envelopes: list[Message]
    #: Raises (AssertionError, KeyError) while a worker's answers differ from brute force.
    check: Callable[[Worker], None]


def inputs(
    workdir: Path, sales_args: argparse.Namespace, metrics_args: argparse.Namespace
) -> Inputs:
    """`make bench`'s single purchases and metric envelopes, encoded once for both sides."""
    events = sales.purchases_of(sales_args, sales_args.count)
    expected = sales.expected_top(events)
    envelopes = metrics.envelopes(random.Random(7), metrics_args)
    series = metrics.check_answers(envelopes, ["server-0000"], "m000")

    def check(worker: Worker) -> None:
        got = sales.shown_top(worker)
        assert got == expected, f"top-10 {got}, brute force {expected}"
        series(worker)

    return Inputs(
        sales.one_per_message(purchase_codec(workdir), events),
        metrics.envelope_messages(metric_batch_codec(workdir), envelopes),
        check,
    )


def verdict(check: Callable[[Worker], None], worker: Worker) -> Verdict:
    """Whether `worker`'s answers equal brute force yet (a busy or not yet ready worker's
    error is a "not yet" too), and if not, why."""
    try:
        check(worker)
    except (AssertionError, KeyError, urllib.error.URLError, TimeoutError, OSError) as exc:
        return Verdict(f"{type(exc).__name__}: {exc}"[:500])
    return Verdict()


def start_side(
    stack: ExitStack, workdir: Path, name: str, tree: Path | None, given: Inputs
) -> Worker:
    """A broker and a worker of `tree` (None: this checkout), fed and checked."""
    broker = stack.enter_context(
        LocalBroker("127.0.0.1", free_port(), log_path=workdir / f"broker-{name}.log")
    )
    worker = bench_worker(broker, workdir, f"against-{name[:12]}", "w1", tree)
    stack.callback(worker.stop)
    start_all(worker, timeout=120)
    asyncio.run(produce(broker.bootstrap, "purchases", given.purchases))
    asyncio.run(produce(broker.bootstrap, "metric-samples", given.metric_envelopes))
    wait_until(
        lambda: verdict(given.check, worker),
        PROCESSED_S,
        interval=1.0,
        what=f"the {name} worker's answers to equal brute force",
    )
    return worker


@dataclass
class AgainstCommit:
    """What `measure` found: its table, and the ratios `make bench` judges."""

    #: The reads' table (markdown), with how it was made.
    table: str
    #: TOP10, SERVER_METRICS → this checkout's requests/s ÷ the commit's (medians).
    ratios: dict[str, float]
    commit: str


def measure(
    commit: str,
    sales_args: argparse.Namespace,
    metrics_args: argparse.Namespace,
    runs: int,
    seconds: int,
    connections: int = 100,
) -> AgainstCommit:
    """Both sides started, fed and checked; then each answer read from each side in turn,
    `runs` times."""
    workdir = Path(tempfile.mkdtemp(prefix="tally-reads-against-"))
    short = commit[:7]
    print(
        f"reads against {short}: {sales_args.count:,} purchases and {metrics_args.servers:,} "
        f"servers' metrics to a worker of each; logs in {workdir}",
        flush=True,
    )
    tree = extract_tree(commit, workdir / "tree")
    given = inputs(workdir, sales_args, metrics_args)
    loads: dict[tuple[str, str], list[QueryLoad]] = {}
    with ExitStack() as stack:
        sides = {
            NOW: start_side(stack, workdir, NOW, None, given),
            short: start_side(stack, workdir, short, tree, given),
        }
        for worker in sides.values():  # warm-up, not counted
            for path in PATHS.values():
                query_load(worker.url + path, connections, 3)
        for run in range(runs):
            for what, path in PATHS.items():
                order = list(sides.items()) if run % 2 == 0 else list(sides.items())[::-1]
                for name, worker in order:
                    measured = query_load(worker.url + path, connections, seconds)
                    loads.setdefault((what, name), []).append(measured)
                    print(
                        f"  run {run + 1}: {what} from the {name} worker: "
                        f"{measured.requests_per_s:,.0f} req/s, p99 {measured.p99_ms:.1f} ms",
                        flush=True,
                    )
    lines = [
        f"### reads against {short}",
        "",
        f"`python -m bench.reads_against`: a worker of this checkout and one of {short} "
        f"(issue #21's baselines), each on its own local broker, fed {sales_args.count:,} "
        f"single purchases and {metrics_args.servers:,} servers' metric envelopes, answers "
        f"checked against brute force; then {connections} clients (wrk), {seconds} s each, "
        f"the sides in turn, medians of {runs} runs, both stacks up throughout on the same "
        "cores.",
        "",
        "| answer | worker | req/s | p50 ms | p99 ms | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    ratios: dict[str, float] = {}
    for what in PATHS:
        rate = {
            name: statistics.median(q.requests_per_s for q in loads[(what, name)]) for name in sides
        }
        ratios[what] = rate[NOW] / rate[short]
        for name in sides:
            runs_of = loads[(what, name)]
            lines.append(
                f"| {what} | {name} | {rate[name]:,.0f} | "
                f"{statistics.median(q.p50_ms for q in runs_of):.1f} | "
                f"{statistics.median(q.p99_ms for q in runs_of):.1f} | "
                f"{rate[name] / rate[short]:.2f}x |"
            )
    return AgainstCommit("\n".join(lines) + "\n", ratios, short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", default=ISSUE_COMMIT, help="the earlier commit")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8, help="each wrk run")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--count", type=int, default=100_000, help="single purchases")
    parser.add_argument("--servers", type=int, default=1000, help="servers reporting metrics")
    args = parser.parse_args()
    sales_args = sales.arguments(argparse.ArgumentParser()).parse_args([])
    metrics_args = metrics.arguments(argparse.ArgumentParser()).parse_args([])
    sales_args.count, metrics_args.servers = args.count, args.servers
    measured = measure(
        args.commit,
        sales_args,
        metrics_args,
        runs=args.runs,
        seconds=args.seconds,
        connections=args.connections,
    )
    print(measured.table)


if __name__ == "__main__":
    main()
