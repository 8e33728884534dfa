"""Avro in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.

`AvroCodec` is a Faust codec (usable as a topic's value_serializer and by `tally send`) and the
one decoder agents use on raw bytes, so producers and consumers share one piece of code.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from faust.serializers.codecs import Codec

from tally.codecs.registry import Schema, SchemaRegistry
from tally.core.errors import DecodeError, SchemaError, TallyError, ValidationError
from tally.core.fraud import check_order
from tally.core.limits import check_id, check_metadata
from tally.core.tenancy import check_tenant_name

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")

Record = dict[str, Any]


def _shipped() -> dict[str, Schema]:
    """Every shipped schema by full name ("tally.sales.Purchase")."""
    found = {}
    for entry in resources.files("tally.schemas").iterdir():
        if entry.name.endswith(".avsc"):
            schema = json.loads(entry.read_text())
            found[full_name(schema)] = schema
    return found


def full_name(schema: Schema) -> str:
    name = str(schema["name"])
    return name if "." in name or not schema.get("namespace") else f"{schema['namespace']}.{name}"


@cache
def load_schema(name: str) -> Schema:
    """A schema shipped in `tally/schemas/<name>.avsc`, self-contained: a reference to another
    shipped record (by full name) is replaced by its definition at its first use."""
    text = resources.files("tally.schemas").joinpath(f"{name}.avsc").read_text()
    shipped = _shipped()
    defined: set[str] = set()

    def inline(node: Any) -> Any:
        if isinstance(node, str) and node in shipped and node not in defined:
            defined.add(node)
            return inline(shipped[node])
        if isinstance(node, dict):
            if node.get("type") == "record":
                defined.add(full_name(node))
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return dict(inline(json.loads(text)))


def schema_id_of(data: bytes) -> int:
    """The schema id of a Confluent-framed message; `DecodeError` if it is not framed."""
    if len(data) < HEADER.size:
        raise DecodeError(f"message of {len(data)} bytes is too short for Confluent framing")
    magic, schema_id = HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise DecodeError(f"first byte is {data[0]:#04x}, not the Confluent magic byte 0x00")
    return int(schema_id)


def read_record(data: bytes, schema_id: int, writer: Any, reader: Any) -> Record:
    """The Avro body of a framed message, written with the parsed `writer` schema (of id
    `schema_id`) and resolved to `reader` (None: read as written); `DecodeError` says why not.
    Faust-free, so a second process reads messages the same way (runtime.offload)."""
    buffer = BytesIO(data)
    buffer.seek(HEADER.size)
    try:
        record = schemaless_reader(buffer, writer, reader)
    except Exception as exc:  # fastavro raises many types on corrupt bytes
        raise DecodeError(
            f"Avro body does not decode with schema id {schema_id}: {type(exc).__name__}: {exc}"
        ) from exc
    if buffer.tell() != len(data):
        raise DecodeError(
            f"{len(data) - buffer.tell()} trailing bytes after the Avro record "
            f"(schema id {schema_id})"
        )
    if not isinstance(record, dict):
        raise DecodeError(f"schema id {schema_id} is not a record schema")
    return record


class AvroCodec(Codec):
    """Encodes records with one reader/writer schema; decodes any registered writer schema.

    A message written with an older or newer registered schema is resolved to ours by Avro's
    schema-resolution rules, so producers and workers can be upgraded one at a time.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        subject: str,
        schema: Schema,
        validate: Callable[[Record], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            registry=registry, subject=subject, schema=schema, validate=validate, **kwargs
        )
        self.registry = registry
        self.subject = subject
        self.schema = schema
        self.parsed = parse_schema(schema)
        self.schema_id = registry.register(subject, schema)
        self.validate = validate
        self._writers: dict[int, Any] = {self.schema_id: self.parsed}

    def _dumps(self, obj: Any) -> bytes:
        buffer = BytesIO()
        buffer.write(HEADER.pack(MAGIC_BYTE, self.schema_id))
        try:
            schemaless_writer(buffer, self.parsed, obj)
        except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
            raise ValidationError(
                f"record does not fit {self.subject}: {exc}", "wrong_type"
            ) from exc
        return buffer.getvalue()

    def _loads(self, s: bytes) -> Record:
        if not isinstance(s, bytes | bytearray):
            raise DecodeError("message has no value")
        schema_id = schema_id_of(s)
        record = read_record(s, schema_id, self._writer(schema_id), self.reader_for(schema_id))
        if self.validate is not None:
            try:
                self.validate(record)
            except ValidationError as exc:
                exc.record = record
                raise
        return record

    def reader_for(self, schema_id: int) -> Any:
        """The schema a message written with `schema_id` is resolved to (None: its own)."""
        return None if schema_id == self.schema_id else self.parsed

    def readings_of(self, messages: Iterable[object]) -> dict[int, tuple[Any, Any]]:
        """How `read_record` reads `messages` elsewhere (as in another process): the parsed
        (writer, reader) schemas by writer schema id; messages not framed, or of an unknown
        id, are left out (they fail where they are decoded, with their reason)."""
        readings = {}
        for message in messages:
            try:
                if isinstance(message, bytes) and (found := schema_id_of(message)) not in readings:
                    readings[found] = (self._writer(found), self.reader_for(found))
            except TallyError:
                continue
        return readings

    def _writer(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is None:
            schema = self.registry.schema(schema_id)
            try:
                writer = parse_schema(schema)
            except Exception as exc:  # a registered schema fastavro cannot parse
                raise SchemaError(f"schema id {schema_id} is not usable Avro: {exc}") from exc
            self._writers[schema_id] = writer
        return writer


class RecordTypeCodec:
    """Decodes a topic that carries several record types, choosing by the writer's name.

    `purchases` takes single `Purchase` messages and `PurchaseBatch` envelopes alike.
    """

    def __init__(self, *codecs: AvroCodec) -> None:
        self.by_name = {full_name(codec.schema): codec for codec in codecs}
        self.registry = codecs[0].registry
        #: Writer schema id → its record's name. An id always names one schema, so this is
        #: asked of the registry (and its JSON parsed) once per id, not once per message.
        self._names: dict[int, str] = {}

    def loads(self, data: bytes) -> tuple[str, Record]:
        if not isinstance(data, bytes | bytearray):
            raise DecodeError("message has no value")
        schema_id = schema_id_of(data)
        name = self._names.get(schema_id)
        if name is None:
            schema = self.registry.schema(schema_id)
            name = full_name(schema) if isinstance(schema, dict) and "name" in schema else "?"
            self._names[schema_id] = name
        codec = self.by_name.get(name)
        if codec is None:
            raise DecodeError(
                f"record type {name!r} is not accepted here; expected one of "
                f"{', '.join(sorted(self.by_name))}"
            )
        return name, codec.loads(data)


def validate_purchase(record: Record) -> None:
    """Rules of a purchase the Avro types cannot say (tally.core.limits: ids, metadata, and
    the tenant's name)."""
    if record["quantity"] <= 0:
        raise ValidationError(f"quantity must be > 0, got {record['quantity']}", "out_of_range")
    if record["unit_price_cents"] < 0:
        raise ValidationError(
            f"unit_price_cents must be >= 0, got {record['unit_price_cents']}", "out_of_range"
        )
    check_id("item_id", record["item_id"])
    check_id("purchase_id", record["purchase_id"])
    if record["customer_id"]:
        check_id("customer_id", record["customer_id"])
    check_metadata(record["metadata"])
    check_tenant_name(record["tenant"])


def validate_order(record: Record) -> None:
    """Rules of an order the Avro types cannot say: ids usable in keys, a positive amount,
    an address, the tenant's name."""
    for name in ("order_id", "customer_id", "card_id", "device_id"):
        check_id(name, record[name])
    check_order(record)
    check_tenant_name(record["tenant"])


def validate_page_view(record: Record) -> None:
    """Ids usable in keys, and the tenant's name."""
    check_id("session_id", record["session_id"])
    check_id("item_id", record["item_id"])
    check_tenant_name(record["tenant"])


def validate_location(record: Record) -> None:
    """An id usable in keys, and the tenant's name (the coordinates: core.coupons.cell_of)."""
    check_id("user_id", record["user_id"])
    check_tenant_name(record["tenant"])


def validate_redemption(record: Record) -> None:
    check_id("coupon_id", record["coupon_id"])
    check_tenant_name(record["tenant"])


def validate_metric_batch(record: Record) -> None:
    """Rules of a metric batch the Avro types cannot say (the batch as a whole)."""
    check_id("server_id", record["server_id"])
    check_tenant_name(record["tenant"])


def validate_metric_sample(sample: Record) -> None:
    """Rules of one sample: finite value, usable metric id. A bad sample is rejected alone."""
    if not math.isfinite(sample["value"]):
        raise ValidationError(f"value must be finite, got {sample['value']}", "not_finite")
    check_id("metric_id", sample["metric_id"])


def check_event_time(
    name: str, ts_ms: int, wall_ms: int, max_future_ms: int, max_age_ms: int | None = None
) -> None:
    """An event time must be after 1970, not far ahead of this clock, and (where the caller
    bounds it) not older than `max_age_ms`: seconds for milliseconds is the usual mistake."""
    if ts_ms <= 0:
        raise ValidationError(f"{name}={ts_ms} is not a time (ms since 1970 expected)", "bad_time")
    if ts_ms > wall_ms + max_future_ms:
        raise ValidationError(
            f"{name}={ts_ms} is {(ts_ms - wall_ms) / 1000:.0f} s in the future "
            f"(more than {max_future_ms / 1000:.0f} s): a wrong clock or unit?",
            "bad_time",
        )
    if max_age_ms is not None and ts_ms < wall_ms - max_age_ms:
        raise ValidationError(
            f"{name}={ts_ms} is {(wall_ms - ts_ms) / 3_600_000:.1f} hours old (more than "
            f"{max_age_ms / 3_600_000:g}): a wrong clock or unit?",
            "bad_time",
        )
