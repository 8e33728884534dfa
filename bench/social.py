"""Social benchmark: posts scored per second by one worker of the social pipeline (raw X and
Mastodon messages in, normalised, scored with VADER, re-keyed by brand, summed per brand,
channel and minute, alerts opened), against the same work done in this process with no
Kafka and no Faust (the scoring ceiling of one core); and the worker's peak RSS.

    .venv/bin/python -m bench.social [--messages 40000] [--brands 500] [--runs 3]
                                     [--out bench/results/<date>-social.md]

The messages are the sample feed's (`tally feed social`): a third negative, X pages of one
to three posts, post times spread over the last 30 minutes. The worker's count is read from
its second stage (posts summed into minutes); each run checks one brand's summary against
brute force before its figure counts.
"""

from __future__ import annotations

import argparse
import datetime
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from statistics import median

from bench.common import Message, Result, report, run_in_scratch, run_tally
from tally.broker.local import LocalBroker, free_port
from tally.core.clock import now_ms
from tally.feed import RawPost, social_posts
from tally.social.channels import BUILT_IN, load_channels
from tally.social.posts import scored, standard_posts
from tests.harness import Worker

IN_PROCESS = "in-process scoring (one core, no Kafka)"
TALLY = "tally social worker"


def feed(count: int, brands: int, seed: int) -> list[RawPost]:
    rng = random.Random(seed)
    wall = now_ms()
    names = [f"brand{n:04d}" for n in range(brands)]
    made = social_posts(rng, clock_ms=lambda: wall - rng.randrange(30 * 60_000), brands=names)
    return [next(made) for _ in range(count)]


def not_avro(value: bytes) -> dict[str, object]:
    raise AssertionError("the feed sends network JSON only")


def in_process(raw: list[RawPost]) -> Result:
    """The first stage's work on every message, then the sums: no broker, no Faust."""
    adapters = load_channels(BUILT_IN)
    started = time.perf_counter()
    posts = 0
    for message in raw:
        for post in standard_posts(
            message.value, message.brand.encode(), message.channel, adapters, not_avro
        ):
            scored(post)
            posts += 1
    return Result(IN_PROCESS, posts, time.perf_counter() - started, 0, 0)


def check(raw: list[RawPost]) -> Callable[[Worker], None]:
    """One brand's posts in the worker's summary equal the posts sent about it."""
    brand = raw[0].brand
    expected = Counter(post["channel"] for m in raw if m.brand == brand for post in m.posts)

    def agrees(worker: Worker) -> None:
        answer = worker.get(f"/api/social/summary?tenant={brand}&from={now_ms() - 3_600_000}")
        got = {channel: totals["posts"] for channel, totals in answer["totals"].items()}
        assert got == {"all": sum(expected.values()), **expected}, (got, expected)

    return agrees


def main(args: argparse.Namespace, workdir: Path) -> None:
    results: dict[str, list[Result]] = {IN_PROCESS: [], TALLY: []}
    for run in range(args.runs):
        raw = feed(args.messages, args.brands, seed=run)
        posts = sum(len(m.posts) for m in raw)
        results[IN_PROCESS].append(in_process(raw))
        messages: list[Message] = [
            (None, m.brand.encode(), m.value, 0, [("tally.channel", m.channel.encode())])
            for m in raw
        ]
        # Memory-only: each run on an empty broker of its own.
        with LocalBroker("127.0.0.1", free_port(), log_path=workdir / f"broker{run}.log") as broker:
            result = run_tally(
                broker,
                workdir,
                TALLY,
                "social-raw",
                messages,
                posts,
                check(raw),
                counts="social-scored-posts",
                settings={"TALLY_PIPELINES": "social"},
            )
        results[TALLY].append(result)
        print(
            f"run {run + 1}: {result.rate:,.0f} posts/s by the worker, "
            f"{results[IN_PROCESS][-1].rate:,.0f}/s in process, "
            f"RSS {result.peak_rss_mb:,.0f} MB",
            flush=True,
        )
    table = report("social", results, "posts", [IN_PROCESS])
    now = datetime.datetime.now(datetime.UTC)
    out = Path(args.out or f"bench/results/{now:%Y-%m-%d}-social.md")
    rates = ", ".join(f"{r.rate:,.0f}" for r in results[TALLY])
    out.write_text(
        f"# `python -m bench.social` — {now:%Y-%m-%d %H:%M} UTC\n\n"
        f"{args.messages:,} raw messages ({args.brands} brands) per run; worker runs: {rates} "
        f"posts/s (median {median(r.rate for r in results[TALLY]):,.0f})\n\n{table}"
    )
    print(f"written to {out}")


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--messages", type=int, default=40_000)
parser.add_argument("--brands", type=int, default=500)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--out", default="")

if __name__ == "__main__":
    run_in_scratch(parser, "tally-bench-social-", main)
