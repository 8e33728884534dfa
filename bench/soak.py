"""Chaos soak: three workers with standbys under a steady load; every 10-20 s a randomly chosen
worker is SIGKILLed and restarted; at the end every answer is checked against brute force.

    .venv/bin/python -m bench.soak [--seconds 300] [--kill-every 10-20] [--min-kills 15]
                                   [--seed 1]

`make soak` runs it for 5 minutes; tests/integration/test_soak_e2e.py runs a short one in
`make test`. Per kill it reports how long queries went unanswered: from the SIGKILL until every
survivor answers every query (health, the top-K, an item and a server of every partition) in
a generation of the group that no longer has the dead worker, and
from the restart until all three do (the rejoin rebalances the group). After the load stops it
checks, against every event the broker acknowledged:
- every worker's views of both pipelines (top-K, items, each server's minutes, each metric
  across servers): events lost and counted twice, by item quantity and by sample count;
- the final-minutes topic (metric-rollups-1m): each (server, minute) present, equal to brute
  force; a minute sent again after a kill is counted (at-least-once re-emits what a crash cut
  short; the value must be the same);
- the Parquet archive: each (server, metric, minute) exactly once, equal to brute force;
- every standby copy whole: no changelog hole left open (Faust's recovery skips records when
  a standby starts reading; each worker mends them within seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import bench_worker, metric_batch_codec, purchase_codec
from tally.archive.store import Archive
from tally.broker.admin import read_topic
from tally.broker.local import LocalBroker, free_port
from tally.core.clock import epoch_ms
from tally.topics import DEAD_LETTERS, LATE_EVENTS, METRIC_FINAL_MINUTES
from tests.harness import Worker, start_all, wait_until
from tests.load import MINUTE_MS, Load, agree, answers_every_query, item_totals, minute_rollups

#: (server, metric, minute ms) → (min, max, sum, count)
Cells = dict[tuple[str, str, int], tuple[float, float, float, int]]


@dataclass
class Kill:
    worker: str
    at_s: float
    #: SIGKILL → every survivor answers every query.
    failover_s: float
    #: Restart → every worker (the restarted one too) answers every query.
    rejoin_s: float


@dataclass
class SoakReport:
    kills: list[Kill] = field(default_factory=list)
    purchases: int = 0
    samples: int = 0
    #: Item quantity missing from / added to the answers, per worker (all must be 0).
    quantity_lost: int = 0
    quantity_doubled: int = 0
    #: Samples missing from / counted again in the minute rollups (all must be 0).
    samples_lost: int = 0
    samples_doubled: int = 0
    #: The final-minutes topic: (server, minute)s, ones missing, wrong, sent more than once.
    final_minutes: int = 0
    final_missing: int = 0
    final_wrong: int = 0
    final_resent: int = 0
    #: (server, minute)s sent more than once with different values.
    final_conflicting: int = 0
    #: Records set aside on the late-events and dead-letters topics (none are expected: the
    #: load sends nothing late or invalid).
    late: int = 0
    dead_letters: int = 0
    #: The archive: rows, missing, wrong, duplicated.
    archived: int = 0
    archive_missing: int = 0
    archive_wrong: int = 0
    archive_duplicates: int = 0
    #: Standby copies' holes mended by the workers last up, and holes left open after the
    #: load (each worker's /api/health, given 30 s).
    standby_holes_mended: int = 0
    standby_holes_open: int = 0

    def problems(self) -> list[str]:
        """What broke a promise (empty: the soak passed)."""
        counts = {
            "item quantity lost": self.quantity_lost,
            "item quantity counted twice": self.quantity_doubled,
            "samples lost": self.samples_lost,
            "samples counted twice": self.samples_doubled,
            "final minutes missing from the topic": self.final_missing,
            "final minutes unlike brute force": self.final_wrong,
            "final minutes sent again with another value": self.final_conflicting,
            "archive rows missing": self.archive_missing,
            "archive rows unlike brute force": self.archive_wrong,
            "archive rows written twice": self.archive_duplicates,
            "events judged late": self.late,
            "events dead-lettered": self.dead_letters,
            "standby copies left with a hole": self.standby_holes_open,
        }
        return [f"{what}: {n}" for what, n in counts.items() if n]

    def summary(self) -> str:
        failovers = [k.failover_s for k in self.kills] or [0.0]
        rejoins = [k.rejoin_s for k in self.kills] or [0.0]
        return "\n".join(
            [
                f"kills survived: {len(self.kills)}; unavailable after a kill: median "
                f"{statistics.median(failovers):.1f} s, longest {max(failovers):.1f} s; after "
                f"a restart: median {statistics.median(rejoins):.1f} s, longest "
                f"{max(rejoins):.1f} s",
                f"events acknowledged: {self.purchases:,} purchases, {self.samples:,} samples",
                f"lost: {self.quantity_lost} item quantity, {self.samples_lost} samples; "
                f"counted twice: {self.quantity_doubled} item quantity, "
                f"{self.samples_doubled} samples; set aside: {self.late} late, "
                f"{self.dead_letters} dead letters",
                f"final-minutes topic: {self.final_minutes:,} (server, minute)s, "
                f"{self.final_missing} missing, {self.final_wrong} unlike brute force, "
                f"{self.final_resent} sent again after a kill ({self.final_conflicting} with "
                "another value)",
                f"archive: {self.archived:,} rows, {self.archive_missing} missing, "
                f"{self.archive_wrong} unlike brute force, {self.archive_duplicates} twice",
                f"standby copies: {self.standby_holes_mended} holes mended (by the workers "
                f"last up), {self.standby_holes_open} left open",
                "PASS" if not self.problems() else "FAIL: " + "; ".join(self.problems()),
            ]
        )


def generation(worker: Worker) -> int:
    """The group generation the worker last joined (-1 while it cannot say)."""
    try:
        return int(worker.get_status("/api/health")[1]["group_generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def every_answer(workers: list[Worker]) -> bool:
    return all(answers_every_query(w) for w in workers)


def kill_loop(
    workers: list[Worker],
    seconds: float,
    kill_every: tuple[float, float],
    min_kills: int,
    rng: random.Random,
    say: Callable[[str], None],
) -> list[Kill]:
    """SIGKILL a random worker every `kill_every` seconds (from one kill to the next, or as
    soon as the last one's restart answers) and restart it, for `seconds` and at least
    `min_kills` times (a slow machine's failovers take longer)."""
    kills: list[Kill] = []
    began = time.monotonic()
    next_kill = began + rng.uniform(*kill_every)
    while next_kill < began + seconds or len(kills) < min_kills:
        time.sleep(max(0.0, next_kill - time.monotonic()))
        victim = rng.choice(workers)
        survivors = [w for w in workers if w is not victim]
        before = max(generation(w) for w in survivors)
        victim.stop(signal.SIGKILL)
        killed = time.monotonic()
        # Answers before the group has noticed the death (its session, 6 s, runs out) do not
        # count: the rebalance that follows makes every worker answer 503 for a while.
        wait_until(
            lambda s=survivors, b=before: all(generation(w) > b for w in s) and every_answer(s),
            120,
            0.2,
            "the survivors to answer in a new generation",
        )
        failover = time.monotonic() - killed
        restarted = time.monotonic()
        victim.start(ready_timeout=120)
        wait_until(lambda: every_answer(workers), 120, 0.2, "every worker to answer")
        kill = Kill(victim.log_path.stem, killed - began, failover, time.monotonic() - restarted)
        kills.append(kill)
        say(
            f"  kill {len(kills)} at {kill.at_s:.0f} s ({kill.worker}): survivors answered in "
            f"{kill.failover_s:.1f} s; restarted, all answered in {kill.rejoin_s:.1f} s"
        )
        next_kill = killed + rng.uniform(*kill_every)
    return kills


def brute_cells(load: Load) -> Cells:
    cells: Cells = {}
    for server in {s["server_id"] for s in load.samples}:
        for metric, minutes in minute_rollups(load, server).items():
            for minute, values in minutes.items():
                cells[(server, metric, minute)] = (
                    min(values),
                    max(values),
                    sum(values),
                    len(values),
                )
    return cells


def equal_cell(got: tuple[float, float, float, int], want: tuple[float, float, float, int]) -> bool:
    """Equal min, max and count; sums equal but for float summation order."""
    return (
        got[0] == want[0]
        and got[1] == want[1]
        and got[3] == want[3]
        and math.isclose(got[2], want[2], rel_tol=1e-9)
    )


def miscounted(worker: Worker, load: Load, since_ms: int) -> tuple[int, int, int, int]:
    """(quantity lost, quantity doubled, samples lost, samples doubled) in `worker`'s answers."""
    q_lost = q_doubled = s_lost = s_doubled = 0
    for item, want in item_totals(load).items():
        got = worker.get(f"/api/sales/items/{item}")["quantity"]
        q_lost += max(0, want - got)
        q_doubled += max(0, got - want)
    window = f"from={since_ms - 2 * MINUTE_MS}&to={int(time.time() * 1000) + MINUTE_MS}"
    answered: Counter[tuple[str, str, int]] = Counter()
    for server in {s["server_id"] for s in load.samples}:
        metrics = worker.get(f"/api/servers/{server}/metrics?{window}")["metrics"]
        for metric, points in metrics.items():
            for point in points:
                answered[(server, metric, epoch_ms(point["t"]))] = point["count"]
    want = brute_cells(load)
    for key in want.keys() | answered.keys():  # a count under a wrong key is counted twice
        expected = want[key][3] if key in want else 0
        s_lost += max(0, expected - answered[key])
        s_doubled += max(0, answered[key] - expected)
    return q_lost, q_doubled, s_lost, s_doubled


async def records_in(bootstrap: str, topic: str) -> int:
    return sum([1 async for _ in read_topic([bootstrap], topic)])


async def final_minutes(bootstrap: str) -> list[tuple[str, int, dict[str, dict[str, float]]]]:
    out = []
    async for record in read_topic([bootstrap], METRIC_FINAL_MINUTES):
        value = json.loads(record.value)
        out.append((value["server_id"], value["minute_ms"], value["metrics"]))
    return out


def final_cells(minutes: list[tuple[str, int, dict[str, dict[str, float]]]]) -> Cells:
    return {
        (server, metric, minute): (c["min"], c["max"], c["sum"], int(c["count"]))
        for server, minute, metrics in minutes
        for metric, c in metrics.items()
    }


def archive_rows(
    archive_dir: Path,
) -> list[tuple[tuple[str, str, int], tuple[float, float, float, int]]]:
    archive = Archive(archive_dir)
    rows = []
    for day in archive.days():
        for file in archive.files(day):
            table = pq.read_table(archive.path(file)).to_pylist()
            rows += [
                (
                    (r["server"], r["metric"], r["minute_ms"]),
                    (r["min"], r["max"], r["sum"], r["count"]),
                )
                for r in table
            ]
    return rows


def standby_holes(workers: list[Worker]) -> tuple[int, int]:
    """(holes mended, holes open) in the workers' standby copies, from their health."""
    recoveries = [worker.get("/api/health")["recovery"] for worker in workers]
    return (
        sum(r["standby_holes_mended"] for r in recoveries),
        sum(len(r["standby_holes"]) for r in recoveries),
    )


def check(
    report: SoakReport, workers: list[Worker], load: Load, since_ms: int, archive_dir: Path
) -> None:
    """Fill `report` with what the answers, the topic and the archive hold against brute
    force (the load has stopped)."""
    report.purchases, report.samples = len(load.purchases), len(load.samples)
    for worker in workers:
        try:
            agree(worker, load, since_ms, timeout=60)
        except AssertionError as exc:  # counted below
            print(f"  {exc}", flush=True)
        lost_q, doubled_q, lost_s, doubled_s = miscounted(worker, load, since_ms)
        report.quantity_lost += lost_q
        report.quantity_doubled += doubled_q
        report.samples_lost += lost_s
        report.samples_doubled += doubled_s
    try:
        wait_until(lambda: not standby_holes(workers)[1], 30, 2.0, "every standby hole mended")
    except AssertionError as exc:
        print(f"  {exc}", flush=True)
    report.standby_holes_mended, report.standby_holes_open = standby_holes(workers)
    report.late = asyncio.run(records_in(load.bootstrap, LATE_EVENTS))
    report.dead_letters = asyncio.run(records_in(load.bootstrap, DEAD_LETTERS))
    want = brute_cells(load)
    # The last minute is final once the watermark (the wall clock, idle) passes it + grace.
    wanted_minutes = {(server, minute) for server, _, minute in want}

    def all_final() -> bool:
        sent = {(s, m) for s, m, _ in asyncio.run(final_minutes(load.bootstrap))}
        return wanted_minutes <= sent

    try:
        wait_until(all_final, 150, 2.0, "every minute of the load final")
    except AssertionError as exc:
        print(f"  {exc}", flush=True)
    minutes = asyncio.run(final_minutes(load.bootstrap))
    times = Counter((server, minute) for server, minute, _ in minutes)
    report.final_minutes = len(times)
    report.final_resent = sum(n - 1 for n in times.values())
    got = final_cells(minutes)  # a minute sent again: the later copy
    by_copy: dict[tuple[str, int], set[str]] = {}
    for server, minute, metrics in minutes:
        by_copy.setdefault((server, minute), set()).add(json.dumps(metrics, sort_keys=True))
    report.final_conflicting = sum(len(copies) > 1 for copies in by_copy.values())
    report.final_missing = sum(1 for key in want if key not in got)
    report.final_wrong = sum(
        1 for key, cell in got.items() if key not in want or not equal_cell(cell, want[key])
    )

    def all_archived() -> bool:
        return {key for key, _ in archive_rows(archive_dir)} >= set(want)

    try:
        wait_until(all_archived, 60, 2.0, "every final minute archived")
    except AssertionError as exc:
        print(f"  {exc}", flush=True)
    rows = archive_rows(archive_dir)
    keys = Counter(key for key, _ in rows)
    archived = dict(rows)
    report.archived = len(rows)
    report.archive_duplicates = sum(n - 1 for n in keys.values())
    report.archive_missing = sum(1 for key in want if key not in archived)
    report.archive_wrong = sum(
        1 for key, cell in archived.items() if key not in want or not equal_cell(cell, want[key])
    )


def soak(
    workers: list[Worker],
    load: Load,
    archive_dir: Path,
    seconds: float,
    kill_every: tuple[float, float] = (10.0, 20.0),
    min_kills: int = 0,
    seed: int = 1,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> SoakReport:
    """Start `workers`, run the load and the kill loop for `seconds` (and `min_kills`), then
    check."""
    start_all(*workers, timeout=120)
    since_ms = int(time.time() * 1000)
    report = SoakReport()
    load.start()
    try:
        report.kills = kill_loop(workers, seconds, kill_every, min_kills, random.Random(seed), say)
    finally:
        load.stop()
    for worker in workers:
        worker.wait_ready(120)
    check(report, workers, load, since_ms, archive_dir)
    return report


def soak_workers(make: Callable[..., Worker], archive_dir: Path, count: int = 3) -> list[Worker]:
    """`count` workers of both pipelines and the archive sink, standbys on, one archive."""
    return [
        make(
            f"w{n}",
            TALLY_STANDBY_REPLICAS="1",
            TALLY_ARCHIVE_DIR=str(archive_dir),
            TALLY_ARCHIVE_FLUSH_SECONDS="2",
        )
        for n in range(1, count + 1)
    ]


def kill_interval(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long kills go on")
    parser.add_argument(
        "--kill-every", type=kill_interval, default=(10.0, 20.0), help="seconds, e.g. 10-20"
    )
    parser.add_argument(
        "--min-kills", type=int, default=15, help="kills go on past --seconds until this many"
    )
    parser.add_argument("--seed", type=int, default=1, help="which workers die, and when")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tally-soak-"))
    app_id = f"soak{uuid.uuid4().hex[:8]}"
    print(
        f"soak: 3 workers (standby replicas 1), ~200 purchases/s and 80 metric batches/s, a "
        f"worker SIGKILLed every {args.kill_every[0]:g}-{args.kill_every[1]:g} s and restarted, "
        f"for {args.seconds:g} s and at least {args.min_kills} kills; logs in {workdir}",
        flush=True,
    )
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:

        def make(name: str, **env: str) -> Worker:
            return bench_worker(broker, workdir, app_id, name, **env)

        workers = soak_workers(make, workdir / "archive")
        load = Load(broker.bootstrap, purchase_codec(workdir), metric_batch_codec(workdir))
        try:
            report = soak(
                workers,
                load,
                workdir / "archive",
                args.seconds,
                args.kill_every,
                min_kills=args.min_kills,
                seed=args.seed,
            )
        finally:
            for worker in workers:
                worker.stop(signal.SIGKILL)
    print("\n" + report.summary())
    raise SystemExit(1 if report.problems() else 0)


if __name__ == "__main__":
    main()
