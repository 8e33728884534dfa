"""Confluent framing, schema resolution, registries and validation, without a broker."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.codecs.avro import (
    AvroCodec,
    RecordTypeCodec,
    load_schema,
    schema_id_of,
    validate_metric_batch,
    validate_metric_sample,
    validate_purchase,
)
from tally.codecs.catalog import open_registry
from tally.codecs.handover import HandedRecords
from tally.codecs.registry import FileSchemaRegistry, HttpSchemaRegistry
from tally.core.errors import (
    ConfigurationError,
    DecodeError,
    UnknownSchemaError,
    ValidationError,
)
from tally.settings import Settings

PURCHASE = {
    "purchase_id": "p1",
    "item_id": "item-1",
    "quantity": 2,
    "unit_price_cents": 1999,
    "event_time_ms": 1_790_000_000_000,
    "metadata": {"channel": "web"},
    "tenant": "",
    "customer_id": "",
}


@pytest.fixture
def codec(tmp_path: Path) -> AvroCodec:
    return AvroCodec(
        FileSchemaRegistry(tmp_path), "purchases-value", load_schema("purchase"), validate_purchase
    )


def test_confluent_framing(codec: AvroCodec) -> None:
    data = codec.dumps(PURCHASE)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == codec.schema_id == schema_id_of(data)
    assert codec.loads(data) == PURCHASE


def test_open_registry_by_url(tmp_path: Path) -> None:
    def opened(url: str) -> object:
        return open_registry(Settings.from_env({"TALLY_SCHEMA_REGISTRY": url}))

    assert isinstance(opened(tmp_path.as_uri()), FileSchemaRegistry)
    assert isinstance(opened("http://registry:8081"), HttpSchemaRegistry)
    with pytest.raises(ConfigurationError, match="file:///path"):
        opened("ftp://somewhere")


def test_old_writer_schema_is_resolved_to_the_current_reader(tmp_path: Path) -> None:
    """Records written before the schema gained `metadata`, `tenant` and `customer_id` decode
    with their defaults: the registry took the new version as BACKWARD compatible."""
    registry = FileSchemaRegistry(tmp_path)
    newer = ("metadata", "tenant", "customer_id")
    old_schema = {
        **load_schema("purchase"),
        "fields": [f for f in load_schema("purchase")["fields"] if f["name"] not in newer],
    }
    old = AvroCodec(registry, "purchases-value", old_schema)
    current = AvroCodec(registry, "purchases-value", load_schema("purchase"))
    assert [v.version for v in registry.versions("purchases-value")] == [1, 2]
    record = {k: v for k, v in PURCHASE.items() if k not in newer}
    defaults = {"metadata": {}, "tenant": "", "customer_id": ""}
    assert current.loads(old.dumps(record)) == {**record, **defaults}


@pytest.mark.parametrize("tenant", ["a|b", "-acme", "x" * 65, "ac me", "*"])
def test_a_record_naming_no_usable_tenant_is_refused(tenant: str) -> None:
    for usable in ("", "default", "acme", "acme-2.eu_west"):
        validate_purchase({**PURCHASE, "tenant": usable})
    with pytest.raises(ValidationError, match="is not a tenant name") as refused:
        validate_purchase({**PURCHASE, "tenant": tenant})
    assert refused.value.rule == "bad_tenant"


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (b"", DecodeError, "too short"),
        (b"\x01\x00\x00\x00\x01abc", DecodeError, "magic byte"),
        (b"\x00\x00\x00\x00\x07abc", UnknownSchemaError, "7"),
        (None, DecodeError, "no value"),
    ],
)
def test_unframed_and_unknown_messages(
    codec: AvroCodec, data: bytes, error: type, text: str
) -> None:
    with pytest.raises(error, match=text):
        codec.loads(data)


def test_a_topic_of_several_record_types_decodes_each_by_its_writer_s_name(
    tmp_path: Path,
) -> None:
    class CountingRegistry(FileSchemaRegistry):
        asked = 0

        def schema(self, schema_id: int) -> Any:
            CountingRegistry.asked += 1
            return super().schema(schema_id)

    registry = CountingRegistry(tmp_path)
    batches = AvroCodec(registry, "tally.sales.PurchaseBatch", load_schema("purchase_batch"))
    single = AvroCodec(registry, "purchases-value", load_schema("purchase"), validate_purchase)
    topic = RecordTypeCodec(single, batches)
    envelope = {"purchases": [PURCHASE, PURCHASE]}
    for _ in range(3):
        assert topic.loads(single.dumps(PURCHASE)) == ("tally.sales.Purchase", PURCHASE)
        assert topic.loads(batches.dumps(envelope))[1]["purchases"] == [PURCHASE, PURCHASE]
    assert CountingRegistry.asked == 2  # once per writer schema id, not once per message
    metrics = AvroCodec(registry, "metric-samples-value", load_schema("metric_batch"))
    sample = {"metric_id": "cpu", "ts_ms": 1, "value": 0.5}
    other = metrics.dumps({"server_id": "s", "sent_at_ms": 1, "tenant": "", "samples": [sample]})
    with pytest.raises(DecodeError, match="is not accepted here"):
        topic.loads(other)


def test_trailing_bytes_are_corruption(codec: AvroCodec) -> None:
    with pytest.raises(DecodeError, match="trailing"):
        codec.loads(codec.dumps(PURCHASE) + b"\x00")


@given(st.binary(max_size=64))
def test_any_body_either_decodes_or_raises_decode_error(
    tmp_path_factory: pytest.TempPathFactory, body: bytes
) -> None:
    codec = AvroCodec(
        FileSchemaRegistry(tmp_path_factory.getbasetemp() / "fuzz"), "p", load_schema("purchase")
    )
    try:
        record = codec.loads(struct.pack(">bI", 0, codec.schema_id) + body)
    except DecodeError:
        return
    assert set(record) == set(PURCHASE)


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"quantity": 0}, "quantity"),
        ({"quantity": -3}, "quantity"),
        ({"unit_price_cents": -1}, "unit_price"),
        ({"item_id": ""}, "item_id"),
    ],
)
def test_purchase_rules(change: dict, text: str) -> None:
    with pytest.raises(ValidationError, match=text):
        validate_purchase({**PURCHASE, **change})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_metric_values_must_be_finite(value: float) -> None:
    with pytest.raises(ValidationError, match="value must be finite"):
        validate_metric_sample({"metric_id": "cpu", "ts_ms": 0, "value": value})
    validate_metric_sample({"metric_id": "cpu", "ts_ms": 0, "value": -1.5})


@pytest.mark.parametrize("server", ["", "a|b"])
def test_ids_must_be_usable_in_keys(server: str) -> None:
    with pytest.raises(ValidationError, match="server_id"):
        validate_metric_batch({"server_id": server, "sent_at_ms": 0, "samples": [], "tenant": ""})
    with pytest.raises(ValidationError, match="metric_id"):
        validate_metric_sample({"metric_id": server, "ts_ms": 0, "value": 1.0})


def test_a_record_that_does_not_fit_is_a_validation_error(codec: AvroCodec) -> None:
    with pytest.raises(ValidationError, match="does not fit"):
        codec.dumps({**PURCHASE, "quantity": "two"})


HANDED = HandedRecords("purchases", [field["name"] for field in load_schema("purchase")["fields"]])


def test_handed_records_come_back_as_the_avro_records_they_were(codec: AvroCodec) -> None:
    records = [codec.loads(codec.dumps({**PURCHASE, "purchase_id": f"p{n}"})) for n in range(3)]
    assert HANDED.loads(HANDED.dumps(records)) == records
    assert HANDED.loads(HANDED.dumps([])) == []


@given(st.binary(max_size=64))
def test_any_handed_body_either_decodes_or_raises_decode_error(body: bytes) -> None:
    try:
        records = HANDED.loads(body)
    except DecodeError:
        return
    assert all(set(record) == set(PURCHASE) for record in records)


def test_handed_records_of_another_version_read_by_name(codec: AvroCodec) -> None:
    record = codec.loads(codec.dumps(PURCHASE))
    newer = HandedRecords("purchases", ["added", *reversed(HANDED.fields)])
    assert HANDED.loads(newer.dumps([{**record, "added": 1}])) == [record]
    older = HandedRecords("purchases", HANDED.fields[:-1])
    with pytest.raises(DecodeError, match="purchases without customer_id"):
        HANDED.loads(older.dumps([record]))


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (None, "no value"),
        (b"{", "not JSON purchases"),
        (b"[[1, 2]]", "'fields'"),
        (b'{"fields": ["a"], "rows": [[1, 2]]}', "every row must hold 1 values"),
    ],
)
def test_a_handed_body_of_another_shape_is_a_decode_error(body: bytes | None, text: str) -> None:
    with pytest.raises(DecodeError, match=text):
        HANDED.loads(body)


@given(st.lists(st.tuples(st.integers(0, 5), st.text(max_size=300)), max_size=60))
def test_a_handover_is_cut_between_messages_and_each_part_names_its_last(
    drawn: list[tuple[int, str]],
) -> None:
    """Records of several messages (offset order) cut into messages of a byte limit: nothing
    lost or reordered, a message's records never split, no two parts with one origin, each
    under the limit unless one message's records alone are larger."""
    handed = HandedRecords("notes", ["n", "text"])
    offsets = sorted(offset for offset, _ in drawn)
    carried = [
        (offset, {"n": n, "text": text})
        for n, (offset, (_, text)) in enumerate(zip(offsets, drawn, strict=True))
    ]
    limit = 700
    parts = handed.messages(carried, limit)
    assert [r for _, message in parts for r in handed.loads(message)] == [r for _, r in carried]
    origins = [origin for origin, _ in parts]
    assert origins == sorted(set(origins))
    for origin, message in parts:
        records = handed.loads(message)
        held = {offset for offset, r in carried if r in records}
        assert max(held) == origin
        alone = sum(1 for offset, _ in carried if offset == origin) == len(records)
        assert len(message) <= limit or alone
