"""Merchants through the real broker, on two workers: 2,000 merchants, 50,000 purchases over
30 hours of event time (out of order, repeated times, single messages and envelopes, late
ones), one worker SIGKILLed under load: every merchant's hourly and daily figures and its
top-10 equal brute force over its own purchases; distinct customers within the sketch's
error; a merchant's token reads its own merchant only."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec, Record
from tally.core.clock import iso
from tally.core.deadletters import DeadLetter
from tally.core.topk import rank_key
from tally.feed import historical_purchases, zipf_weights
from tests.conftest import WorkerFactory
from tests.harness import ACCESS, Verdict, Worker, consume, headers_of, start_all, wait_until
from tests.integration.test_sales_e2e import HOUR_MS, messages, produce_to_partitions

MERCHANTS = 2_000
PURCHASES = 50_000
LATE = 300
CHANNELS = ("web", "app", "store", "")
#: The newest purchase is half-way through an hour (the window does not roll during the test).
T_END = 1_767_312_000_000 + 30 * 60_000  # 2026-01-02T00:30Z
#: The queries' first hour: the first purchases are the day's last 6 hours.
FROM = 1_767_139_200_000  # 2025-12-31T00:00Z
#: A hot tier of 25 hours (no past windows kept): the oldest 5 hours are the archive's; the
#: whole first day is final, a day cell.
#: One correctness run reads every merchant: no rate limit on its tokens.
MERCHANTS_ONLY = {
    "TALLY_PIPELINES": "merchants",
    "TALLY_AUTH_RATE": "0",
    "TALLY_SALES_RETAINED_PANES": "0",
    "TALLY_MERCHANTS_HOT_HOURS": "1",
    "TALLY_ARCHIVE_FLUSH_SECONDS": "1",
    # Each worker keeps a standby copy of the other's partitions and answers from it.
    "TALLY_STANDBY_REPLICAS": "1",
}
DAY_MS = 24 * HOUR_MS
#: A range holding every purchase.
SPAN = f"from={FROM}&to={T_END + HOUR_MS}"


def merchant_name(n: int) -> str:
    return f"m{n:05d}"


def merchant_purchases(rng: random.Random) -> list[Record]:
    """The sales feed's purchases (Zipf items, jittered times), each a merchant's (Zipf over
    merchants), with a customer of its own (Zipf) and a channel."""
    events = historical_purchases(
        rng, count=PURCHASES, items=300, end_ms=T_END, span_ms=30 * HOUR_MS
    )
    merchants = rng.choices(range(MERCHANTS), cum_weights=zipf_weights(MERCHANTS), k=PURCHASES)
    customers = zipf_weights(500)
    for event, merchant in zip(events, merchants, strict=True):
        customer = rng.choices(range(500), cum_weights=customers)[0]
        event["tenant"] = merchant_name(merchant)
        event["customer_id"] = f"c{customer}"
        event["unit_price_cents"] = rng.randint(100, 9_999)
        channel = rng.choice(CHANNELS)
        event["metadata"] = {"channel": channel} if channel else {}
    return events


@dataclass
class Figures:
    orders: int = 0
    units: int = 0
    revenue_cents: int = 0
    customers: set[str] = field(default_factory=set)
    channels: Counter[str] = field(default_factory=Counter)

    def add(self, event: Record) -> None:
        self.orders += 1
        self.units += event["quantity"]
        self.revenue_cents += event["quantity"] * event["unit_price_cents"]
        self.customers.add(event["customer_id"])
        self.channels[event["metadata"].get("channel") or "unknown"] += 1


def truth(events: list[Record], bucket_ms: int) -> dict[str, dict[int, Figures]]:
    """merchant → step start → its figures (UTC days and hours start at multiples)."""
    found: dict[str, dict[int, Figures]] = defaultdict(lambda: defaultdict(Figures))
    for event in events:
        start = event["event_time_ms"] - event["event_time_ms"] % bucket_ms
        found[event["tenant"]][start].add(event)
    return found


def top_items(events: list[Record], merchant: str, last_pane: int) -> list[dict[str, Any]]:
    totals: Counter[str] = Counter()
    for e in events:
        if e["tenant"] == merchant and last_pane - 23 <= e["event_time_ms"] // HOUR_MS <= last_pane:
            totals[f"{merchant}|{e['item_id']}"] += e["quantity"]
    ranked = sorted(totals.items(), key=rank_key)[:10]
    return [
        {"rank": n, "item_id": key.split("|")[1], "quantity": q}
        for n, (key, q) in enumerate(ranked, start=1)
    ]


def differences(answer: dict[str, Any], expected: dict[int, Figures]) -> list[str]:
    """What an answer's steps get wrong: exact integers, customers within 3 % (the sketch's
    relative standard error is 1.6 %; a few hundred customers are counted exactly)."""
    wrong = []
    steps = {step["start_ms"]: step for step in answer["steps"]}
    if set(steps) != set(expected):
        return [f"steps {sorted(set(steps) ^ set(expected))} differ"]
    for start, figures in expected.items():
        step = steps[start]
        exact = (step["orders"], step["units"], step["revenue_cents"])
        if exact != (figures.orders, figures.units, figures.revenue_cents):
            wrong.append(
                f"{start}: {exact} != {(figures.orders, figures.units, figures.revenue_cents)}"
            )
        customers = len(figures.customers)
        if abs(step["distinct_customers"] - customers) > max(1, customers * 0.03):
            wrong.append(f"{start}: {step['distinct_customers']} customers, truly {customers}")
        channels = {name: c["orders"] for name, c in step["channels"].items()}
        if channels != dict(figures.channels):
            wrong.append(f"{start}: channels {channels} != {dict(figures.channels)}")
    return wrong


def all_agree(
    reader: Worker, events: list[Record], merchants: list[str], served_by: Counter[str]
) -> list[str]:
    """Every merchant's hours and days against brute force: the first few that differ;
    which copies answered counted in `served_by`."""
    hours, days = truth(events, HOUR_MS), truth(events, DAY_MS)
    wrong: list[str] = []
    for merchant in merchants:
        for step, expected in (("1h", hours), ("1d", days)):
            answer = reader.get(f"/api/merchants/{merchant}/sales?{SPAN}&step={step}")
            served_by[answer["served_by"]] += 1
            found = differences(answer, expected.get(merchant, {}))
            if found:
                wrong.append(f"{merchant} {step}: {found[:3]}")
                if len(wrong) >= 5:
                    return wrong
    return wrong


def agreeing(
    reader: Worker, events: list[Record], merchants: list[str], served_by: Counter[str]
) -> Verdict:
    """`all_agree` for `wait_until`: on a timeout it says what differed."""
    wrong = all_agree(reader, events, merchants, served_by)
    return Verdict("; ".join(wrong) if wrong else None)


def test_every_merchant_sees_its_own_figures_equal_to_brute_force_through_a_sigkill(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    purchase_codec: AvroCodec,
    purchase_batch_codec: AvroCodec,
    tmp_path: Path,
) -> None:
    env = {**MERCHANTS_ONLY, "TALLY_ARCHIVE_DIR": str(tmp_path / "archive")}
    first, second = start_all(make_worker("w1", **env), make_worker("w2", **env))
    events = merchant_purchases(random.Random(23))
    merchants = sorted({e["tenant"] for e in events})
    assert len(merchants) > MERCHANTS * 0.9

    # First half, then the second half with one worker SIGKILLed while it is read.
    half = len(events) // 2
    produce_to_partitions(
        broker.bootstrap, messages(events[:half], purchase_codec, purchase_batch_codec)
    )
    wait_until(
        lambda: first.get(f"/api/merchants/{merchants[0]}/summary?{SPAN}")["orders"] > 0,
        90,
        what="the first purchases counted",
    )
    # A reader: copies of every partition followed outside the consumer group (the group does
    # not rebalance for it), loaded from the changelogs so far, then kept current.
    generation = first.get("/api/health")["group_generation"]
    copies = make_worker("r1", **env, TALLY_ROLE="read", TALLY_PROCESSING_URLS=first.url).start()
    assert copies.get("/api/health")["role"] == "read"
    produce_to_partitions(
        broker.bootstrap, messages(events[half:], purchase_codec, purchase_batch_codec)
    )
    assert first.get("/api/health")["group_generation"] == generation
    second.stop(signal.SIGKILL)
    second = make_worker("w2", **env).start()

    # Late: 26 hours behind every watermark, set aside for the merchants, never counted.
    late = [
        {**e, "purchase_id": f"late{n}", "event_time_ms": T_END - 26 * HOUR_MS}
        for n, e in enumerate(events[:LATE])
    ]
    wait_until(
        lambda: agreeing(first, events, merchants[:50], Counter()),
        180,
        what="the first merchants' figures to equal brute force",
    )
    produce_to_partitions(
        broker.bootstrap,
        [(None, e["item_id"].encode(), purchase_codec.dumps(e)) for e in late],
    )
    letters = consume(broker.bootstrap, "late-events", expect=LATE, timeout=60)
    assert sorted(purchase_codec.loads(r.value)["purchase_id"] for r in letters) == sorted(
        e["purchase_id"] for e in late
    )
    assert {DeadLetter.from_headers(headers_of(r)).stage for r in letters} == {"late"}

    # Every merchant, from either worker: from the owner's copy or the worker's standby copy
    # of the merchant's partition (a standby trails by a second or so: checked until equal);
    # hours from the archive and the hot table, the final day from its day cell.
    for reader, some in ((first, merchants), (second, merchants[::10])):
        served_by: Counter[str] = Counter()
        problems: list[str] = []
        for _ in range(30):
            served_by.clear()
            problems = all_agree(reader, events, some, served_by)
            if not problems:
                break
            time.sleep(1)
        assert not problems, problems
        assert served_by["owner"] and served_by["standby"], served_by
    # The reader: every merchant equal to brute force, from its own copies.
    served_by = Counter()
    wait_until(
        lambda: agreeing(copies, events, merchants, served_by),
        60,
        what="the reader's copies to equal brute force",
    )
    assert set(served_by) == {"reader"}, served_by
    read = [copies.get(f"/api/merchants/{m}/summary?{SPAN}") for m in merchants[:40]]
    assert all(a["served_by"] == "reader" and a["stale_by_ms"] < 10_000 for a in read), read
    relayed = copies.get(f"/api/merchants/{merchants[0]}/summary?{SPAN}&consistency=owner")
    assert relayed["served_by"] == "owner" and relayed["orders"] == read[0]["orders"]
    first_load = copies.get("/api/health")["copies"][0]["load"]["records_to_restore"]

    # Restarted (here without processing workers to relay to): it reads only what it missed,
    # answers as before, and says why it cannot relay consistency=owner.
    copies.stop()
    copies = make_worker("r1", **env, TALLY_ROLE="read").start()
    assert copies.get("/api/health")["copies"][0]["load"]["records_to_restore"] < first_load
    assert [copies.get(f"/api/merchants/{m}/summary?{SPAN}")["orders"] for m in merchants[:40]] == [
        a["orders"] for a in read
    ]
    status, body = copies.get_status(f"/api/merchants/{merchants[0]}/summary?consistency=owner")
    assert status == 409 and "TALLY_PROCESSING_URLS" in body["error"], body

    stale = [first.get(f"/api/merchants/{merchant}/summary?{SPAN}") for merchant in merchants[:40]]
    assert {answer["served_by"] for answer in stale} == {"owner", "standby"}
    assert all(a["stale_by_ms"] < 10_000 for a in stale if a["served_by"] == "standby"), stale
    owners = [
        first.get(f"/api/merchants/{merchant}/summary?{SPAN}&consistency=owner")
        for merchant in merchants[:40]
    ]
    assert {answer["served_by"] for answer in owners} == {"owner"}
    assert [a["orders"] for a in owners] == [a["orders"] for a in stale]
    hours, days = (
        first.get(f"/api/merchants/{merchants[0]}/sales?{SPAN}&step={step}")["tiers"]
        for step in ("1h", "1d")
    )
    oldest = iso(min(e["event_time_ms"] for e in events))
    assert [tier["tier"] for tier in hours] == ["archive", "hot"], hours
    assert hours[0]["to"] == hours[1]["from"] and oldest < hours[0]["to"] < iso(FROM + DAY_MS)
    assert [(t["tier"], t["from"], t["to"]) for t in days] == [
        ("days", iso(FROM), iso(FROM + DAY_MS)),
        ("hot", iso(FROM + DAY_MS), iso(T_END - T_END % HOUR_MS + 2 * HOUR_MS)),
    ]

    last_pane = first.get(f"/api/merchants/{merchants[0]}/top-items")["window_end"]
    for merchant in merchants[:: len(merchants) // 200]:
        answer = second.get(f"/api/merchants/{merchant}/top-items")
        assert answer["window_end"] == last_pane
        pane = T_END // HOUR_MS
        assert answer["items"] == top_items(events, merchant, pane), merchant
        assert copies.get(f"/api/merchants/{merchant}/top-items")["items"] == answer["items"]

    # A merchant's token reads its own merchant only: another's is a 404, as one never seen.
    own, other = merchants[0], merchants[1]
    token = ACCESS.token(own, ["read"])
    reader = Worker(env={}, log_path=first.log_path, port=first.port, token=token)
    assert reader.get(f"/api/merchants/{own}/summary?{SPAN}")["orders"] > 0
    for path in ("sales", "summary", "top-items"):
        status, body = reader.get_status(f"/api/merchants/{other}/{path}")
        assert status == 404 and "no merchant" in body["error"], (path, body)
