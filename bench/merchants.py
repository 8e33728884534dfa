"""Merchants benchmark: one worker of the merchants pipeline, per run, with 100,000 merchants
held: purchases/s in envelopes (re-keyed by merchant, folded into merchant-hours and each
merchant's window), live and as a 30-day backlog, and its peak RSS; on the loaded worker, a
30-day daily query of the busiest 1,000 merchants in turn (wrk, 1 and 100 clients: p50/p99 and
requests/s; then offered at 25/50/75/90 % of what 100 clients got answered) and a one-year
range read from the archive (20 requests, one after the other); then readers (TALLY_ROLE=read)
started one by one, the 100 clients spread over 1, 2 and 3 of them, and the worker's live rate
alone, with that load on the readers, and with it on the worker itself (the worker pinned to
one core, the readers and wrk to the other).

    .venv/bin/python -m bench.merchants [--count 300000] [--live 300000] [--merchants 100000]
                                        [--envelope 200] [--runs 3]
                                        [--out bench/results/<date>-merchants.md]

First `--count` purchases over 30 days of event time (every merchant buys at least once, then
Zipf over merchants and items), timed as a backlog: the window slides through them, so the
older hours are final, archived and merged into day cells, and with about 0.004 purchases per
merchant-hour, nearly every purchase has an hour of its own to close. Then `--live` purchases
with event times in the last 10 minutes, timed as what a worker sustains as traffic arrives
(the source's 120,000 events/s are stated as workers at that rate). A 30-day daily query reads
a cell per final day and the last day's hours from the hot table. The one-year range (ending 40
days back, before the hot day cells) is of a merchant whose year of hours was written to the
archive before the run (8,760 merchant-hours, through the archive's own append, each day's
file shared with 20,000 hours of other merchants). Every answer
is checked against brute force over the purchases before a figure counts; each reader too, once
started.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import shutil
import statistics
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

from bench.common import (
    PARTITIONS,
    Message,
    Pauses,
    Result,
    collector_pauses,
    counted,
    peak_rss_mb,
    produce,
    purchase_batch_codec,
    run_in_scratch,
    run_tally,
    scraped,
)
from bench.query import QueryLoad, parse_wrk, wrk_binary
from tally.archive.merchant_hours import MERCHANT_HOURS
from tally.archive.store import Archive
from tally.broker.local import LocalBroker, free_port
from tally.core.merchants import HOUR_MS, HourFigures
from tally.core.partitioning import group_by_partition
from tally.feed import historical_purchases, merchant_names, zipf_weights
from tally.topics import MERCHANT_FINAL_HOURS, MERCHANT_PURCHASES
from tests.harness import ACCESS, Worker, bearer

DAY_MS = 24 * HOUR_MS
END_MS = 1_767_225_600_000 + 30 * 60_000  # 2026-01-01T00:30Z, mid-hour
SPAN_MS = 30 * DAY_MS
#: A query's range is whole hours: the first one asked for.
FIRST_HOUR = (END_MS - SPAN_MS) // HOUR_MS * HOUR_MS
#: The merchant whose year of hours is in the archive.
YEARLONG = "year-merchant"
LUA = Path(__file__).with_name("merchants.lua")
PACED_LUA = Path(__file__).with_name("merchants_paced.lua")
BUSIEST = 1_000
#: The archive sink's flush interval: shorter than the default minute, so that the run's
#: final hours are all written soon after its last purchase.
ARCHIVE_FLUSH_S = 10
QUERY_CONNECTIONS = (1, 100)
THIRTY_DAYS = f"sales?from={END_MS - SPAN_MS}&to={END_MS}&step=1d"
#: Other merchants' hours in each day's file of the year-long merchant's partition (the
#: 30-day backlog's days hold about 1,700 each; a partition of 25,000 merchants active an hour
#: a day would write 25,000): the merchant's rows are found among them.
YEAR_NEIGHBOURS = 20_000
#: The year before the hot day cells (35 days): every hour of it from the archive.
YEAR_END_MS = END_MS - END_MS % DAY_MS - 40 * DAY_MS
YEAR_START_MS = YEAR_END_MS - 365 * DAY_MS
ONE_YEAR = f"sales?from={YEAR_START_MS}&to={YEAR_END_MS}&step=1d"


def merchant_purchases(count: int, merchants: int, seed: int, span_ms: int = SPAN_MS) -> list[dict]:
    """`count` purchases over `span_ms` (30 days) to END_MS, in time order (jittered):
    merchant n's first purchase is purchase n (every merchant is held), the rest Zipf over
    merchants."""
    rng = random.Random(seed)
    events = historical_purchases(rng, count=count, items=20_000, end_ms=END_MS, span_ms=span_ms)
    names = merchant_names(merchants)
    busy = rng.choices(names, cum_weights=zipf_weights(merchants), k=count)
    for n, event in enumerate(events):
        event["tenant"] = names[n] if n < merchants else busy[n]
        event["customer_id"] = f"c{rng.randrange(50_000)}"
        event["metadata"] = {"channel": rng.choice(("web", "app", "store"))}
    return events


def envelopes(events: list[dict], size: int, workdir: Path) -> list[Message]:
    codec = purchase_batch_codec(workdir)
    out: list[Message] = []
    for start in range(0, len(events), size * PARTITIONS):
        chunk = events[start : start + size * PARTITIONS]
        for partition, group in group_by_partition(chunk, "item_id", PARTITIONS).items():
            value = codec.dumps({"purchases": group})
            out.append((partition, group[0]["item_id"].encode(), value, END_MS))
    return out


def year_hours() -> list[tuple[int, HourFigures]]:
    """The year-long merchant's hours (the same every time)."""
    rng = random.Random(7)
    hours = []
    for hour in range(365 * 24):
        figures = HourFigures()
        for _ in range(rng.randint(1, 6)):
            figures.add(rng.randint(1, 4), rng.randint(100, 9_999), f"c{rng.randrange(400)}", {})
        hours.append((YEAR_START_MS + hour * HOUR_MS, figures))
    return hours


def write_year(archive_dir: Path, hours: list[tuple[int, HourFigures]]) -> None:
    """The year-long merchant's `hours` in the archive as its sink would have written them (a
    flush per day), each day's file shared with YEAR_NEIGHBOURS hours of other merchants of
    its partition."""
    archive = Archive(archive_dir / "merchant-hours", layout=MERCHANT_HOURS)
    neighbours = merchant_names(YEAR_NEIGHBOURS)
    filler = HourFigures()
    for n in range(3):
        filler.add(1, 1_000, f"c{n}", {})
    filler_record = archived(filler)
    for day in range(365):
        first = YEAR_START_MS + day * DAY_MS
        offset = day * (YEAR_NEIGHBOURS + 24)
        batch = [
            (offset + n, (merchant, first + n % 24 * HOUR_MS, filler_record))
            for n, merchant in enumerate(neighbours)
        ]
        offset += YEAR_NEIGHBOURS
        batch += [
            (offset + n, (YEARLONG, hour_ms, archived(figures)))
            for n, (hour_ms, figures) in enumerate(hours[day * 24 : (day + 1) * 24])
        ]
        archive.append(900, batch)


def archived(figures: HourFigures) -> dict[str, Any]:
    """Figures as the archive sink hands them to the archive (the sketch as bytes)."""
    record = figures.to_record()
    record["customers"] = figures.customers.serialize_compact()
    return record


def year_in(archive_dir: Path, written: Path) -> list[tuple[int, HourFigures]]:
    """The year (write_year) in `archive_dir`: written once, into `written`, and copied for
    each run (writing it takes about a minute). Returns the year-long merchant's hours."""
    hours = year_hours()
    if not written.exists():
        print(
            f"writing a year of {YEAR_NEIGHBOURS + 24:,} merchant-hours a day to the archive ...",
            flush=True,
        )
        write_year(written, hours)
    shutil.copytree(written, archive_dir)
    return hours


def get(worker: Worker, path: str) -> dict:
    request = urllib.request.Request(worker.url + path, headers=bearer(ACCESS.operator_token))
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def archived_all(worker: Worker) -> int:
    """Merchant-hours the worker's archive sink has written so far."""
    return int(
        sum(
            value
            for labels, value in scraped(worker, "tally_events_total")
            if labels == {"topic": MERCHANT_FINAL_HOURS, "outcome": "archived"}
        )
    )


def check_thirty_days(worker: Worker, events: list[dict], served_by: str = "owner") -> None:
    """The busiest merchant's 30 days per day against brute force (day cells and hours),
    from the copy `served_by` names."""
    merchant = "m00000"
    truth: Counter[int] = Counter()
    for e in events:
        if e["tenant"] == merchant and FIRST_HOUR <= e["event_time_ms"] <= END_MS:
            truth[e["event_time_ms"] // DAY_MS * DAY_MS] += e["quantity"] * e["unit_price_cents"]
    answer = get(worker, f"/api/merchants/{merchant}/{THIRTY_DAYS}")
    found = {step["start_ms"]: step["revenue_cents"] for step in answer["steps"]}
    if found != dict(truth):
        raise SystemExit(f"{merchant}'s 30 days differ from brute force: {found} != {truth}")
    if answer["served_by"] != served_by:
        raise SystemExit(f"the 30-day query was answered by {answer['served_by']}, not {served_by}")
    if {tier["tier"] for tier in answer["tiers"]} != {"days", "hot"}:
        raise SystemExit(f"a 30-day query should read day cells and hours: {answer['tiers']}")


def wrk_command(
    worker: Worker, connections: int, seconds: int, threads: int, rate: float | None = None
) -> list[str]:
    """wrk asking the busiest merchants' 30 days in turn: as fast as answers come, or `rate`
    requests/s offered (bench/merchants_paced.lua)."""
    script, paced = (LUA, []) if rate is None else (PACED_LUA, [str(threads * 1000 / rate)])
    return [
        wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-H", f"Authorization: Bearer {ACCESS.operator_token}",
        "-s", str(script), worker.url, "--", str(BUSIEST), THIRTY_DAYS, *paced,
    ]  # fmt: skip


#: Offered loads of the 30-day query, as shares of what 100 clients got answered (in the same
#: run): the latency at each, and so the highest load at which the p99 stays under a bound.
OFFERED_SHARES = (0.25, 0.5, 0.75, 0.9)


def offered_loads(worker: Worker, saturated: float) -> list[QueryLoad]:
    """The 30-day query at each share of `saturated` requests/s, from 100 clients."""
    return [wrk_merchants([worker], 100, rate=share * saturated) for share in OFFERED_SHARES]


def wrk_merchants(
    workers: list[Worker], connections: int, seconds: int = 8, rate: float | None = None
) -> QueryLoad:
    """The 30-day query from `connections` clients spread over `workers` (a wrk each, started
    together), as fast as answers come or `rate` requests/s offered in all: requests/s
    summed; p50 the median of theirs, p99 the worst."""
    share = connections // len(workers)
    threads = min(2, share) if len(workers) == 1 else 1
    each = None if rate is None else rate / len(workers)
    running = [
        subprocess.Popen(
            wrk_command(worker, share, seconds, threads, each), stdout=subprocess.PIPE, text=True
        )
        for worker in workers
    ]
    loads = []
    for process in running:
        output, _ = process.communicate(timeout=seconds + 60)
        if process.returncode != 0:
            raise SystemExit(f"wrk failed ({process.returncode}): {output}")
        loads.append(parse_wrk(output, share))
    return QueryLoad(
        share * len(workers),
        sum(load.requests_per_s for load in loads),
        median(load.p50_ms for load in loads),
        max(load.p99_ms for load in loads),
    )


#: Readers started one after another, the query load spread over them each time.
READERS = (1, 2, 3)
#: Live purchases: event times in the last 10 minutes (in the window, its newest hour), as
#: traffic arriving now has them; every merchant-hour is a few of a merchant's purchases.
LIVE_SPAN_MS = 10 * 60_000
#: Live purchases of each ingest timing of the readers' phase.
INGEST_CHECK = 100_000


#: The cores of the ingest checks: the worker's, and the readers' and clients'.
WORKER_CPU, READS_CPU = "0", "1"


def pin(process: Worker, cpus: str) -> None:
    """Every thread of the process onto `cpus` (taskset)."""
    assert process.process is not None
    command = ["taskset", "-a", "-p", "-c", cpus, str(process.process.pid)]
    subprocess.run(command, check=True, capture_output=True)


def reader_of(worker: Worker, workdir: Path, n: int) -> Worker:
    """A reader (TALLY_ROLE=read) of the worker's deployment, with data of its own."""
    env = {
        **worker.env,
        "TALLY_ROLE": "read",
        "TALLY_PROCESSING_URLS": worker.url,
        "TALLY_DATA_DIR": f"{worker.env['TALLY_DATA_DIR']}-reader{n}",
    }
    return Worker(env=env, log_path=workdir / f"reader{n}.log")


#: How long an ingest check under a query load is timed: past it, its rate is what was
#: counted by then (the worker answering 100 clients itself counts a few hundred a second).
CHECK_LIMIT_S = 60.0


def ingest_rate(
    broker: LocalBroker,
    worker: Worker,
    messages: list[Message],
    total: int,
    limit_s: float = 300.0,
) -> tuple[float, int]:
    """Purchases/s from the first sent until all `total` are counted, or until `limit_s`
    (metrics polled every 100 ms); and the count to wait for before the next timing."""
    before = counted(worker, MERCHANT_PURCHASES)
    started = time.monotonic()
    asyncio.run(produce(broker.bootstrap, "purchases", messages))
    while (done := counted(worker, MERCHANT_PURCHASES) - before) < total:
        if time.monotonic() - started > limit_s:
            break
        time.sleep(0.1)
    return done / (time.monotonic() - started), before + total


def wait_counted(worker: Worker, target: int) -> None:
    """Until the worker has counted `target` purchases in all (untimed)."""
    deadline = time.monotonic() + 600
    while counted(worker, MERCHANT_PURCHASES) < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker did not count {target:,} purchases within 600 s")
        time.sleep(0.2)


def live_purchases(
    args: argparse.Namespace, count: int, seed: int, workdir: Path
) -> tuple[list[dict], list[Message]]:
    """`count` live purchases of the run's merchants, and their envelopes."""
    events = merchant_purchases(count, args.merchants, seed, LIVE_SPAN_MS)
    return events, envelopes(events, args.envelope, workdir)


def readers_phase(
    args: argparse.Namespace,
    broker: LocalBroker,
    worker: Worker,
    workdir: Path,
    run: int,
    events: list[dict],
) -> dict:
    """Read throughput with 1, 2 and 3 readers (each checked against brute force first),
    their peak RSS; then the worker's live ingest rate alone, with the query load (100
    clients) on the readers, and with it on the worker itself, each on cores of their own."""
    readers: list[Worker] = []
    measured: dict = {"reads": [], "ingest": {}}
    try:
        for n in READERS:
            reader = reader_of(worker, workdir, n)
            readers.append(reader.start(ready_timeout=600))
            check_thirty_days(reader, events, served_by="reader")
            measured["reads"].append(wrk_merchants(readers, 100))
        measured["reader_rss_mb"] = max(peak_rss_mb(r.process.pid) for r in readers)  # type: ignore[union-attr]
        batches = [live_purchases(args, INGEST_CHECK, 1_000 * run + n, workdir) for n in range(3)]
        # The worker on one core, the readers and the clients on the other (the broker on
        # either): as readers on machines of their own would be, short of the broker.
        pin(worker, WORKER_CPU)
        for reader in readers:
            pin(reader, READS_CPU)
        for (name, targets), batch in zip(
            (("alone", []), ("reads on readers", readers), ("reads on the worker", [worker])),
            batches,
            strict=True,
        ):
            load = [
                subprocess.Popen(
                    ["taskset", "-c", READS_CPU, *wrk_command(t, 100 // len(targets), 300, 1)],
                    stdout=subprocess.DEVNULL,
                )
                for t in targets
            ]
            try:
                measured["ingest"][name], target = ingest_rate(
                    broker, worker, batch[1], INGEST_CHECK, CHECK_LIMIT_S
                )
                events.extend(batch[0])
            finally:
                for process in load:
                    process.terminate()
                    process.wait()
            wait_counted(worker, target)
    finally:
        for reader in readers:
            reader.stop()
    return measured


def year_from_archive(worker: Worker, hours: list[tuple[int, HourFigures]]) -> list[float]:
    """20 one-year daily queries of the year-long merchant, ms each; checked once."""
    revenue = sum(figures.revenue_cents for _, figures in hours)
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        answer = get(worker, f"/api/merchants/{YEARLONG}/{ONE_YEAR}")
        timings.append((time.perf_counter() - started) * 1000)
        found = sum(step["revenue_cents"] for step in answer["steps"])
        if found != revenue or len(answer["steps"]) != 365:
            raise SystemExit(
                f"the year's revenue {found} != {revenue} ({len(answer['steps'])} days)"
            )
    return timings


def one_run(args: argparse.Namespace, workdir: Path, run: int) -> tuple[Result, dict]:
    events = merchant_purchases(args.count, args.merchants, seed=run)
    messages = envelopes(events, args.envelope, workdir)
    archive_dir = workdir / f"archive{run}"
    year = year_in(archive_dir, workdir / "year")
    measured: dict = {}

    def afterwards(worker: Worker, result: Result) -> None:
        measured["gc_backlog"] = collector_pauses(worker)
        settled, last = time.monotonic(), -1
        while time.monotonic() - settled < 2 * ARCHIVE_FLUSH_S:  # final hours written out
            now = archived_all(worker)
            if now != last:
                settled, last = time.monotonic(), now
            time.sleep(0.5)
        measured["archived_hours"] = last
        live, batch = live_purchases(args, args.live, 10_000 + run, workdir)
        before = collector_pauses(worker)
        measured["live_rate"], target = ingest_rate(broker, worker, batch, len(live))
        wait_counted(worker, target)  # (all of them: no limit)
        measured["gc_live"] = collector_pauses(worker).since(before)
        events.extend(live)
        check_thirty_days(worker, events)
        measured["queries"] = [wrk_merchants([worker], n) for n in QUERY_CONNECTIONS]
        measured["offered"] = offered_loads(worker, measured["queries"][-1].requests_per_s)
        measured["year_ms"] = year_from_archive(worker, year)
        measured.update(readers_phase(args, broker, worker, workdir, run, events))
        measured["peak_rss_mb"] = peak_rss_mb(worker.process.pid)  # type: ignore[union-attr]

    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / f"broker{run}.log") as broker:
        result = run_tally(
            broker,
            workdir,
            f"merchants, 30-day backlog, envelopes of ~{args.envelope}",
            "purchases",
            messages,
            len(events),
            check=lambda worker: None,
            afterwards=afterwards,
            settings={
                "TALLY_PIPELINES": "merchants",
                "TALLY_ARCHIVE_DIR": str(archive_dir),
                "TALLY_ARCHIVE_FLUSH_SECONDS": str(ARCHIVE_FLUSH_S),
            },
            counts=MERCHANT_PURCHASES,
        )
    return result, measured


def figures_row(label: str, values: list[float], unit: str = "") -> str:
    shown = ", ".join(f"{v:,.0f}" for v in values)
    return f"| {label} | {median(values):,.0f}{unit} | {shown} |"


def load_row(label: str, loads: list[QueryLoad]) -> str:
    """A query load's requests/s, p50 and p99 (medians of the runs), and each run's."""
    return (
        f"| {label}: req/s · p50 · p99 ms | {median(q.requests_per_s for q in loads):,.0f} · "
        f"{median(q.p50_ms for q in loads):.1f} · {median(q.p99_ms for q in loads):.1f} | "
        f"{', '.join(f'{q.requests_per_s:,.0f}/s p99 {q.p99_ms:.1f}' for q in loads)} |"
    )


def pauses_rows(phase: str, pauses: list[Pauses]) -> list[str]:
    """The garbage collector's pauses of the worker during a phase."""
    return [
        figures_row(
            f"garbage collector: full collections during {phase}", [p.full for p in pauses]
        ),
        figures_row("... ms they paused the worker", [p.full_s * 1000 for p in pauses]),
        figures_row("... ms paused by all generations", [p.all_s * 1000 for p in pauses]),
        figures_row("... pauses over 100 ms", [p.over_100ms for p in pauses]),
    ]


def summary(args: argparse.Namespace, results: list[tuple[Result, dict]]) -> str:
    live = [m["live_rate"] for _, m in results]
    lines = [
        f"### Merchants ({args.merchants:,} merchants held: {args.count:,} purchases over 30 "
        f"days, then {args.live:,} live ones; envelopes of ~{args.envelope}; medians of "
        f"{len(results)} runs)",
        "",
        "| figure | median | runs |",
        "|---|---:|---|",
        figures_row("purchases/s, one worker, live (event times in the last 10 minutes)", live),
        f"| workers for the source's 120,000 events/s | {120_000 / median(live):.1f} | |",
        figures_row(
            "purchases/s, one worker, a 30-day backlog (each merchant-hour a purchase or two: "
            "closed, archived and merged into its day)",
            [r.rate for r, _ in results],
        ),
        *pauses_rows("start-up and the 30-day backlog", [m["gc_backlog"] for _, m in results]),
        *pauses_rows("the live purchases", [m["gc_live"] for _, m in results]),
        figures_row("peak RSS MB of the worker", [m["peak_rss_mb"] for _, m in results]),
        figures_row("merchant-hours archived", [m["archived_hours"] for _, m in results]),
    ]
    for index, connections in enumerate(QUERY_CONNECTIONS):
        loads = [m["queries"][index] for _, m in results]
        lines.append(load_row(f"30-day daily query, {connections} client(s)", loads))
    for index, share in enumerate(OFFERED_SHARES):
        loads = [m["offered"][index] for _, m in results]
        offered = median(m["queries"][-1].requests_per_s * share for _, m in results)
        label = f"30-day daily query, {share:.0%} of that offered (~{offered:,.0f}/s)"
        lines.append(load_row(label, loads))
    for index, n in enumerate(READERS):
        loads = [m["reads"][index] for _, m in results]
        lines.append(load_row(f"30-day daily query, 100 clients over {n} reader(s)", loads))
    lines.append(figures_row("peak RSS MB of a reader", [m["reader_rss_mb"] for _, m in results]))
    alone = median(m["ingest"]["alone"] for _, m in results)
    for name in results[0][1]["ingest"]:
        rates = [m["ingest"][name] for _, m in results]
        label = f"live purchases/s, {INGEST_CHECK:,} of them, {name}"
        lines.append(figures_row(label, rates, f" ({median(rates) / alone:.2f}x alone)"))
    years = [statistics.quantiles(m["year_ms"], n=100, method="inclusive") for _, m in results]
    year_p50 = median(median(m["year_ms"]) for _, m in results)
    lines.append(
        f"| one-year daily range from the archive, ms p50 · p99 | {year_p50:.0f} · "
        f"{median(cut[98] for cut in years):.0f} | |"
    )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace, workdir: Path) -> None:
    wrk_binary()  # before the backlog, not minutes into the run
    results = []
    for run in range(args.runs):
        result, measured = one_run(args, workdir, run)
        print(
            f"run {run + 1}: {measured['live_rate']:,.0f} live purchases/s, a 30-day backlog "
            f"{result.rate:,.0f}/s, RSS {measured['peak_rss_mb']:,.0f} MB, "
            f"30-day query p99 {measured['queries'][-1].p99_ms:.1f} ms at 100 clients, "
            f"one year {median(measured['year_ms']):.0f} ms",
            flush=True,
        )
        results.append((result, measured))
    table = summary(args, results)
    print(table)
    now = datetime.datetime.now(datetime.UTC)
    out = Path(args.out or f"bench/results/{now:%Y-%m-%d}-merchants.md")
    out.write_text(f"# `python -m bench.merchants` — {now:%Y-%m-%d %H:%M} UTC\n\n{table}")
    print(f"written to {out}")


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--count", type=int, default=300_000)
parser.add_argument("--merchants", type=int, default=100_000)
parser.add_argument("--live", type=int, default=300_000, help="live purchases, timed")
parser.add_argument("--envelope", type=int, default=200)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--out", default="")

if __name__ == "__main__":
    run_in_scratch(parser, "tally-bench-merchants-", main)
