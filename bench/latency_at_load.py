"""How fresh the answers are at a given load: produced → visible latency of an event while
events arrive at 25, 50, 75 and 100 % of the rate one worker sustains, for both pipelines.

    .venv/bin/python -m bench.latency_at_load [--pipeline sales|metrics|both] [--seconds 15]
                                              [--backlog 40000] [--envelopes 2000]

One broker; per pipeline one worker. The sustainable rate is measured first, in the same run,
as the rate at which the worker folds a backlog with event time now: single purchases
(100,000 items, Zipf), or metric envelopes (1,000 servers x 50 metrics x 10 samples, as `make
bench`). Then, for each level, an open-loop producer sends at that share of the rate (on a
clock: a slow worker does not slow it down) while a probe sends one event of a new key at a
time (a purchase of a new item; a sample of a new server) and polls its answer
(`/api/sales/items/{item}`, `/api/servers/{server}/metrics`) until it shows: sent → visible,
the broker's acknowledgement included. Medians and 99th percentiles of the probes per level
(the 99th is the slowest probe when there are fewer than 100); the rate actually offered is
printed beside the asked one (the producer shares the 2 cores with the worker and the broker).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.common import Message, Result, metric_batch_codec, purchase_codec, run_tally
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec
from tally.core.clock import iso, now_ms
from tally.feed import purchases
from tests.harness import ACCESS, Worker, bearer, purchase_record

LEVELS = (0.25, 0.5, 0.75, 1.0)
#: Between two probes: enough of them per level, little load of their own.
PROBE_PAUSE_S = 0.1
SERVERS, METRICS, PER_METRIC = 1000, 50, 10


@dataclass
class Workload:
    """One pipeline's input and how a probe's event is seen in its answers."""

    pipeline: str
    #: TALLY_PIPELINES of its worker.
    pipelines: str
    topic: str
    unit: str
    #: Events in one message of the feed.
    per_message: int
    #: The n-th message of the feed, event time now: (key, value).
    message: Callable[[int], tuple[bytes, bytes]]
    #: A message carrying one event of a key nothing else uses.
    probe: Callable[[str], tuple[bytes, bytes]]
    #: The query that shows a probe's key, and whether its answer does.
    path: Callable[[str], str]
    visible: Callable[[dict[str, Any]], bool]


def zipf_items(seed: str, count: int) -> list[str]:
    """`count` item ids of 100,000, Zipf-distributed (tally.feed)."""
    feed = purchases(random.Random(seed), items=100_000, clock_ms=lambda: 0)
    return [p["item_id"] for p in itertools.islice(feed, count)]


def sales(codec: AvroCodec) -> Workload:
    items = zipf_items("feed", 50_000)

    def purchase(item: str, n: int) -> tuple[bytes, bytes]:
        return item.encode(), codec.dumps(purchase_record(f"{item}-{n}", item, now_ms()))

    return Workload(
        "sales",
        "sales",
        "purchases",
        "purchases",
        1,
        lambda n: purchase(items[n % len(items)], n),
        lambda key: purchase(key, 0),
        lambda key: f"/api/sales/items/{key}",
        lambda body: body["quantity"] >= 1,
    )


def metrics(codec: AvroCodec) -> Workload:
    rng = random.Random(7)

    def envelope(server: str, samples: list[dict[str, object]]) -> tuple[bytes, bytes]:
        batch = {"server_id": server, "sent_at_ms": now_ms(), "samples": samples}
        return server.encode(), codec.dumps(batch)

    def reported(n: int) -> tuple[bytes, bytes]:
        """A server's last 10 s: every metric, one sample a second."""
        now = now_ms()
        samples: list[dict[str, object]] = [
            {"metric_id": f"m{m:03d}", "ts_ms": now - k * 1000, "value": rng.uniform(-10, 90)}
            for m in range(METRICS)
            for k in range(PER_METRIC)
        ]
        return envelope(f"server-{n % SERVERS:04d}", samples)

    def series(server: str) -> str:
        now = now_ms()  # an explicit range, as a dashboard asks
        return f"/api/servers/{server}/metrics?from={iso(now - 3_600_000)}&to={iso(now + 60_000)}"

    return Workload(
        "metrics",
        "metrics,archive",
        "metric-samples",
        "samples",
        METRICS * PER_METRIC,
        reported,
        lambda key: envelope(key, [{"metric_id": "m000", "ts_ms": now_ms(), "value": 1.0}]),
        series,
        lambda body: bool(body["metrics"].get("m000")),
    )


async def level(
    bootstrap: str, worker: Worker, load: Workload, rate: float, seconds: float, name: str
) -> tuple[float, list[float]]:
    """(events/s offered, probe latencies ms) of one level."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    stop = time.monotonic() + seconds
    messages_per_s = rate / load.per_message

    async def feed() -> float:
        """Events/s offered: sent over the time the feed ran."""
        began, sent = time.monotonic(), 0
        while time.monotonic() < stop:
            due = int((time.monotonic() - began) * messages_per_s)
            while sent < due:
                key, value = load.message(sent)
                await producer.send(load.topic, value, key=key)
                sent += 1
            await asyncio.sleep(0.005)
        return sent * load.per_message / (time.monotonic() - began)

    async def probe() -> list[float]:
        found: list[float] = []
        async with aiohttp.ClientSession(headers=bearer(ACCESS.operator_token)) as session:
            while time.monotonic() < stop:
                probe_key = f"probe-{name}-{len(found):04d}"
                key, value = load.probe(probe_key)
                began = time.perf_counter()
                await producer.send_and_wait(load.topic, value, key=key)
                while True:
                    url = worker.url + load.path(probe_key)
                    async with session.get(url) as answer:
                        body = await answer.json() if answer.status == 200 else None
                    if body is not None and load.visible(body):
                        break
                    if time.perf_counter() - began > 60:
                        raise SystemExit(f"{probe_key} not visible within 60 s at {rate:,.0f}/s")
                    await asyncio.sleep(0.005)
                found.append((time.perf_counter() - began) * 1000)
                await asyncio.sleep(PROBE_PAUSE_S)
        return found

    try:
        offered, latencies = await asyncio.gather(feed(), probe())
        await producer.flush()
    finally:
        await producer.stop()
    return offered, latencies


Row = tuple[float, float, float, list[float]]


def at_levels(
    broker: LocalBroker, workdir: Path, load: Workload, backlog: int, seconds: float
) -> list[Row]:
    """(share, asked, offered, probe latencies) per level of one pipeline's worker."""
    messages: list[Message] = [(None, *load.message(n), now_ms()) for n in range(backlog)]
    rows: list[Row] = []

    def levels(worker: Worker, sustained: Result) -> None:
        print(f"{load.pipeline}: sustained {sustained.rate:,.0f} {load.unit}/s", flush=True)
        for share in LEVELS:
            asked = share * sustained.rate
            offered, latencies = asyncio.run(
                level(broker.bootstrap, worker, load, asked, seconds, f"{share:.2f}")
            )
            rows.append((share, asked, offered, latencies))
            print(
                f"  {share:.0%}: asked {asked:,.0f}/s, offered {offered:,.0f}/s, "
                f"{len(latencies)} probes, p50 | p99 ms {percentiles(latencies)}",
                flush=True,
            )

    run_tally(
        broker,
        workdir,
        f"{load.pipeline} backlog",
        load.topic,
        messages,
        backlog * load.per_message,
        lambda _worker: None,  # the levels' probes check that events show
        afterwards=levels,
        # Only its pipeline: the broker still holds the pipeline before's input, which a
        # worker of every pipeline would read from the start meanwhile (until 2026-12-06 the
        # metrics worker did: ~40 s of purchases under its backlog's timing).
        settings={"TALLY_PIPELINES": load.pipelines},
    )
    return rows


def measure(pipelines: list[str], seconds: float, backlogs: dict[str, int]) -> str:
    """The latency-at-load table of each pipeline (markdown), with how it was made."""
    workdir = Path(tempfile.mkdtemp(prefix="tally-latency-"))
    workloads = {
        "sales": sales(purchase_codec(workdir)),
        "metrics": metrics(metric_batch_codec(workdir)),
    }
    lines = [
        "### freshness at load",
        "",
        "`python -m bench.latency_at_load`: produced → visible latency of a probe event while "
        "an open-loop producer sends at a share of the rate one worker sustained on a backlog "
        f"in the same run; {seconds:g} s per level, one worker per pipeline.",
    ]
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        for pipeline in pipelines:
            load = workloads[pipeline]
            rows = at_levels(broker, workdir, load, backlogs[pipeline], seconds)
            lines += [
                "",
                f"{pipeline}:",
                "",
                f"| load | asked {load.unit}/s | offered | probes | p50 ms | p99 ms |",
                "|---:|---:|---:|---:|---:|---:|",
            ]
            for share, asked, offered, latencies in rows:
                lines.append(
                    f"| {share:.0%} | {asked:,.0f} | {offered:,.0f} | {len(latencies)} | "
                    f"{percentiles(latencies)} |"
                )
    return "\n".join(lines) + "\n"


def percentiles(latencies: list[float]) -> str:
    """p50 | p99 ms of a level's probes (the 99th: the slowest when fewer than 100 were
    seen; a level may see none when the worker falls far behind)."""
    if not latencies:
        return "— | —"
    p99 = (
        statistics.quantiles(latencies, n=100, method="inclusive")[98]
        if len(latencies) >= 100
        else max(latencies)
    )
    return f"{statistics.median(latencies):.0f} | {p99:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", choices=("sales", "metrics", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=15.0, help="each level's duration")
    parser.add_argument("--backlog", type=int, default=40_000, help="purchases to time the rate")
    parser.add_argument(
        "--envelopes", type=int, default=6_000, help="metric envelopes (500 samples) to time it"
    )
    args = parser.parse_args()
    pipelines = ["sales", "metrics"] if args.pipeline == "both" else [args.pipeline]
    backlogs = {"sales": args.backlog, "metrics": args.envelopes}
    print(measure(pipelines, args.seconds, backlogs))


if __name__ == "__main__":
    main()
