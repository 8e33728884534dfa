"""The clients people already run, against real workers and the local broker: confluent-kafka
(librdkafka) producers on their default settings, and Confluent's schema-registry client and
Avro serializers against Tally's registry.

librdkafka's default partitioner (CRC32 of the key) places most keys elsewhere than murmur2,
which state and queries follow: those messages are forwarded to their owner and counted there
exactly once, even when a worker is killed mid-send.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec, load_schema
from tally.core.partitioning import partition_for
from tests.conftest import WorkerFactory
from tests.harness import ACCESS, Worker, start_all, wait_until
from tests.load import ITEMS, METRICS, PARTITIONS, SERVERS, agree, kill_after


def registry_client(url: str, token: str = ACCESS.operator_token) -> SchemaRegistryClient:
    """Confluent's client as its users configure it for a registry behind Basic auth (the
    token as the password)."""
    return SchemaRegistryClient(
        {"url": url, "basic.auth.user.info": f"token:{token}"}
    )  # fmt: skip


class ConfluentLoad:
    """Purchases and metric batches from one confluent-kafka `Producer` on its defaults,
    values by its `AvroSerializer` (auto-register off, the subject's latest version), keyed as
    documented; every event whose delivery was reported is remembered for brute force."""

    def __init__(
        self, bootstrap: str, registry_url: str, purchases: AvroCodec, batches: AvroCodec
    ) -> None:
        self.bootstrap = bootstrap
        self.purchase_codec, self.batch_codec = purchases, batches  # to read the topics back
        client = registry_client(registry_url)
        latest = {"auto.register.schemas": False, "use.latest.version": True}
        self.serialize = AvroSerializer(client, conf=latest)
        self.producer = Producer({"bootstrap.servers": bootstrap})
        self.purchases: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.partitions: set[tuple[str, int, str]] = set()  # (topic, partition, key)

    def send(self, purchases: int, batches: int, seconds: float) -> None:
        """`purchases` single purchases and `batches` metric batches (one per server in
        turn), spread evenly over `seconds`, then wait for every delivery report."""
        ticks = max(1, int(seconds * 10))
        sent_purchases = sent_batches = 0
        for tick in range(ticks):
            now = int(time.time() * 1000)
            for n in range(sent_purchases, purchases * (tick + 1) // ticks):
                item = ITEMS[(n * 7 + n // 13) % len(ITEMS)]
                purchase = {
                    "purchase_id": f"c{n}",
                    "item_id": item,
                    "quantity": n % 5 + 1,
                    "unit_price_cents": 100,
                    "event_time_ms": now,
                    "metadata": {},
                }
                self._produce("purchases", item, purchase, [purchase], self.purchases)
                sent_purchases += 1
            for n in range(sent_batches, batches * (tick + 1) // ticks):
                server = SERVERS[n % len(SERVERS)]
                samples = [
                    {"metric_id": metric, "ts_ms": now, "value": float((n * 31 + i) % 97)}
                    for i, metric in enumerate(METRICS)
                ]
                batch = {"server_id": server, "sent_at_ms": now, "samples": samples}
                flat = [{"server_id": server, **s} for s in samples]
                self._produce("metric-samples", server, batch, flat, self.samples)
                sent_batches += 1
            self.producer.poll(0)
            time.sleep(seconds / ticks)
        assert self.producer.flush(60) == 0, "every message delivered"

    def _produce(
        self, topic: str, key: str, value: dict[str, Any], events: list[Any], into: list[Any]
    ) -> None:
        def delivered(error: Any, message: Any) -> None:
            assert error is None, error
            into.extend(events)
            self.partitions.add((topic, message.partition(), key))

        data = self.serialize(value, SerializationContext(topic, MessageField.VALUE))
        self.producer.produce(topic, data, key.encode(), on_delivery=delivered)


def events(worker: Worker, topic: str, outcome: str) -> float:
    """How many events of `topic` this worker counted with `outcome` (Prometheus)."""
    pattern = rf'tally_events_total\{{outcome="{outcome}",topic="{topic}"\}} ([0-9.e+]+)'
    found = re.search(pattern, worker.text("/metrics"))
    return float(found.group(1)) if found else 0.0


def test_a_default_librdkafka_producer_is_counted_exactly_even_when_a_worker_dies(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    purchase_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
) -> None:
    """The two workers share only the broker, the registry too (`topic:`): the serializer asks
    the survivor for the subjects' latest versions, which the workers registered at start."""
    first, second = start_all(
        *(
            make_worker(name, TALLY_STANDBY_REPLICAS="1", TALLY_SCHEMA_REGISTRY="topic:")
            for name in ("w1", "w2")
        )
    )
    load = ConfluentLoad(
        broker.bootstrap, second.url + "/registry", purchase_codec, metric_batch_codec
    )
    started_ms = int(time.time() * 1000)
    sending = threading.Thread(target=load.send, args=(10_000, 1_000, 14.0))
    sending.start()
    failover_s = kill_after(6, first, second, timeout=40)
    sending.join(120)
    assert not sending.is_alive()
    print(f"failover under a librdkafka load: {failover_s:.1f} s")
    assert len(load.purchases) == 10_000 and len(load.samples) == 1_000 * len(METRICS)
    misplaced = {
        (topic, key) for topic, partition, key in load.partitions
        if partition != partition_for(key, PARTITIONS)
    }  # fmt: skip
    assert misplaced, "librdkafka's partitioner placed some keys elsewhere than murmur2"

    agree(second, load, started_ms, timeout=90)
    assert second.get("/api/dead-letters/stats")["total"] == 0, "nothing dead-lettered"
    assert events(second, "purchases", "forwarded") > 0
    assert events(second, "metric-samples", "forwarded") > 0


#: A schema evolving in the ways producers evolve theirs (the registry keeps all of it).
V1 = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "doc": "an order",
    "fields": [{"name": "id", "type": "string"}, {"name": "units", "type": "int"}],
}
V2 = {
    **V1,
    "fields": [
        *V1["fields"],
        {"name": "tag", "type": "string", "default": "none", "doc": "added in v2"},
        {
            "name": "at",
            "type": {"type": "long", "logicalType": "timestamp-millis"},
            "default": 0,
        },
        {
            "name": "price",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
            "default": "\u0000",
        },
    ],
}


def test_confluents_registry_client_and_serializers_against_tallys_registry(
    broker: LocalBroker, make_worker: WorkerFactory
) -> None:
    worker = make_worker().start()
    client = registry_client(worker.url + "/registry")
    # What the worker registered is served as shipped: docs, defaults and all.
    latest = client.get_latest_version("purchases-value")
    assert json.loads(latest.schema.schema_str) == load_schema("purchase")
    assert client.get_schema_types() == ["AVRO"]
    assert client.get_compatibility() == "BACKWARD"

    subject, ctx = "orders-value", SerializationContext("orders", MessageField.VALUE)
    one = client.register_schema(subject, Schema(json.dumps(V1), "AVRO"))
    two = client.register_schema(subject, Schema(json.dumps(V2), "AVRO"))
    assert one != two and client.get_versions(subject) == [1, 2]
    assert client.lookup_schema(subject, Schema(json.dumps(V1), "AVRO")).version == 1
    assert json.loads(client.get_schema(two).schema_str) == V2
    assert [(v.subject, v.version) for v in client.get_schema_versions(two)] == [(subject, 2)]
    assert client.get_subjects_by_schema_id(one) == [subject]

    # Old and new records, read both ways.
    old_writer = AvroSerializer(client, json.dumps(V1), conf={"auto.register.schemas": False})
    new_writer = AvroSerializer(
        client, conf={"auto.register.schemas": False, "use.latest.version": True}
    )
    old = {"id": "o1", "units": 3}
    new = {
        "id": "o2",
        "units": 4,
        "tag": "gift",
        "at": datetime(2026, 12, 3, 10, 0, tzinfo=UTC),
        "price": Decimal("19.99"),
    }
    old_bytes, new_bytes = old_writer(old, ctx), new_writer(new, ctx)
    as_written = AvroDeserializer(client)
    assert as_written(new_bytes, ctx) == new
    assert as_written(old_bytes, ctx) == old
    assert AvroDeserializer(client, json.dumps(V1))(new_bytes, ctx) == {"id": "o2", "units": 4}
    read_as_v2 = AvroDeserializer(client, json.dumps(V2))(old_bytes, ctx)
    assert {k: read_as_v2[k] for k in ("id", "units", "tag")} == {**old, "tag": "none"}

    # Incompatible changes are refused at the subject's level, with the reason.
    units_as_text = {**V2, "fields": [V1["fields"][0], {"name": "units", "type": "string"}]}
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(json.dumps(units_as_text), "AVRO"))
    assert (refused.value.http_status_code, refused.value.error_code) == (409, 409)
    assert "units" in refused.value.error_message
    assert not client.test_compatibility(subject, Schema(json.dumps(units_as_text), "AVRO"))
    client.set_compatibility(subject, "NONE")
    assert client.get_compatibility(subject) == "NONE"
    client.register_schema(subject, Schema(json.dumps(units_as_text), "AVRO"))
    assert client.get_versions(subject) == [1, 2, 3]

    # Soft and hard deletes.
    assert client.delete_version(subject, 3) == 3
    assert client.delete_version(subject, 3, permanent=True) == 3
    assert client.get_versions(subject) == [1, 2]
    assert client.delete_subject(subject) == [1, 2]
    assert subject not in client.get_subjects()
    assert client.delete_subject(subject, permanent=True) == [1, 2]
    with pytest.raises(SchemaRegistryError) as missing:
        registry_client(worker.url + "/registry").get_latest_version(subject)
    assert missing.value.error_code == 40401

    # A producer's token (scope ingest) on the serializer's defaults (auto.register.schemas):
    # "registering" a schema the subject holds gives its id; a new one needs an admin token.
    producer_client = SchemaRegistryClient(
        {"url": worker.url + "/registry", "bearer.auth.credentials.source": "STATIC_TOKEN",
         "bearer.auth.token": ACCESS.token("default", ["ingest"]),
         "bearer.auth.logical.cluster": "-", "bearer.auth.identity.pool.id": "-"}
    )  # fmt: skip
    on_defaults = AvroSerializer(producer_client, json.dumps(load_schema("purchase")))
    purchase = {"purchase_id": "p1", "item_id": "i1", "quantity": 1, "unit_price_cents": 5,
                "event_time_ms": 1, "metadata": {}}  # fmt: skip
    written = on_defaults(purchase, SerializationContext("purchases", MessageField.VALUE))
    assert written is not None and written[0] == 0  # the wire format's magic byte
    with pytest.raises(SchemaRegistryError) as refused:
        producer_client.register_schema("orders-value", Schema(json.dumps(V1), "AVRO"))
    assert (refused.value.http_status_code, refused.value.error_code) == (403, 40301)
    assert "admin" in refused.value.error_message
    with pytest.raises(SchemaRegistryError) as anonymous:
        SchemaRegistryClient({"url": worker.url + "/registry"}).get_subjects()
    assert anonymous.value.http_status_code == 401


def test_tallys_outputs_read_with_confluents_deserializer(
    broker: LocalBroker, make_worker: WorkerFactory
) -> None:
    """Purchases from a default librdkafka producer; the late ones come back on `late-events`
    as they were sent, readable by Confluent's AvroDeserializer."""
    worker = make_worker().start()
    client = registry_client(worker.url + "/registry")
    serialize = AvroSerializer(
        client, conf={"auto.register.schemas": False, "use.latest.version": True}
    )
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    now = int(time.time() * 1000)
    item = next(i for i in ITEMS if partition_for(i, PARTITIONS) == 2)

    def purchase(n: int, at_ms: int) -> dict[str, Any]:
        return {
            "purchase_id": f"x{n}",
            "item_id": item,
            "quantity": 1,
            "unit_price_cents": 5,
            "event_time_ms": at_ms,
            "metadata": {"n": str(n)},
            "tenant": "default",
            "customer_id": "",
        }

    ctx = SerializationContext("purchases", MessageField.VALUE)
    producer.produce("purchases", serialize(purchase(0, now), ctx), item.encode())
    producer.flush(30)
    # Late is judged by the owner's watermark: it has one once every partition announced its
    # own (runtime.routing), a second or so after the first purchase.
    wait_until(
        lambda: (
            (answer := worker.get(f"/api/sales/items/{item}"))["quantity"] == 1
            and answer["watermark"] is not None
        ),
        30,
        what="counted, with a watermark",
    )
    late = [purchase(n, now - 3 * 86_400_000) for n in range(1, 4)]
    for record in late:
        producer.produce("purchases", serialize(record, ctx), item.encode())
    producer.flush(30)
    wait_until(lambda: events(worker, "purchases", "late") == len(late), 30, what="set aside")

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "reader",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe(["late-events"])
    deserialize = AvroDeserializer(client)
    read: list[dict[str, Any]] = []
    deadline = time.monotonic() + 40
    while len(read) < len(late) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            value = message.value()
            read.append(deserialize(value, SerializationContext("late-events", MessageField.VALUE)))
    consumer.close()
    assert sorted(read, key=lambda r: r["purchase_id"]) == late
    assert worker.get(f"/api/sales/items/{item}")["quantity"] == 1
