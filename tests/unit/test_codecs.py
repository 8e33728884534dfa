"""Confluent framing, schema resolution, registries and validation, without a broker."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.codecs.avro import (
    AvroCodec,
    load_schema,
    schema_id_of,
    validate_metric_batch,
    validate_metric_sample,
    validate_purchase,
)
from tally.codecs.registry import FileSchemaRegistry, deterministic_id, open_registry
from tally.core.errors import (
    ConfigurationError,
    DecodeError,
    SchemaError,
    UnknownSchemaError,
    ValidationError,
)

PURCHASE = {
    "purchase_id": "p1",
    "item_id": "item-1",
    "quantity": 2,
    "unit_price_cents": 1999,
    "event_time_ms": 1_790_000_000_000,
    "metadata": {"channel": "web"},
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


def test_ids_are_deterministic_across_registries(tmp_path: Path) -> None:
    schema = load_schema("purchase")
    a = FileSchemaRegistry(tmp_path / "a").register("s", schema)
    b = FileSchemaRegistry(tmp_path / "b").register("other-subject", schema)
    assert a == b == deterministic_id(schema)
    assert deterministic_id(load_schema("metric_batch")) != a


def test_registry_versions_and_subjects(tmp_path: Path) -> None:
    registry = FileSchemaRegistry(tmp_path)
    first = registry.register("purchases-value", load_schema("purchase"))
    assert registry.register("purchases-value", load_schema("purchase")) == first
    evolved = {
        **load_schema("purchase"),
        "fields": [*load_schema("purchase")["fields"], {"name": "x", "type": "int", "default": 0}],
    }
    second = registry.register("purchases-value", evolved)
    assert registry.versions("purchases-value") == [first, second]
    assert registry.subjects() == ["purchases-value"]
    assert FileSchemaRegistry(tmp_path).schema(second)["fields"][-1]["name"] == "x"
    with pytest.raises(UnknownSchemaError):
        registry.schema(1)


def test_a_colliding_id_is_refused(tmp_path: Path) -> None:
    registry = FileSchemaRegistry(tmp_path)
    schema_id = registry.register("a", load_schema("purchase"))
    (tmp_path / "ids" / f"{schema_id}.avsc").write_text('"string"')
    with pytest.raises(SchemaError, match="collides"):
        registry.register("a", load_schema("purchase"))


def test_open_registry_by_url(tmp_path: Path) -> None:
    assert isinstance(open_registry(tmp_path.as_uri()), FileSchemaRegistry)
    with pytest.raises(ConfigurationError, match="file:///path"):
        open_registry("ftp://somewhere")


def test_old_writer_schema_is_resolved_to_the_current_reader(tmp_path: Path) -> None:
    registry = FileSchemaRegistry(tmp_path)
    old_schema = {**load_schema("purchase"), "fields": load_schema("purchase")["fields"][:-1]}
    old = AvroCodec(registry, "purchases-value", old_schema)
    current = AvroCodec(registry, "purchases-value", load_schema("purchase"))
    record = {k: v for k, v in PURCHASE.items() if k != "metadata"}
    assert current.loads(old.dumps(record)) == {**record, "metadata": {}}


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
        validate_metric_batch({"server_id": server, "sent_at_ms": 0, "samples": []})
    with pytest.raises(ValidationError, match="metric_id"):
        validate_metric_sample({"metric_id": server, "ts_ms": 0, "value": 1.0})


def test_a_record_that_does_not_fit_is_a_validation_error(codec: AvroCodec) -> None:
    with pytest.raises(ValidationError, match="does not fit"):
        codec.dumps({**PURCHASE, "quantity": "two"})


def test_subject_files_of_an_earlier_version_are_read_in_the_current_layout(
    tmp_path: Path,
) -> None:
    schema = load_schema("purchase")
    schema_id = FileSchemaRegistry(tmp_path).register("purchases-value", schema)
    for path in (tmp_path / "subjects").glob("*.json"):  # as an earlier version wrote them
        path.unlink()
    (tmp_path / "subjects" / "purchases-value.json").write_text(json.dumps([schema_id]))
    (tmp_path / "subjects" / "a%2Fb.json").write_text(json.dumps([schema_id]))
    upgraded = FileSchemaRegistry(tmp_path)
    assert upgraded.subjects() == ["a/b", "purchases-value"]
    assert upgraded.versions("purchases-value") == [schema_id]
    long_subject = "s" * 255  # too long to be a file name quoted; fine as a digest
    assert upgraded.register(long_subject, schema) == schema_id
    assert upgraded.versions(long_subject) == [schema_id]
