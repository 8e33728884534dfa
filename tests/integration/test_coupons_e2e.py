"""Location coupons through the real broker: campaigns published with `tally coupons`, the
users' purchases first, then phones' locations from the gateway (librdkafka on its defaults,
out of order, some twice, some invalid, some outside every zone). Each user in a zone gets one
coupon per campaign, with the offer their purchases choose and their zone's cell, within the
campaign's budget; a SIGKILL in the middle of a wave, and every coupon candidate read again,
change none of that. A backlog of locations sent while the worker is paused longer than the
time to live (shortened at a restart, so the pause stays short) is counted stale, and pushes
nothing; coupons whose own time to live passed before their push are counted expired and set
aside, never pushed. Redemptions, some twice, one of a coupon never pushed, give each
campaign's redemption rate as brute force does."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from tally.broker.admin import end_offsets, ensure_topics, reader, topic_partitions
from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec, validate_location, validate_purchase, validate_redemption
from tally.core.clock import now_ms
from tally.core.coupons import cell_of, zone_cells
from tally.core.deadletters import DeadLetter
from tests.conftest import WorkerFactory, codec_in
from tests.harness import Worker, consume, headers_of, rewind, uncommitted, wait_until

BERLIN = (52.52, 13.405)
PARIS = (48.8566, 2.3522)
ROME = (41.9028, 12.4964)
TTL_S = 30
#: The locations' time to live once the worker is restarted for the paused backlog.
PAUSED_TTL_S = 6
#: The topics a location passes through on its way to a push.
LOCATIONS_PATH = ["locations", "locations-by-user", "coupon-candidates"]
COUPONS = {
    "TALLY_PIPELINES": "coupons",
    "TALLY_LOCATION_TTL_SECONDS": str(TTL_S),
    "TALLY_AUTH_RATE": "0",
}
SHOES = ["shoe-1", "shoe-2"]


def campaign(
    campaign_id: str, tenant: str, where: tuple[float, float], budget: int
) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id,
        "tenant": tenant,
        "zone": {"lat": where[0], "lon": where[1], "radius_m": 400},
        "valid_from_ms": now_ms() - 3_600_000,
        "valid_to_ms": now_ms() + 3_600_000,
        "budget": budget,
        "coupon_ttl_seconds": 600,
        "offers": [
            {"offer_id": "welcome", "text": "5 % off today"},
            {"offer_id": "shoes", "text": "20 % off shoes", "items": SHOES},
        ],
    }


def publish(worker: Worker, tmp_path: Path, record: dict[str, Any]) -> None:
    path = tmp_path / f"{record['campaign_id']}.json"
    path.write_text(json.dumps(record))
    done = subprocess.run(
        [sys.executable, "-m", "tally", "coupons", "publish-campaign", str(path)],
        env={**os.environ, **worker.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"published campaign {record['campaign_id']}" in done.stdout


def near(rng: random.Random, where: tuple[float, float], metres: float) -> tuple[float, float]:
    """A point within `metres` of `where` (a square, close enough at this scale)."""
    return (
        where[0] + rng.uniform(-metres, metres) / 111_320,
        where[1] + rng.uniform(-metres, metres) / 67_800,
    )


def send(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in messages:
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
    assert producer.flush(30) == 0


def location(
    codec: AvroCodec, user: str, where: tuple[float, float], tenant: str, age_ms: int = 0
) -> tuple[bytes, bytes]:
    record = {
        "user_id": user,
        "lat": where[0],
        "lon": where[1],
        "located_at_ms": now_ms() - age_ms,
        "tenant": tenant,
    }
    return user.encode(), codec.dumps(record)


def purchases_counted(worker: Worker) -> float:
    """Purchases the users' partitions have counted (Prometheus)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(worker.text("/metrics"))
        for sample in family.samples
        if sample.name == "tally_events_total"
        and sample.labels == {"topic": "purchases-by-customer", "outcome": "counted"}
    )


def pushed_so_far(broker: LocalBroker) -> int:
    """Records on coupon-pushes now (its partitions' ends)."""

    async def ends() -> int:
        consumer = reader([broker.bootstrap])
        await consumer.start()
        try:
            tps = await topic_partitions(consumer, "coupon-pushes")
            return sum((await end_offsets(consumer, tps)).values())
        finally:
            await consumer.stop()

    return asyncio.run(ends())


def everything_pushed(broker: LocalBroker) -> list[dict[str, Any]]:
    return pushes(broker, pushed_so_far(broker))


def pushes(broker: LocalBroker, expect: int) -> list[dict[str, Any]]:
    return [
        json.loads(r.value) for r in consume(broker.bootstrap, "coupon-pushes", expect, timeout=10)
    ]


def test_each_user_in_a_zone_gets_one_coupon_per_campaign_and_stale_locations_none(
    broker: LocalBroker, make_worker: WorkerFactory, registry_dir: Path, tmp_path: Path
) -> None:
    asyncio.run(
        ensure_topics(
            [broker.bootstrap], ["locations", "coupon-redemptions"], partitions=4, replication=1
        )
    )
    rng = random.Random(3)
    locations = codec_in(registry_dir, "locations-value", "location_event", validate_location)
    unchecked = codec_in(registry_dir, "locations-value", "location_event")
    purchases = codec_in(registry_dir, "purchases-value", "purchase", validate_purchase)
    redemptions = codec_in(
        registry_dir, "coupon-redemptions-value", "coupon_redemption", validate_redemption
    )
    worker = make_worker("w1", **COUPONS).start()
    campaigns = [
        campaign("berlin-shoes", "acme", BERLIN, budget=1000),
        campaign("berlin-lunch", "acme", BERLIN, budget=5),
        campaign("paris-shoes", "globex", PARIS, budget=1000),
    ]
    for record in campaigns:
        publish(worker, tmp_path, record)
    wait_until(
        lambda: len(worker.get("/api/coupons/campaigns?tenant=acme")["campaigns"]) == 2,
        30,
        what="the campaigns in effect",
    )

    # Purchases first: users u0..u9 of each tenant bought shoes.
    bought = [
        (f"p{tenant}{n}", tenant, f"u{n}", SHOES[n % 2])
        for tenant in ("acme", "globex")
        for n in range(10)
    ]
    send(
        broker.bootstrap,
        "purchases",
        [
            (
                item.encode(),
                purchases.dumps(
                    {
                        "purchase_id": pid,
                        "item_id": item,
                        "quantity": 1,
                        "unit_price_cents": 5000,
                        "event_time_ms": now_ms(),
                        "customer_id": user,
                        "metadata": {},
                        "tenant": tenant,
                    }
                ),
            )
            for pid, tenant, user, item in bought
        ],
    )
    wait_until(lambda: purchases_counted(worker) == len(bought), 60, what="purchases counted")

    # Wave 1: users u0..u29 of acme in Berlin and of globex in Paris, twice each, in no order;
    # u30..u39 outside every zone; two places not on Earth.
    zone = {
        tenant: zone_cells(*where, 400) for tenant, where in (("acme", BERLIN), ("globex", PARIS))
    }
    sent_cells: dict[tuple[str, str], set[str]] = defaultdict(set)
    wave: list[tuple[bytes, bytes]] = []
    for tenant, where in (("acme", BERLIN), ("globex", PARIS)):
        for n in range(30):
            for _ in range(2):
                point = near(rng, where, 150)
                sent_cells[tenant, f"u{n}"].add(cell_of(*point))
                wave.append(location(locations, f"u{n}", point, tenant))
        for n in range(30, 40):
            wave.append(location(locations, f"u{n}", (where[0] + 0.2, where[1]), tenant))
    rng.shuffle(wave)
    invalid = [
        location(unchecked, "bad", (100.0, 0.0), "acme"),
        location(unchecked, "bad", (0.0, float("nan")), "acme"),
    ]
    send(broker.bootstrap, "locations", wave + invalid)
    expected = {("berlin-shoes", f"u{n}") for n in range(30)} | {
        ("paris-shoes", f"u{n}") for n in range(30)
    }
    # berlin-lunch has a budget of 5: five of acme's 30 users get one.
    wait_until(lambda: len(pushes(broker, 65)) >= 65, 60, what="wave 1's coupons pushed")
    time.sleep(2)  # anything more would come now
    first = pushes(broker, 65)

    def check(found: list[dict[str, Any]]) -> None:
        by_coupon: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for push in found:
            by_coupon[push["coupon_id"]].append(push)
        # One coupon per user and campaign: a repeat (a crash between push and record) is the
        # same coupon, word for word.
        assert all(all(p == same[0] for p in same) for same in by_coupon.values())
        coupons = {(p[0]["campaign_id"], p[0]["user_id"]): p[0] for p in by_coupon.values()}
        lunch = {key for key in coupons if key[0] == "berlin-lunch"}
        assert len(lunch) == 5 and all(int(user[1:]) < 30 for _, user in lunch)
        assert set(coupons) - lunch == expected
        for (campaign_id, user), push in coupons.items():
            tenant = "globex" if campaign_id.startswith("paris") else "acme"
            assert push["tenant"] == tenant
            assert push["offer_id"] == ("shoes" if int(user[1:]) < 10 else "welcome")
            assert push["zone_cell"] in sent_cells[tenant, user] & zone[tenant]
            assert push["expires_at_ms"] == push["located_at_ms"] + 600_000

    check(first)
    letters = consume(broker.bootstrap, "dead-letters", 2, timeout=30)
    assert {DeadLetter.from_headers(headers_of(r).items()).rule for r in letters} == {
        "out_of_range"
    }

    # Wave 2, with the worker SIGKILLed in the middle; then every coupon candidate read again.
    more: list[tuple[bytes, bytes]] = []
    for tenant, where in (("acme", BERLIN), ("globex", PARIS)):
        for n in range(40, 70):
            point = near(rng, where, 150)
            sent_cells[tenant, f"u{n}"].add(cell_of(*point))
            more.append(location(locations, f"u{n}", point, tenant))
    send(broker.bootstrap, "locations", more)
    expected |= {(c, f"u{n}") for c in ("berlin-shoes", "paris-shoes") for n in range(40, 70)}
    time.sleep(0.5)
    worker.stop(signal.SIGKILL)
    worker.start()
    wait_until(lambda: len(pushes(broker, 125)) >= 125, 90, what="wave 2's coupons pushed")
    time.sleep(2)  # a repeat of a push the crash cut short would come now
    before = pushed_so_far(broker)
    worker.stop()
    rewind(broker.bootstrap, worker.env["TALLY_APP_ID"], ["coupon-candidates"])
    worker.env["TALLY_LOCATION_TTL_SECONDS"] = str(PAUSED_TTL_S)
    worker.start()
    wait_until(
        lambda: not any(worker.get("/api/health")["lag"].values()), 60, what="candidates read again"
    )
    time.sleep(2)
    after = everything_pushed(broker)
    assert len(after) == before, "coupon candidates read again pushed coupons again"
    check(after)

    # Fresh locations whose coupons (a time to live of 1 s) expired before they could be
    # pushed: counted expired, set aside, never pushed.
    flash = {**campaign("rome-flash", "initech", ROME, budget=1000), "coupon_ttl_seconds": 1}
    publish(worker, tmp_path, flash)
    wait_until(
        lambda: worker.get("/api/coupons/campaigns?tenant=initech")["campaigns"],
        30,
        what="the flash campaign in effect",
    )
    expired_waiting = [
        location(locations, f"flash{n}", near(rng, ROME, 100), "initech", age_ms=1_100)
        for n in range(10)
    ]
    send(broker.bootstrap, "locations", expired_waiting)
    wait_until(
        lambda: (
            worker.get("/api/coupons/campaigns?tenant=initech")["campaigns"][0]["expired"]
            == len(expired_waiting)
        ),
        60,
        what="the flash campaign's coupons counted expired",
    )

    # A backlog while the worker is paused past the time to live: all stale, nothing pushed.
    # The pause outlasts the group session (a rebalance follows it): what came before is
    # committed first, or its figures and letters would come twice (at least once).
    wait_until(
        lambda: uncommitted(broker.bootstrap, worker.env["TALLY_APP_ID"], LOCATIONS_PATH) == 0,
        30,
        what="everything so far committed",
    )
    assert worker.process is not None
    worker.process.send_signal(signal.SIGSTOP)
    try:
        stale = [location(locations, f"late{n}", near(rng, BERLIN, 100), "acme") for n in range(20)]
        send(broker.bootstrap, "locations", stale)
        time.sleep(PAUSED_TTL_S + 3)
    finally:
        worker.process.send_signal(signal.SIGCONT)

    late = consume(broker.bootstrap, "late-events", len(stale) + len(expired_waiting), timeout=60)
    notes = [DeadLetter.from_headers(headers_of(r).items()) for r in late]
    assert len(notes) == len(stale) + len(expired_waiting)
    assert {n.rule for n in notes} == {"stale"} and {n.topic for n in notes} == {"locations"}
    assert sum("expired at" in n.reason for n in notes) == len(expired_waiting)
    assert not [p for p in everything_pushed(broker) if p["user_id"].startswith(("late", "flash"))]
    rome = worker.get("/api/coupons/campaigns?tenant=initech")["campaigns"][0]
    assert (rome["pushed"], rome["expired"]) == (0, len(expired_waiting))

    # Redemptions: each campaign's rate as brute force has it.
    pushed = {(p["campaign_id"], p["user_id"]): p for p in everything_pushed(broker)}
    used = rng.sample(sorted(pushed), 40)
    redeemed = [
        (p.encode(), redemptions.dumps({"coupon_id": p, "redeemed_at_ms": now_ms(), "tenant": t}))
        for c, u in used
        for p, t in [(pushed[c, u]["coupon_id"], pushed[c, u]["tenant"])]
    ]
    unknown = redemptions.dumps(
        {"coupon_id": "no-such:u1", "redeemed_at_ms": now_ms(), "tenant": "acme"}
    )
    send(broker.bootstrap, "coupon-redemptions", redeemed + redeemed[:10] + [(b"x", unknown)])
    truth: dict[str, tuple[int, int]] = {}
    for campaign_id in ("berlin-shoes", "berlin-lunch", "paris-shoes"):
        issued = sum(1 for c, _ in pushed if c == campaign_id)
        truth[campaign_id] = (issued, sum(1 for c, _ in used if c == campaign_id))

    def figures() -> dict[str, tuple[int, int, float | None]]:
        found = {}
        for tenant in ("acme", "globex"):
            for row in worker.get(f"/api/coupons/campaigns?tenant={tenant}")["campaigns"]:
                found[row["campaign_id"]] = (row["pushed"], row["redeemed"], row["redemption_rate"])
        return found

    expected_figures = {c: (p, r, r / p) for c, (p, r) in truth.items()}
    wait_until(lambda: figures() == expected_figures, 60, what="redemption rates")
    lunch = worker.get("/api/coupons/campaigns?tenant=acme")["campaigns"]
    assert next(c for c in lunch if c["campaign_id"] == "berlin-lunch")["over_budget"] > 0
    letters = consume(broker.bootstrap, "dead-letters", 3, timeout=30)
    assert "unknown_coupon" in {
        DeadLetter.from_headers(headers_of(r).items()).rule for r in letters
    }
