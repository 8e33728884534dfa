"""The foundation through the real broker: Avro in Confluent framing, dead letters, recovery."""

from __future__ import annotations

import itertools
import random
import struct
from importlib import resources
from pathlib import Path

from tally.broker.local import LocalBroker
from tally.codecs.avro import (
    AvroCodec,
    Record,
    load_schema,
    schema_id_of,
    validate_location,
    validate_order,
    validate_page_view,
    validate_redemption,
)
from tally.codecs.registry import HttpSchemaRegistry
from tally.core.deadletters import DeadLetter
from tally.feed import locations, metric_batches, orders, page_views, purchases, social_posts
from tests.conftest import WorkerFactory, codec_in
from tests.harness import ACCESS, consume, headers_of, produce, wait_until

HOUR_MS = 3_600_000
T0 = 1_790_000_000_000 - 1_790_000_000_000 % HOUR_MS  # an hour boundary in 2026


def purchase(item: str, quantity: int, at_ms: int, n: int = 0) -> Record:
    return {
        "purchase_id": f"p{n}",
        "item_id": item,
        "quantity": quantity,
        "unit_price_cents": 100,
        "event_time_ms": at_ms,
        "metadata": {},
    }


def item_quantity(worker, item: str, at_ms: int) -> int:  # type: ignore[no-untyped-def]
    return int(worker.get(f"/api/sales/items/{item}?at={at_ms}")["quantity"])


def test_every_schema_round_trips_through_the_broker(
    broker: LocalBroker,
    purchase_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
    purchase_batch_codec: AvroCodec,
    registry_dir: Path,
) -> None:
    rng = random.Random(7)
    singles = purchases(rng, clock_ms=lambda: T0)
    envelopes = (
        {"purchases": [next(singles) for _ in range(rng.randrange(1, 20))]} for _ in iter(int, 1)
    )
    standard_posts = (
        {**post, "tenant": raw.brand}
        for raw in social_posts(rng, clock_ms=lambda: T0, brands=("acme",))
        for post in raw.posts
    )
    samples = {
        "purchase.avsc": (purchase_codec, purchases(rng, clock_ms=lambda: T0)),
        "purchase_batch.avsc": (purchase_batch_codec, envelopes),
        "metric_batch.avsc": (metric_batch_codec, metric_batches(rng, clock_ms=lambda: T0)),
        "social_post.avsc": (
            codec_in(registry_dir, "social-raw-value", "social_post"),
            standard_posts,
        ),
        "order.avsc": (
            codec_in(registry_dir, "orders-value", "order", validate_order),
            (order for order, _ in orders(rng, clock_ms=lambda: T0)),
        ),
        "page_view.avsc": (
            codec_in(registry_dir, "page-views-value", "page_view", validate_page_view),
            page_views(rng, clock_ms=lambda: T0, tenants=("acme",)),
        ),
        "location_event.avsc": (
            codec_in(registry_dir, "locations-value", "location_event", validate_location),
            locations(rng, clock_ms=lambda: T0),
        ),
        "coupon_redemption.avsc": (
            codec_in(
                registry_dir, "coupon-redemptions-value", "coupon_redemption", validate_redemption
            ),
            (
                {"coupon_id": f"spring:u{n}", "redeemed_at_ms": T0 + n, "tenant": "acme"}
                for n in itertools.count()
            ),
        ),
    }
    shipped = {
        p.name for p in resources.files("tally.schemas").iterdir() if p.name.endswith(".avsc")
    }
    assert shipped == set(samples), f"schemas without a round-trip sample: {shipped - set(samples)}"
    for name, (codec, records) in samples.items():
        sent = [next(records) for _ in range(50)]
        topic = f"roundtrip-{name}"
        produce(broker.bootstrap, topic, [(None, codec.dumps(r)) for r in sent])
        received = consume(broker.bootstrap, topic, expect=len(sent))
        assert all(schema_id_of(r.value) == codec.schema_id for r in received)
        assert sorted(map(repr, (codec.loads(r.value) for r in received))) == sorted(
            map(repr, sent)
        )


def test_bad_messages_become_dead_letters_and_the_agent_keeps_going(
    broker: LocalBroker, make_worker: WorkerFactory, purchase_codec: AvroCodec
) -> None:
    worker = make_worker().start()
    good = purchase_codec.dumps(purchase("item-1", 2, T0 + 1000))
    unknown_schema = struct.pack(">bI", 0, 999_999) + good[5:]
    bad = {
        "truncated": good[:-3],
        "unknown schema": unknown_schema,
        "not framed": b"hello, world",
        # The codec validates what it decodes, not what it encodes: a bad producer's bytes.
        "negative quantity": purchase_codec.dumps(purchase("item-1", -1, T0)),
    }
    later_good = purchase_codec.dumps(purchase("item-1", 3, T0 + 2000))
    messages = [(b"item-1", good), *((b"item-1", v) for v in bad.values()), (b"item-1", later_good)]
    sent = produce(broker.bootstrap, "purchases", messages)

    wait_until(lambda: item_quantity(worker, "item-1", T0) == 5, 30, what="2 + 3 units counted")
    letters = consume(broker.bootstrap, "dead-letters", expect=len(bad))
    assert len(letters) == len(bad)
    by_offset = {
        DeadLetter.from_headers(headers_of(r)).offset: (r, DeadLetter.from_headers(headers_of(r)))
        for r in letters
    }
    for (label, value), meta in zip(bad.items(), sent[1:-1], strict=True):
        record, letter = by_offset[meta.offset]
        assert record.value == value, f"{label}: dead letter must keep the original bytes"
        assert record.key == b"item-1"
        assert (letter.topic, letter.partition) == ("purchases", meta.partition), label
        assert letter.reason and letter.time_ms > 0, label
    reasons = {label: by_offset[m.offset][1] for label, m in zip(bad, sent[1:-1], strict=True)}
    assert "999999" in reasons["unknown schema"].reason
    assert reasons["unknown schema"].error == "SchemaNotFound"
    assert reasons["not framed"].stage == "decode"
    assert reasons["truncated"].error == "DecodeError"
    assert reasons["negative quantity"].stage == "validate"
    assert reasons["negative quantity"].rule == "out_of_range"
    assert "quantity" in reasons["negative quantity"].reason
    assert worker.process is not None and worker.process.poll() is None, "worker died"
    metrics = worker.text("/metrics")
    assert 'tally_events_total{outcome="rejected",topic="purchases"} 4.0' in metrics
    assert 'tally_events_total{outcome="counted",topic="purchases"} 2.0' in metrics
    assert 'tally_dead_letters_total{destination="dead-letters",rule="schema"} 1.0' in metrics
    # The collector is tuned (TALLY_GC_YOUNG_OBJECTS) and its pauses timed: at least the one
    # full collection made before freezing what the worker had loaded.
    assert 'tally_gc_pause_seconds_count{generation="2"}' in metrics
    assert 'tally_gc_pause_seconds_count{generation="2"} 0.0' not in metrics


def test_restart_recovers_identical_state_through_the_shim(
    broker: LocalBroker, make_worker: WorkerFactory, purchase_codec: AvroCodec
) -> None:
    rng = random.Random(3)
    events = [
        purchase(
            f"item-{rng.randrange(40)}", rng.randrange(1, 5), T0 + rng.randrange(6 * HOUR_MS), n
        )
        for n in range(3000)
    ]
    produce(
        broker.bootstrap,
        "purchases",
        [(e["item_id"].encode(), purchase_codec.dumps(e)) for e in events],
    )
    at = T0 + 6 * HOUR_MS - 1
    expected = {f"item-{i}": 0 for i in range(40)}
    for e in events:
        expected[e["item_id"]] += e["quantity"]

    worker = make_worker().start()
    snapshot = lambda: {item: item_quantity(worker, item, at) for item in expected}  # noqa: E731
    wait_until(lambda: snapshot() == expected, 60, what="all purchases counted")
    assert worker.stop() == 0

    worker.start()
    assert snapshot() == expected
    assert "ConsistencyError" not in worker.log()
    assert "starting with empty tables" not in worker.log()


def test_a_fresh_broker_makes_the_worker_start_clean_and_say_so(
    broker: LocalBroker, make_worker: WorkerFactory, purchase_codec: AvroCodec
) -> None:
    worker = make_worker()
    produce(
        broker.bootstrap,
        "purchases",
        [(b"item-9", purchase_codec.dumps(purchase("item-9", 4, T0)))],
    )
    worker.start()
    wait_until(lambda: item_quantity(worker, "item-9", T0) == 4, 30, what="purchase counted")
    worker.stop()

    broker.stop()  # memory-only: everything is gone, the worker's RocksDB files are not
    broker.start()
    worker.start()
    assert "starting with empty tables" in worker.log()
    assert item_quantity(worker, "item-9", T0) == 0
    assert "ConsistencyError" not in worker.log()


def test_http_registry_client_against_the_worker_and_schema_evolution(
    broker: LocalBroker, make_worker: WorkerFactory, purchase_codec: AvroCodec
) -> None:
    worker = make_worker().start()
    # Credentials in the URL, as Basic auth (a Tally registry takes a token as the password).
    client = HttpSchemaRegistry(
        f"http://token:{ACCESS.operator_token}@127.0.0.1:{worker.port}/registry"
    )
    assert {"purchases-value", "metric-samples-value"} <= set(client.subjects())
    assert client.schema(purchase_codec.schema_id) == load_schema("purchase")  # as registered

    evolved = dict(purchase_codec.kwargs["schema"])
    evolved["fields"] = [*evolved["fields"], {"name": "coupon", "type": "string", "default": ""}]
    newer = AvroCodec(client, "purchases-value", evolved)
    assert newer.schema_id != purchase_codec.schema_id
    assert client.versions("purchases-value")[-1].id == newer.schema_id

    record = {**purchase("item-7", 6, T0), "coupon": "BLACKFRIDAY"}
    produce(broker.bootstrap, "purchases", [(b"item-7", newer.dumps(record))])
    wait_until(
        lambda: item_quantity(worker, "item-7", T0) == 6,
        30,
        what="a newer-schema purchase decoded by schema resolution",
    )
    status, body = worker.get_status("/registry/schemas/ids/12345")
    assert status == 404 and body["error_code"] == 40403
    status, body = worker.get_status("/registry/subjects/nope/versions")
    assert status == 404 and body["error_code"] == 40401
