"""Orders through the real broker, on two workers: two merchants' orders (honest customers,
card testing, account takeovers, device rings) flow while a second model version is published
with `tally fraud publish-model`, and a worker is SIGKILLed and restarted under load. Every
order is decided once; each by the model in effect at its time (v1 before the swap, v2 after,
on both workers, with no restart); each customer's features equal brute force over its own
orders; the review queue holds every order sent to review, and people's decisions on them
reach the audit log. Invalid orders are dead letters."""

from __future__ import annotations

import asyncio
import itertools
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

from aiokafka import AIOKafkaProducer

from tally.broker.admin import ensure_topics, read_topic
from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tally.core.clock import now_ms
from tally.core.deadletters import DeadLetter
from tally.core.fraud import Entities, Model
from tally.feed import orders
from tally.fraud.models import DEFAULT_MODEL
from tests.conftest import WorkerFactory, codec_in
from tests.harness import ACCESS, Worker, consume, headers_of, start_all, wait_until

MERCHANTS = ("shop-a", "shop-b")
FRAUD = {
    "TALLY_PIPELINES": "fraud",
    "TALLY_AUTH_RATE": "0",
    "TALLY_STANDBY_REPLICAS": "1",
    "TALLY_ARCHIVE_FLUSH_SECONDS": "1",
}
RATE = 150  # orders per second
CUSTOMER_FEATURES = (
    "customer_orders_10m",
    "customer_orders_1h",
    "customer_orders_24h",
    "customer_amount_10m",
    "customer_amount_1h",
    "customer_amount_24h",
    "new_address",
    "amount_ratio",
)


async def send_orders(
    bootstrap: str, codec: AvroCodec, placed: Any, seconds: float, sent: list[dict[str, Any]]
) -> None:
    """Orders at RATE a second for `seconds`, each placed (created_at) as it is sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            tick = time.monotonic()
            for _ in range(RATE // 10):
                order, _fraud = next(placed)
                await producer.send("orders", codec.dumps(order), key=order["customer_id"].encode())
                sent.append(order)
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        await producer.flush()
    finally:
        await producer.stop()


def second_model(path: Path) -> Model:
    """v2: v1's weights, stricter (more orders to review)."""
    v1 = json.loads(DEFAULT_MODEL.read_text())
    v2 = {**v1, "version": "v2", "thresholds": {"review": 0.02, "reject": 0.8}}
    path.write_text(json.dumps(v2))
    return Model.from_record(v2)


def decisions_by_order(broker: LocalBroker, order_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Every decision on fraud-decisions by order, once each of `order_ids` has one (copies
    of a decision sent again after a crash are there too)."""

    def read() -> dict[str, list[dict[str, Any]]] | None:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for value in asyncio.run(read_all(broker, "fraud-decisions")):
            decision = json.loads(value)
            found[decision["order_id"]].append(decision)
        return found if order_ids <= set(found) else None

    try:
        return wait_until(read, 90, interval=2.0, what="every order decided")
    except AssertionError:
        found = asyncio.run(read_all(broker, "fraud-decisions"))
        seen = {json.loads(value)["order_id"] for value in found}
        missing = sorted(order_ids - seen)
        raise AssertionError(f"{len(missing)} orders never decided, e.g. {missing[:5]}") from None


def test_orders_are_decided_once_by_the_model_of_their_time_through_a_swap_and_a_sigkill(
    broker: LocalBroker, make_worker: WorkerFactory, registry_dir: Path, tmp_path: Path
) -> None:
    asyncio.run(ensure_topics([broker.bootstrap], ["orders"], partitions=4, replication=1))
    codec = codec_in(registry_dir, "orders-value", "order")
    shared = {**FRAUD, "TALLY_ARCHIVE_DIR": str(tmp_path / "archive")}
    first = make_worker("w1", **shared)
    second = make_worker("w2", **shared)
    start_all(first, second)
    wait_until(lambda: first.get("/api/fraud/models")["models"], 30, what="the default model")
    rng = random.Random(11)
    placed = orders(rng, clock_ms=now_ms, tenants=MERCHANTS, customers=300)
    sent: list[dict[str, Any]] = []
    asyncio.run(send_orders(broker.bootstrap, codec, placed, 6, sent))

    # A new version, published while orders flow; no worker restarts.
    v2 = second_model(tmp_path / "v2.json")
    published = subprocess.run(
        [sys.executable, "-m", "tally", "fraud", "publish-model", str(tmp_path / "v2.json")],
        env={**os.environ, **first.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert published.returncode == 0, published.stderr
    assert "published model v2" in published.stdout
    swap = wait_until(
        lambda: next(
            (m for m in second.get("/api/fraud/models")["models"] if m["version"] == "v2"), None
        ),
        10,
        what="v2 on the second worker",
    )
    asyncio.run(send_orders(broker.bootstrap, codec, placed, 4, sent))
    # One worker dies under load; its partitions move, then it comes back.
    assert second.process is not None
    second.process.send_signal(signal.SIGKILL)
    second.process.wait(10)
    asyncio.run(send_orders(broker.bootstrap, codec, placed, 4, sent))
    second.start()
    asyncio.run(send_orders(broker.bootstrap, codec, placed, 2, sent))

    # Invalid orders: dead letters, each with its reason.
    bad = [
        {**sent[0], "order_id": "bad-amount", "amount_cents": 0},
        {**sent[0], "order_id": "bad|id"},
        {**sent[0], "order_id": "bad-address", "shipping_address": "  "},
    ]
    asyncio.run(send_raw(broker.bootstrap, [codec.dumps(o) for o in bad] + [b"not avro"]))
    letters = consume(broker.bootstrap, "dead-letters", 4, timeout=30)
    rules = sorted(DeadLetter.from_headers(headers_of(r).items()).rule for r in letters)
    assert rules == ["bad_id", "missing_field", "out_of_range", "undecodable"], rules

    # Every order decided, once, by the model in effect at its time.
    decided = decisions_by_order(broker, {o["order_id"] for o in sent})
    assert len(decided) == len(sent)
    effective = swap["effective_from_ms"]
    v1 = Model.from_record(json.loads(DEFAULT_MODEL.read_text()))
    entities = Entities()
    checked_v2 = 0
    for order in sorted(sent, key=lambda o: (o["created_at_ms"], o["order_id"])):
        copies = decided[order["order_id"]]
        # A decision sent again after the SIGKILL is the same decision.
        distinct = {(d["decision"], d["model_version"], d["score"]) for d in copies}
        assert len(distinct) == 1, (order["order_id"], copies)
        decision = copies[0]
        model = v2 if order["created_at_ms"] >= effective else v1
        assert decision["model_version"] == model.version, (order, decision)
        features = entities.features(order, order["tenant"])
        for name in CUSTOMER_FEATURES:
            assert abs(decision["features"][name] - features[name]) < 1e-9, (name, order, decision)
        assert decision["decision"] == model.decide(decision["features"])[0]
        checked_v2 += model is v2
    assert 0 < checked_v2 < len(sent)

    # The review queue holds every order sent to review; people decide some.
    reviews = {
        order_id: copies[0]
        for order_id, copies in decided.items()
        if copies[0]["decision"] == "review"
    }
    assert len(reviews) >= 4, len(reviews)
    for merchant in MERCHANTS:
        queue = first.get(f"/api/fraud/reviews?tenant={merchant}&status=waiting&limit=1000")
        expected = {o for o, d in reviews.items() if d["merchant"] == merchant}
        assert {r["order_id"] for r in queue["reviews"]} == expected
    people_decide(broker, first, second, reviews)

    # The archive holds every decision, the model's and the people's, each once.
    span = f"from={sent[0]['created_at_ms'] - 60_000}&to={now_ms() + 60_000}"
    for merchant in MERCHANTS:
        theirs = {o["order_id"] for o in sent if o["tenant"] == merchant}
        people = {o for o in sorted(reviews)[:4] if reviews[o]["merchant"] == merchant}
        wait_until(
            lambda m=merchant, t=theirs, p=people: archived_once(first, m, span, t, p),
            60,
            what=f"{merchant}'s decisions in the archive",
        )


def archived_once(
    worker: Worker, merchant: str, span: str, placed: set[str], reviewed: set[str]
) -> bool:
    """Whether the merchant's archived decisions are every order's and the people's on the
    reviewed ones; each decision is there once."""
    found = worker.get(f"/api/fraud/audit?tenant={merchant}&{span}")["decisions"]
    by_kind = {
        kind: {r["order_id"] for r in found if r["kind"] == kind} for kind in ("model", "review")
    }
    if by_kind != {"model": placed, "review": reviewed}:
        return False
    keys = [(r["order_id"], r["kind"]) for r in found]
    assert len(keys) == len(set(keys))
    return True


async def send_raw(bootstrap: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait("orders", value, key=b"bad")
    finally:
        await producer.stop()


def people_decide(
    broker: LocalBroker, first: Worker, second: Worker, reviews: dict[str, dict[str, Any]]
) -> None:
    """Reviewers approve and reject through either worker; each decision is on the order's
    record and in the audit log; deciding twice is a 409, an unknown order a 404, a reader
    may not decide."""
    chosen = sorted(reviews)[:4]
    outcomes = dict(zip(chosen, itertools.cycle(("approve", "reject")), strict=False))
    for n, (order_id, outcome) in enumerate(outcomes.items()):
        worker = (first, second)[n % 2]
        merchant = reviews[order_id]["merchant"]
        body = json.dumps({"decision": outcome, "note": f"checked {n}"}).encode()
        status, record, _ = worker.post(
            f"/api/fraud/reviews/{order_id}/decision?tenant={merchant}", body
        )
        assert status == 200, record
        assert record["review"]["decision"] == outcome and record["decision"] == "review"
        assert record["review"]["by"].startswith("test-")
    order_id = chosen[0]
    merchant = reviews[order_id]["merchant"]
    path = f"/api/fraud/reviews/{order_id}/decision?tenant={merchant}"
    status, refused, _ = second.post(path, b'{"decision": "reject"}')
    assert status == 409 and "not waiting for review" in refused["error"], refused
    status, _, _ = first.post(
        f"/api/fraud/reviews/nope/decision?tenant={merchant}", b'{"decision": "approve"}'
    )
    assert status == 404
    status, _, _ = first.post(path, b'{"decision": "maybe"}')
    assert status == 400
    reader = ACCESS.token(merchant, ["read"])
    status, _, _ = first.post(
        path, b'{"decision": "approve"}', headers={"Authorization": f"Bearer {reader}"}
    )
    assert status == 403
    for worker in (first, second):
        record = worker.get(f"/api/fraud/orders/{order_id}?tenant={merchant}")
        assert record["decision"]["review"]["decision"] == outcomes[order_id]
        decided = worker.get(f"/api/fraud/reviews?tenant={merchant}&status=decided")
        assert order_id in {r["order_id"] for r in decided["reviews"]}
    audit = [json.loads(value) for value in asyncio.run(read_all(broker, "fraud-audit"))]
    people = {entry["order_id"]: entry for entry in audit if entry["kind"] == "review"}
    assert {o: people[o]["review"]["decision"] for o in people} == outcomes
    assert set(reviews) <= {entry["order_id"] for entry in audit if entry["kind"] == "model"}


async def read_all(broker: LocalBroker, topic: str) -> list[bytes]:
    return [record.value async for record in read_topic([broker.bootstrap], topic)]
