"""Coupons benchmark: one worker of the coupons pipeline. Phone locations taken in per second
through a backlog, timed to its last coupon pushed (every location inside one campaign's
zone: each earns a coupon, pushed once per user and zone),
against the same work in this process with no Kafka and no Faust (zone cell, campaigns of
the cell, the coupon); then the latency from a location produced to its coupon on
coupon-pushes (read by a plain consumer), p50/p99, while locations arrive at 25, 50, 75 and
100 % of the backlog rate.

    .venv/bin/python -m bench.coupons [--locations 200000] [--users 100000] [--seconds 15]
        [--out bench/results/<date>-coupons.md]

200 campaigns of one shop, each a 300 m circle on a grid over a city centre, with a budget no
run exhausts. The backlog's locations are spread over the zones, users picked at random (a
user's second location in a zone earns nothing new). The paced loads' locations are new
users', each in a zone: every one is pushed once. The time to live of a location is an hour
here (TALLY_LOCATION_TTL_SECONDS=3600): the backlog is not stale while it waits.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import random
import time
from pathlib import Path
from statistics import median
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import Message, Result, codec_in, run_in_scratch, run_tally
from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, Record, validate_location
from tally.core.clock import now_ms
from tally.core.coupons import Campaign, CampaignIndex, cell_of, coupon
from tally.coupons.campaigns import campaign_of, publish
from tests.harness import Worker

IN_PROCESS = "in-process zones and coupons (one core, no Kafka)"
TALLY = "tally coupons worker"
LEVELS = (0.25, 0.5, 0.75, 1.0)
CENTRE = (52.52, 13.405)
GRID = 15  # 15 x 15 zone centres, 200 of them used
SETTINGS = {"TALLY_PIPELINES": "coupons", "TALLY_LOCATION_TTL_SECONDS": "3600"}


def campaigns(now: int) -> list[dict[str, Any]]:
    """200 campaigns, 300 m circles 800 m apart."""
    made = []
    for number in range(200):
        row, column = divmod(number, GRID)
        made.append(
            {
                "campaign_id": f"zone-{number:03d}",
                "tenant": "",
                "zone": {
                    "lat": CENTRE[0] + (row - GRID / 2) * 800 / 111_320,
                    "lon": CENTRE[1] + (column - GRID / 2) * 800 / 67_800,
                    "radius_m": 300,
                },
                "valid_from_ms": now - 3_600_000,
                "valid_to_ms": now + 86_400_000,
                "budget": 10_000_000,
                "coupon_ttl_seconds": 600,
                "offers": [{"offer_id": "welcome", "text": "5 % off"}],
            }
        )
    return made


def located(rng: random.Random, zones: list[dict[str, Any]], user: int) -> Record:
    """A location of `user` within 150 m of a random zone's centre, now."""
    zone = rng.choice(zones)["zone"]
    return {
        "user_id": f"user-{user:07d}",
        "lat": zone["lat"] + rng.uniform(-100, 100) / 111_320,
        "lon": zone["lon"] + rng.uniform(-100, 100) / 67_800,
        "located_at_ms": now_ms(),
        "tenant": "",
    }


def earned(index: CampaignIndex, one: Record) -> list[str]:
    """The campaigns whose coupon the location earns."""
    cell = cell_of(one["lat"], one["lon"])
    return [c.campaign_id for c in index.matching("", cell, one["located_at_ms"])]


def in_process(found: list[Record], index: CampaignIndex) -> Result:
    started = time.perf_counter()
    for one in found:
        cell = cell_of(one["lat"], one["lon"])
        for campaign in index.matching("", cell, one["located_at_ms"]):
            coupon(campaign, one["user_id"], cell, one["located_at_ms"], {})
    return Result(IN_PROCESS, len(found), time.perf_counter() - started, 0, 0)


async def paced(
    bootstrap: str, codec: AvroCodec, zones: list[dict[str, Any]], index: CampaignIndex,
    rate: float, seconds: float, first_user: int,
) -> tuple[int, float, list[float]]:  # fmt: skip
    """New users' locations at `rate`/s for `seconds`, near zones' centres; the coupons
    they earn read from coupon-pushes: (sent, offered/s, latencies ms from the location's
    time)."""
    rng = random.Random(first_user)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    consumer = AIOKafkaConsumer(
        "coupon-pushes", bootstrap_servers=bootstrap, auto_offset_reset="latest"
    )
    await producer.start()
    await consumer.start()
    await consumer.getmany(timeout_ms=500)  # positioned at the end before anything is sent
    latencies: list[float] = []
    try:
        began, sent, expected = time.monotonic(), 0, 0

        async def feed() -> None:
            nonlocal sent, expected
            while time.monotonic() - began < seconds:
                due = int((time.monotonic() - began) * rate)
                while sent < due:
                    one = located(rng, zones, first_user + sent)
                    expected += bool(earned(index, one))
                    await producer.send("locations", codec.dumps(one), key=one["user_id"].encode())
                    sent += 1
                await asyncio.sleep(0.005)
            await producer.flush()

        async def read() -> None:
            deadline = None
            while deadline is None or time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                arrived = now_ms()
                for records in batch.values():
                    for record in records:
                        push = orjson.loads(record.value)
                        if int(push["user_id"][5:]) >= first_user:
                            latencies.append(arrived - push["located_at_ms"])
                if time.monotonic() - began >= seconds:
                    if len(latencies) >= expected:
                        return
                    deadline = deadline or time.monotonic() + 30

        await asyncio.gather(feed(), read())
        return sent, sent / seconds, latencies
    finally:
        await producer.stop()
        await consumer.stop()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(args: argparse.Namespace, workdir: Path) -> None:
    codec = codec_in(workdir, "locations-value", "location_event", validate_location)
    zones = campaigns(now_ms())
    index = CampaignIndex()
    for record in zones:
        index.put(Campaign.from_record(record))
    rng = random.Random(1)
    backlog = [located(rng, zones, rng.randrange(args.users)) for _ in range(args.locations)]
    # What the backlog pushes: a coupon per user and campaign whose zone holds a location of
    # theirs (a point near a zone's edge may lie in a cell whose centre is outside).
    coupons = len({(c, one["user_id"]) for one in backlog for c in earned(index, one)})
    baseline = in_process(backlog, index)
    print(f"in process: {baseline.rate:,.0f} locations/s", flush=True)
    messages: list[Message] = [
        (None, one["user_id"].encode(), codec.dumps(one), one["located_at_ms"]) for one in backlog
    ]
    rows: list[tuple[float, float, int, list[float]]] = []
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        servers = [broker.bootstrap]
        asyncio.run(ensure_topics(servers, ["coupon-pushes"], partitions=4, replication=1))
        for record in zones:
            asyncio.run(publish(servers, "coupon-campaigns", 1, *campaign_of(record)))

        def levels(worker: Worker, backlog_result: Result) -> None:
            first = 10_000_000
            for share in LEVELS:  # of the pushes/s: every paced location is a new user's
                sent, offered, latencies = asyncio.run(
                    paced(broker.bootstrap, codec, zones, index, share * backlog_result.rate,
                          args.seconds, first)
                )  # fmt: skip
                first += sent
                rows.append((share, offered, sent, latencies))
                print(
                    f"  {share:.0%}: {offered:,.0f} locations/s, {len(latencies)} pushed of "
                    f"{sent} sent, p50 {median(latencies):.0f} ms, p99 "
                    f"{percentile(latencies, 0.99):.0f} ms",
                    flush=True,
                )

        result = run_tally(
            broker, workdir, TALLY, "locations", messages, coupons, lambda _: None,
            settings=SETTINGS, afterwards=levels, timeout_s=3600.0, counts="coupon-candidates",
        )  # fmt: skip
    locations_rate = result.rate * len(backlog) / coupons  # timed by its pushes
    print(
        f"backlog: {locations_rate:,.0f} locations/s, {result.rate:,.0f} coupons pushed/s "
        f"({locations_rate / baseline.rate:.2f}x in process), peak RSS "
        f"{result.peak_rss_mb:,.0f} MB",
        flush=True,
    )
    now = datetime.datetime.now(datetime.UTC)
    out = Path(args.out or f"bench/results/{now:%Y-%m-%d}-coupons.md")
    lines = [
        f"# `python -m bench.coupons --locations {args.locations}` — {now:%Y-%m-%d %H:%M} UTC",
        "",
        "| figure | measured |",
        "|---|---:|",
        f"| locations/s through the backlog, to the last push ({len(backlog):,}) | "
        f"{locations_rate:,.0f} |",
        f"| coupons pushed/s meanwhile ({coupons:,}) | {result.rate:,.0f} |",
        f"| in process, zones and coupons alone | {baseline.rate:,.0f} "
        f"({locations_rate / baseline.rate:.2f}x) |",
        f"| peak RSS | {result.peak_rss_mb:,.0f} MB |",
        "",
        f"Location produced → its coupon on coupon-pushes, new users, {args.seconds} s per load:",
        "",
        "| load | locations/s offered | pushed of sent | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for share, offered, sent, latencies in rows:
        lines.append(
            f"| {share:.0%} | {offered:,.0f} | {len(latencies)} of {sent} | "
            f"{median(latencies):.0f} | {percentile(latencies, 0.99):.0f} |"
        )
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--locations", type=int, default=200_000)
parser.add_argument("--users", type=int, default=100_000)
parser.add_argument("--seconds", type=int, default=15)
parser.add_argument("--out", default="")

if __name__ == "__main__":
    run_in_scratch(parser, "tally-bench-coupons-", main)
