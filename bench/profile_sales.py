"""Where a worker's time goes on purchases: py-spy samples the worker while it folds a backlog
(1,000,000 items, Zipf, as `make bench`; single purchases, or envelopes with `--envelope`),
then the samples are grouped by stage.

    .venv/bin/python -m bench.profile_sales [--count 200000] [--seconds 40] [--envelope 200]

py-spy (the bench extra: `pip install -e '.[bench]'`, which `make bench` does) samples every
thread of the worker 100 times a second, pausing it for each sample: sampled without pausing,
about a third of the stacks came back cut short of their roots on this Python (3.11), and
their stages' time was counted as "everything else". The table gives each stage's
share of all samples (inclusive: a stage counts its callees), so Tally's own steps can be told
from Faust's machinery around them; the raw samples are kept for a flame graph.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.common import Message, cpu_seconds, purchase_batch_codec, purchase_codec, run_tally
from bench.sales import END_MS, HOUR_MS, check_top, envelopes_of, one_per_message
from tally.broker.local import LocalBroker, free_port
from tally.feed import historical_purchases
from tests.harness import Worker

#: Stages, by the function (as py-spy names it) whose inclusive samples they are.
STAGES = {
    "the sales agent (Tally's batch, its cells into the cache)": "count_sales (tally/sales/",
    "  decoding and validating": "decoded_purchases (tally/sales/",
    "  skipping what the cells hold": "PaneWindows.unapplied (tally/runtime/",
    "  folding into the window": "SlidingTotals.ingest (tally/core/",
    "  cells into the write-behind cache": "PaneWindows.persist (tally/runtime/",
    "  in-flight record on disk": "InFlightRecords.record (tally/core/",
    "  publishing the top-K": "publish (tally/sales/",
    "the cell cache written out (RocksDB batches, changelog records)": "flush (tally/runtime/cells",
    "Faust's fetch loop, stream and dispatch": "Consumer._drain_messages (faust/",
    "other threads (Faust's consumer thread: aiokafka fetches)": "Thread._bootstrap (threading",
    "the Prometheus scrape (the bench polls /metrics)": "Metrics.get (tally/web/prometheus",
}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(__file__).parents[1] / ".venv" / "bin" / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]' (make bench does)")
    return found


def shares(
    raw: Path, stages: dict[str, str] = STAGES, within: str = ""
) -> tuple[int, dict[str, float]]:
    """All samples (those whose stack names `within`: one thread's), and each stage's
    inclusive share of them."""
    total, hits = 0, Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or within not in stack:
            continue
        total += int(count)
        for stage, marker in stages.items():
            if marker in stack:
                hits[stage] += int(count)
    return total, {stage: hits[stage] / total for stage in stages} if total else {}


@contextmanager
def sampled(worker: Worker, seconds: int, raw: Path, cpu: dict[str, float]) -> Iterator[None]:
    """py-spy samples the worker for `seconds` (none when 0) while the input is processed;
    `cpu` gets the worker's CPU seconds used meanwhile ("used")."""
    assert worker.process is not None
    pid = worker.process.pid
    started = cpu_seconds(pid)
    sampler = None
    if seconds:
        command = [py_spy(), "record", "-p", str(pid), "-d", str(seconds), "-r", "100"]
        command.append("--subprocesses")  # a worker's offload process (runtime.offload)
        command += ["-f", "raw", "-o", str(raw)]
        sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        cpu["used"] = cpu_seconds(pid) - started
        if sampler is not None:
            sampler.wait(seconds + 30)


def print_shares(
    raw: Path,
    stages: dict[str, str],
    within: str = "",
    rest: str = "everything else (the event loop, Faust's services and timers)",
    of: str = "all samples",
) -> None:
    """The stages' shares of the samples (`of`: those naming `within`), and the `rest`'s."""
    total, by_stage = shares(raw, stages, within)
    print(f"{total:,} samples ({raw})\n")
    print(f"| stage | share of {of} |\n|---|---:|")
    for stage, share in by_stage.items():
        print(f"| {stage} | {share:.1%} |")
    unstaged = 1 - sum(share for stage, share in by_stage.items() if not stage.startswith(" "))
    print(f"| {rest} | {unstaged:.1%} |")


@dataclass
class ProfiledRun:
    """One run's broker, and what to pass `run_tally` as `beside` (py-spy, CPU into `cpu`)."""

    number: int
    broker: LocalBroker
    beside: Callable[[Worker], AbstractContextManager[None]]
    cpu: dict[str, float] = field(default_factory=dict)


def profiled_runs(runs: int, workdir: Path, raw: Path, seconds: int) -> Iterator[ProfiledRun]:
    """`runs` runs, each on a fresh broker, sampled for `seconds` (0: CPU only)."""
    for number in range(1, runs + 1):
        cpu: dict[str, float] = {}
        log = workdir / f"broker{number}.log"
        with LocalBroker("127.0.0.1", free_port(), log_path=log) as broker:
            yield ProfiledRun(
                number, broker, partial(sampled, seconds=seconds, raw=raw, cpu=cpu), cpu
            )


def print_medians(summary: str, raw: Path, seconds: int, stages: dict[str, str]) -> None:
    """The runs' medians (`summary`), then the stages' shares when py-spy sampled."""
    print(f"\nmedians: {summary}")
    if seconds:
        print_shares(raw, stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="purchases in the backlog")
    parser.add_argument("--seconds", type=int, default=40, help="how long py-spy samples")
    parser.add_argument(
        "--envelope", type=int, default=0, help="purchases per envelope (0: one per message)"
    )
    args = parser.parse_args()
    py_spy()  # installed, before anything starts
    workdir = Path(tempfile.mkdtemp(prefix="tally-profile-"))
    raw = workdir / "samples.raw"
    codec = purchase_codec(workdir)
    events = historical_purchases(
        random.Random(42), count=args.count, items=1_000_000, end_ms=END_MS, span_ms=30 * HOUR_MS
    )
    messages: list[Message] = (
        envelopes_of(purchase_batch_codec(workdir), events, args.envelope)
        if args.envelope
        else one_per_message(codec, events)
    )

    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        result = run_tally(
            broker,
            workdir,
            "single purchases" if not args.envelope else f"envelopes of ~{args.envelope}",
            "purchases",
            messages,
            len(events),
            lambda worker: check_top(worker, events, "tally"),
            beside=lambda worker: sampled(worker, args.seconds, raw, {}),
        )
    print(f"\n{result.rate:,.0f} purchases/s while sampled")
    if args.seconds:
        print_shares(raw, STAGES)


if __name__ == "__main__":
    main()
