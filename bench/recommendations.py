"""Recommendations benchmark: one worker of the recommendations pipeline. Page views taken in
per second through a backlog that leaves `--sessions` sessions live (two views each), against
the same pair arithmetic in this process with no Kafka and no Faust; its peak RSS holding
them; then, on the loaded worker, recommendation queries (wrk) at a steady rate while views
arrive at 25, 50, 75 and 100 % of the backlog rate: the query latency p50/p99 at each load,
and whether the worker kept up with the views (all taken in within 30 s of the load's end).

    .venv/bin/python -m bench.recommendations [--sessions 1000000] [--seconds 15]
        [--query-rate 200] [--out bench/results/<date>-recommendations.md]

The catalogue has 20,000 items in 200 categories (Zipf within each); a session views two
items of one category a minute apart, at a time in the last two hours. The time to live is
a day here (TALLY_SESSION_TTL_SECONDS=86400), so every session of the backlog is live when it
is measured. A query asks one of the backlog's sessions, viewing one of the items, in turn
(bench/recommendations.lua). Before any figure counts, one session's answer is checked: its
items seen, and its recommendations equal to brute force over the backlog's sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import random
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from statistics import median
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.common import (
    Message,
    Result,
    codec_in,
    counted,
    run_in_scratch,
    run_tally,
    scraped,
)
from bench.query import QueryLoad, parse_wrk, wrk_binary
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, Record, validate_page_view
from tally.core.clock import now_ms
from tally.core.recommendations import view
from tally.feed import zipf_weights
from tests.harness import ACCESS, Worker

IN_PROCESS = "in-process pairs (one core, no Kafka)"
TALLY = "tally recommendations worker"
CATEGORIES, PER_CATEGORY = 200, 100
ITEMS = CATEGORIES * PER_CATEGORY
LEVELS = (0.25, 0.5, 0.75, 1.0)
#: What the worker counts views on (its sessions' stage).
SESSIONS_TOPIC = "page-views-by-session"
SETTINGS = {"TALLY_PIPELINES": "recommendations", "TALLY_SESSION_TTL_SECONDS": "86400"}
LUA = Path(__file__).with_name("recommendations.lua")
PACED_LUA = Path(__file__).with_name("recommendations_paced.lua")
CONNECTIONS = 10
CUMULATIVE = zipf_weights(PER_CATEGORY)


def session_views(rng: random.Random, number: int, at_ms: int) -> list[Record]:
    """Session `number`'s two views, of one category, a minute apart."""
    category = rng.randrange(CATEGORIES)
    ranks = rng.choices(range(PER_CATEGORY), cum_weights=CUMULATIVE, k=2)
    return [
        {
            "session_id": f"s{number:07d}",
            "item_id": f"i{category * PER_CATEGORY + rank:05d}",
            "viewed_at_ms": at_ms + step * 60_000,
            "kind": "view",
            "tenant": "",
        }
        for step, rank in enumerate(ranks)
    ]


def backlog(sessions: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    wall = now_ms()
    return [
        one
        for number in range(sessions)
        for one in session_views(rng, number, wall - rng.randrange(2 * 3_600_000))
    ]


def messages(codec: AvroCodec, views: list[Record]) -> list[Message]:
    return [(None, v["session_id"].encode(), codec.dumps(v), v["viewed_at_ms"]) for v in views]


def in_process(views: list[Record]) -> Result:
    """The sessions' first views and the pair changes, counted per row, pane and item: the
    pipeline's arithmetic alone."""
    started = time.perf_counter()
    sessions: dict[str, dict[str, int]] = defaultdict(dict)
    rows: Counter[tuple[str, str, int]] = Counter()
    for one in views:
        for change in view(sessions[one["session_id"]], one["item_id"], one["viewed_at_ms"]):
            rows[change.row, change.other, change.pane] += change.delta
    return Result(IN_PROCESS, len(views), time.perf_counter() - started, 0, 0)


def expected(views: list[Record], session: str, k: int = 10) -> list[dict[str, Any]]:
    """Brute force for a session asked with no item: sessions that viewed each item with one
    of its items (all the backlog's views are inside the 7-day window)."""
    by_session: dict[str, set[str]] = defaultdict(set)
    for one in views:
        by_session[one["session_id"]].add(one["item_id"])
    mine = by_session[session]
    scores: Counter[str] = Counter()
    for items in by_session.values():
        for source in mine & items:
            scores.update(items - {source})
    ranked = sorted(
        ((item, n) for item, n in scores.items() if item not in mine), key=lambda e: (-e[1], e[0])
    )
    return [{"item": item, "score": n} for item, n in ranked[:k]]


def check(views: list[Record]) -> Any:
    """Session s0000000's answer against brute force, once the rows' stage has caught up
    (the backlog is timed to the sessions' stage; the rows follow within seconds)."""

    def agrees(worker: Worker) -> None:
        seen = len({v["item_id"] for v in views[:2]})
        truth = expected(views, "s0000000")
        deadline = time.monotonic() + 60
        while True:
            answer = worker.get("/api/recommendations?session=s0000000&k=10")
            found = answer["session_state"]["items_seen"], answer["recommendations"]
            if found == (seen, truth):
                return
            print(
                "  s0000000's answer not yet brute force's: the rows' stage is behind", flush=True
            )
            if time.monotonic() > deadline:
                raise SystemExit(f"s0000000's answer differs from brute force: {answer} != {truth}")
            time.sleep(1)

    return agrees


def wrk(worker: Worker, sessions: int, seconds: int, rate: float | None) -> subprocess.Popen[str]:
    """wrk asking the backlog's sessions in turn: as fast as answers come, or `rate` requests/s."""
    threads = 2
    script, paced = (LUA, []) if rate is None else (PACED_LUA, [str(threads * 1000 / rate)])
    command = [
        wrk_binary(), f"-t{threads}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
        "-H", f"Authorization: Bearer {ACCESS.operator_token}",
        "-s", str(script), worker.url, "--", str(sessions), str(ITEMS), *paced,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def waited(process: subprocess.Popen[str], seconds: int) -> QueryLoad:
    output, _ = process.communicate(timeout=seconds + 60)
    if process.returncode != 0:
        raise SystemExit(f"wrk failed ({process.returncode}): {output}")
    return parse_wrk(output, CONNECTIONS)


async def paced_views(
    bootstrap: str, codec: AvroCodec, rate: float, seconds: float, first: int
) -> tuple[int, float]:
    """New sessions' views at `rate` views/s for `seconds` (on a clock: a slow worker does
    not slow it down), event time = now: (views sent, views/s offered)."""
    rng = random.Random(first)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        began, sent = time.monotonic(), 0
        numbers = itertools.count(first)
        pending: list[Record] = []
        while time.monotonic() - began < seconds:
            due = int((time.monotonic() - began) * rate)
            while sent < due:
                if not pending:
                    pending = session_views(rng, next(numbers), now_ms() - 60_000)
                one = pending.pop(0)
                await producer.send("page-views", codec.dumps(one), key=one["session_id"].encode())
                sent += 1
            await asyncio.sleep(0.005)
        await producer.flush()
        return sent, sent / (time.monotonic() - began)
    finally:
        await producer.stop()


#: (share, views/s offered, seconds after the load until every view was taken in (None: not
#: within 30 s), queries at the steady rate meanwhile).
Level = tuple[float, float, float | None, QueryLoad]


def at_levels(
    bootstrap: str, codec: AvroCodec, args: argparse.Namespace, found: dict[str, Any]
) -> Any:
    def levels(worker: Worker, backlog_result: Result) -> None:
        keys = [
            v
            for labels, v in scraped(worker, "tally_table_keys")
            if labels["table"] == "session_items"
        ]
        found["live_sessions"] = int(sum(keys))
        saturated = waited(wrk(worker, args.sessions, args.seconds, None), args.seconds)
        found["saturated"] = saturated
        print(
            f"queries alone: {saturated.requests_per_s:,.0f}/s, p50 {saturated.p50_ms:.1f} ms, "
            f"p99 {saturated.p99_ms:.1f} ms",
            flush=True,
        )
        first = args.sessions
        rows: list[Level] = []
        for share in LEVELS:
            before = counted(worker, SESSIONS_TOPIC)
            wall_began = time.time()  # wall time: lines up with a loop probe's (bench.loop_steps)
            queries = wrk(worker, args.sessions, args.seconds, args.query_rate)
            sent, offered = asyncio.run(
                paced_views(bootstrap, codec, share * backlog_result.rate, args.seconds, first)
            )
            load = waited(queries, args.seconds)
            wall_stopped = time.time()
            first += sent
            ended, drained = time.monotonic(), None
            while time.monotonic() - ended < 30:
                if counted(worker, SESSIONS_TOPIC) >= before + sent:
                    drained = time.monotonic() - ended
                    break
                time.sleep(0.1)
            rows.append((share, offered, drained, load))
            print(
                f"  {share:.0%}: {offered:,.0f} views/s offered, "
                f"{'taken in' if drained is not None else 'NOT taken in within 30 s'}; "
                f"queries {load.requests_per_s:,.0f}/s p50 {load.p50_ms:.1f} ms "
                f"p99 {load.p99_ms:.1f} ms (wall time {wall_began:.3f} to {wall_stopped:.3f})",
                flush=True,
            )
        found["levels"] = rows

    return levels


def main(args: argparse.Namespace, workdir: Path) -> None:
    codec = codec_in(workdir, "page-views-value", "page_view", validate_page_view)
    views = backlog(args.sessions, seed=1)
    baseline = in_process(views)
    print(f"in process: {baseline.rate:,.0f} views/s", flush=True)
    found: dict[str, Any] = {}
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        result = run_tally(
            broker,
            workdir,
            TALLY,
            "page-views",
            messages(codec, views),
            len(views),
            check(views),
            counts=SESSIONS_TOPIC,
            settings=SETTINGS,
            afterwards=at_levels(broker.bootstrap, codec, args, found),
            timeout_s=3600.0,
        )
    print(
        f"backlog: {result.rate:,.0f} views/s ({result.rate / baseline.rate:.2f}x in process), "
        f"peak RSS {result.peak_rss_mb:,.0f} MB with {found['live_sessions']:,} sessions",
        flush=True,
    )
    now = datetime.datetime.now(datetime.UTC)
    out = Path(args.out or f"bench/results/{now:%Y-%m-%d}-recommendations.md")
    saturated: QueryLoad = found["saturated"]
    lines = [
        f"# `python -m bench.recommendations --sessions {args.sessions}` — "
        f"{now:%Y-%m-%d %H:%M} UTC",
        "",
        "| figure | measured |",
        "|---|---:|",
        f"| views/s through the backlog ({len(views):,} views) | {result.rate:,.0f} |",
        f"| in process, the pairs alone | {baseline.rate:,.0f} "
        f"({result.rate / baseline.rate:.2f}x) |",
        f"| sessions held (RocksDB's estimate) | {found['live_sessions']:,} |",
        f"| peak RSS through the backlog | {result.peak_rss_mb:,.0f} MB |",
        f"| queries alone, {CONNECTIONS} clients | {saturated.requests_per_s:,.0f}/s, "
        f"p50 {saturated.p50_ms:.1f} ms, p99 {saturated.p99_ms:.1f} ms |",
        "",
        f"Queries at {args.query_rate}/s offered ({CONNECTIONS} clients) while views arrive, "
        f"{args.seconds} s per load:",
        "",
        "| load | views/s offered | taken in after the load | queries/s | p50 ms | p99 ms |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for share, offered, drained, load in found["levels"]:
        took = "no (30 s)" if drained is None else f"{drained:.1f} s"
        lines.append(
            f"| {share:.0%} | {offered:,.0f} | {took} | {load.requests_per_s:,.0f} | "
            f"{load.p50_ms:.1f} | {load.p99_ms:.1f} |"
        )
    sustained = [row for row in found["levels"] if row[2] is not None]
    if sustained:
        top = max(sustained, key=lambda row: row[1])
        p50s = median(row[3].p50_ms for row in found["levels"])
        lines += [
            "",
            f"Highest load taken in: {top[1]:,.0f} views/s; query p99 there "
            f"{top[3].p99_ms:.1f} ms (median of the loads' p50s: {p50s:.1f} ms).",
        ]
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--sessions", type=int, default=1_000_000)
parser.add_argument("--seconds", type=int, default=15)
parser.add_argument("--query-rate", type=int, default=200)
parser.add_argument("--out", default="")

if __name__ == "__main__":
    run_in_scratch(parser, "tally-bench-recommendations-", main)
