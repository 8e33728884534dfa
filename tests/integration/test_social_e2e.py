"""Social posts through the real broker, on two workers: three brands' posts in three channel
formats (X pages, Mastodon HTML statuses, and a forum format added by a module this test
names: TALLY_SOCIAL_CHANNELS), sent by librdkafka on its defaults, out of order, some twice,
some invalid, some late. Each brand's minute summaries equal brute force over the posts with
VADER's own scores computed here; every alert is opened once, on the topic and in the queue;
people acknowledge and resolve them through either worker; everything is read again after
the consumer group is rewound to the start (redelivery changes nothing)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import quote

import orjson
from confluent_kafka import Producer
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tally.broker.admin import ensure_topics, read_topic
from tally.broker.local import LocalBroker
from tally.core.clock import iso, now_ms
from tally.core.deadletters import DeadLetter
from tally.feed import RawPost, social_posts
from tests.conftest import WorkerFactory
from tests.harness import (
    ACCESS,
    EventStream,
    Worker,
    consume,
    headers_of,
    rewind,
    start_all,
    wait_until,
)
from tests.integration import forum_channel

BRANDS = ("acme", "globex", "initech")
MESSAGES = 900
MINUTE_MS = 60_000
THRESHOLD = -0.6
SOCIAL = {
    "TALLY_PIPELINES": "social",
    "TALLY_SOCIAL_CHANNELS": "tests.integration.forum_channel",
    "TALLY_SOCIAL_ALERT_THRESHOLD": str(THRESHOLD),
    "TALLY_AUTH_RATE": "0",
}
vader = SentimentIntensityAnalyzer()


def forum_posts(rng: random.Random, clock_ms: Any, count: int) -> list[RawPost]:
    """The forum's messages: its own export format, the brand in the key as for any channel."""
    made = []
    for number in range(count):
        brand = BRANDS[number % len(BRANDS)]
        mood = rng.choice(("I am so disappointed, this is horrible", "Pretty good, I like it"))
        post = {
            "post_id": f"t{number % 7}-{number}",
            "channel": "forum",
            "author": f"member{rng.randrange(50)}",
            "text": f"{mood}: {brand} support thread #{number}",
            "likes": rng.randrange(40),
            "shares": rng.randrange(5),
            "created_at_ms": clock_ms(),
        }
        value = orjson.dumps(forum_channel.document(post))
        made.append(RawPost(brand, "forum", value, (post,)))
    return made


def expected_minutes(posts: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Brute force: brand → "<channel>|<minute iso>" → the figures a summary must show."""
    cells: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for post in posts:
        minute = post["created_at_ms"] - post["created_at_ms"] % MINUTE_MS
        cells[post["brand"]][f"{post['channel']}|{iso(minute)}"].append(post)
    answer: dict[str, dict[str, dict[str, Any]]] = {}
    for brand, by_cell in cells.items():
        answer[brand] = {}
        for cell, members in by_cell.items():
            classes = Counter(sentiment(p["compound"]) for p in members)
            negative = sorted(
                (p for p in members if sentiment(p["compound"]) == "negative"),
                key=lambda p: (-p["shares"], p["post_id"]),
            )[:5]
            answer[brand][cell] = {
                "posts": len(members),
                "positive": classes["positive"],
                "neutral": classes["neutral"],
                "negative": classes["negative"],
                "mean_score": round(
                    sum(round(p["compound"] * 10_000) for p in members) / len(members) / 10_000, 4
                ),
                "top_negative": [p["post_id"] for p in negative],
            }
    return answer


def sentiment(compound: float) -> str:
    return "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"


def alerts_expected(post: dict[str, Any]) -> bool:
    reach = post["likes"] + 5 * post["shares"]
    weighted = post["compound"] * (1 + math.log10(1 + reach))
    return post["compound"] <= -0.05 and weighted <= THRESHOLD


def summary_cells(worker: Worker, brand: str, span: str) -> dict[str, dict[str, Any]]:
    answer = worker.get(f"/api/social/summary?tenant={brand}&{span}")
    return {
        f"{channel}|{point['t']}": {
            **{k: point[k] for k in ("posts", "positive", "neutral", "negative", "mean_score")},
            "top_negative": [p["post_id"] for p in point["top_negative"]],
        }
        for channel, points in answer["series"].items()
        for point in points
    }


def send_raw(
    bootstrap: str, messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    """librdkafka on its defaults (its partitioner is not Kafka's murmur2: the pipeline
    re-keys by brand anyway)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for key, value, headers in messages:
        producer.produce("social-raw", value=value, key=key, headers=headers, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failures, failures


def test_social_posts_are_scored_summed_and_alerted_once_through_two_workers(
    broker: LocalBroker, make_worker: WorkerFactory
) -> None:
    asyncio.run(ensure_topics([broker.bootstrap], ["social-raw"], partitions=4, replication=1))
    rng = random.Random(7)
    started = now_ms()
    first_minute = started - 40 * MINUTE_MS

    def clock() -> int:
        return rng.randrange(first_minute, started)  # out of order, 40 minutes back

    feed = social_posts(rng, clock_ms=clock, brands=BRANDS)
    raw = [next(feed) for _ in range(MESSAGES)] + forum_posts(rng, clock, 150)
    rng.shuffle(raw)
    repeats = rng.sample(raw, 60)  # the same messages again: each post counts once
    invalid: list[tuple[bytes | None, bytes, list[tuple[str, bytes]], str]] = [
        (b"acme", b'{"data": {"id": "1"}}', [], "unknown_channel"),
        (b"acme", b"{}", [("tally.channel", b"myspace")], "unknown_channel"),
        (b"acme", b"{not json", [("tally.channel", b"x")], "undecodable"),
        (
            b"globex",
            orjson.dumps({"data": {"id": "9", "text": "hi"}}),
            [("tally.channel", b"x")],
            "bad_post",
        ),
        (b"bad|brand", raw[0].value, [("tally.channel", raw[0].channel.encode())], "bad_tenant"),
        (b"initech", orjson.dumps({"thread": "t"}), [("tally.channel", b"forum")], "bad_post"),
    ]
    messages = [
        (post.brand.encode(), post.value, [("tally.channel", post.channel.encode())])
        for post in [*raw, *repeats]
    ]
    messages += [(key, value, headers) for key, value, headers, _ in invalid]
    rng.shuffle(messages)

    first = make_worker("w1", **SOCIAL)
    second = make_worker("w2", **SOCIAL)
    start_all(first, second)
    send_raw(broker.bootstrap, messages)

    posts = [
        {**post, "brand": item.brand, "compound": vader.polarity_scores(post["text"])["compound"]}
        for item in raw
        for post in item.posts
    ]
    expected = expected_minutes(posts)
    span = f"from={first_minute - MINUTE_MS}&to={started + MINUTE_MS}"
    for worker in (first, second):
        for brand in BRANDS:
            wait_until(
                lambda w=worker, b=brand: summary_cells(w, b, span) == expected[b],
                90,
                what=f"{brand}'s minutes on {worker.log_path.stem} equal brute force",
            )
    counted = sum(cell["posts"] for cells in expected.values() for cell in cells.values())
    assert counted == len(posts) > 1000

    # Every alert once: on the topic and in the brand's queue, most urgent first.
    alerting = {f"{p['channel']}:{p['post_id']}": p for p in posts if alerts_expected(p)}
    assert len(alerting) > 30
    on_topic = consume(broker.bootstrap, "social-alerts", len(alerting), timeout=30)
    opened = Counter(record.key.decode() for record in on_topic)
    assert opened == Counter(dict.fromkeys(alerting, 1))
    for brand in BRANDS:
        queue = first.get(f"/api/social/alerts?tenant={brand}&limit=1000")
        ids = [alert["id"] for alert in queue["alerts"]]
        assert set(ids) == {a for a, p in alerting.items() if p["brand"] == brand}
        scores = [alert["weighted_score"] for alert in queue["alerts"]]
        assert scores == sorted(scores) and queue["counts"]["open"] == len(ids)

    # The invalid messages are dead letters, each with its reason and origin.
    letters = consume(broker.bootstrap, "dead-letters", len(invalid), timeout=30)
    rules = Counter(DeadLetter.from_headers(headers_of(r).items()).rule for r in letters)
    assert rules == Counter(rule for *_, rule in invalid)
    assert all(
        DeadLetter.from_headers(headers_of(r).items()).topic == "social-raw" for r in letters
    )
    # Each keeps the headers its producer sent (a replay sends them back).
    channels = Counter(headers_of(r).get("tally.channel") for r in letters)
    assert channels == Counter(dict(h).get("tally.channel") for _, _, h, _ in invalid)

    act_on_alerts(first, second, alerting)
    late_posts_are_set_aside(broker, first, rng, started)
    live_summary(second, span)

    # Redelivery: every message read again from the start changes nothing.
    for worker in (first, second):
        worker.stop()
    rewind(broker.bootstrap, first.env["TALLY_APP_ID"], ["social-raw", "social-scored-posts"])
    start_all(first, second)
    wait_until(
        lambda: (
            not any(
                w.get("/api/health")["lag"].get(t, 0)
                for w in (first, second)
                for t in ("social-raw", "social-scored-posts")
            )
        ),
        90,
        what="the rewound topics read again",
    )
    time.sleep(3)  # a last batch in flight
    for brand in BRANDS:
        assert summary_cells(first, brand, span) == expected[brand]
    # The posts read again send their alerts' states again (a crash may have lost them):
    # each alert's last state is the queue's, opened once, with the people's steps.
    latest = {}
    for value in asyncio.run(read_all(broker, "social-alerts")):
        state = json.loads(value)
        latest[state["id"]] = state
    assert set(latest) == set(alerting)
    assert all([h["status"] for h in a["history"]].count("open") == 1 for a in latest.values())
    for brand in BRANDS:
        queue = first.get(f"/api/social/alerts?tenant={brand}&status=all&limit=1000")["alerts"]
        assert {a["id"]: a for a in queue} == {
            i: a for i, a in latest.items() if a["brand"] == brand
        }


async def read_all(broker: LocalBroker, topic: str) -> list[bytes]:
    return [record.value async for record in read_topic([broker.bootstrap], topic)]


def act_on_alerts(first: Worker, second: Worker, alerting: dict[str, dict[str, Any]]) -> None:
    """People at work: acknowledge, resolve, through either worker (the brand's owner answers);
    transitions the status does not allow are 409s, unknown alerts 404s, readers 403s."""
    chosen = sorted(alerting)[:2]
    target, other = chosen
    brand = alerting[target]["brand"]
    path = f"/api/social/alerts/{quote(target)}"
    status, acked, _ = first.post(f"{path}/ack?tenant={brand}", b'{"note": "on it"}')
    assert status == 200 and acked["status"] == "acked", acked
    assert acked["history"][-1]["note"] == "on it"
    assert acked["history"][-1]["by"].startswith("test-")
    status, resolved, _ = second.post(f"{path}/resolve?tenant={brand}", b"")
    assert status == 200 and [h["status"] for h in resolved["history"]] == [
        "open",
        "acked",
        "resolved",
    ]
    status, refused, _ = first.post(f"{path}/resolve?tenant={brand}", b"")
    assert status == 409 and "resolved" in refused["error"]
    status, missing, _ = second.post(f"/api/social/alerts/x:nope/ack?tenant={brand}", b"")
    assert status == 404, missing
    other_brand = alerting[other]["brand"]
    status, _, _ = first.post(
        f"/api/social/alerts/{quote(other)}/resolve?tenant={other_brand}", b""
    )
    assert status == 200
    # A reader may not act; a brand's token reads its own queue only.
    reader = ACCESS.token(brand, ["read"])
    status, _, _ = first.post(
        f"{path}/ack?tenant={brand}", b"", headers={"Authorization": f"Bearer {reader}"}
    )
    assert status == 403
    elsewhere = next(b for b in BRANDS if b != brand)
    status, _, _ = first.fetch(
        f"/api/social/alerts?tenant={elsewhere}", headers={"Authorization": f"Bearer {reader}"}
    )
    assert status == 403
    for worker in (first, second):
        done = worker.get(f"/api/social/alerts?tenant={brand}&status=resolved")
        assert target in [alert["id"] for alert in done["alerts"]]


def late_posts_are_set_aside(
    broker: LocalBroker, worker: Worker, rng: random.Random, started: int
) -> None:
    """Posts three days older than the newest of their partition: late, to late-events,
    counted per brand, in no minute."""
    feed = social_posts(rng, clock_ms=lambda: started - 3 * 86_400_000, brands=("acme",))
    late = [next(feed) for _ in range(5)]
    send_raw(
        broker.bootstrap,
        [(b"acme", p.value, [("tally.channel", p.channel.encode())]) for p in late],
    )
    count = sum(len(p.posts) for p in late)
    records = consume(broker.bootstrap, "late-events", count, timeout=30)
    assert len(records) == count
    assert all(json.loads(r.value)["tenant"] == "acme" for r in records)
    wait_until(
        lambda: worker.get("/api/social/summary?tenant=acme")["late_posts"] == count,
        30,
        what="the late posts counted",
    )


def live_summary(worker: Worker, span: str) -> None:
    """The summary over server-sent events: a snapshot with the brand's channels."""
    stream = EventStream(worker.url, "/api/stream/social/summary?tenant=globex&minutes=60")
    try:
        assert stream.status == 200
        snapshot, _ = stream.until(lambda e: e.event == "snapshot", 30, "snapshot")
        assert {"x", "mastodon", "forum"} <= set(snapshot.data["series"])
        assert snapshot.data["totals"]["all"]["posts"] > 0
    finally:
        stream.close()
