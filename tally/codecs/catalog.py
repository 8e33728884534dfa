"""The codecs of Tally's shipped schemas, over the deployment's schema registry: what producers,
agents and the ingest tier encode and decode with. No Faust: the stateless ingest tier and the
tools use it without building the app.
"""

from __future__ import annotations

from functools import cache

from tally.codecs.avro import (
    AvroCodec,
    RecordTypeCodec,
    load_schema,
    validate_metric_batch,
    validate_purchase,
)
from tally.codecs.registry import SchemaRegistry, open_registry
from tally.settings import current_settings


@cache
def registry() -> SchemaRegistry:
    return open_registry(current_settings().registry_url)


@cache
def purchase_codec() -> AvroCodec:
    return AvroCodec(registry(), "purchases-value", load_schema("purchase"), validate_purchase)


@cache
def purchase_batch_codec() -> AvroCodec:
    return AvroCodec(registry(), "tally.sales.PurchaseBatch", load_schema("purchase_batch"))


@cache
def purchases_topic_codec() -> RecordTypeCodec:
    """`purchases` carries single purchases and envelopes (record-name subjects)."""
    return RecordTypeCodec(purchase_codec(), purchase_batch_codec())


@cache
def metric_batch_codec() -> AvroCodec:
    return AvroCodec(
        registry(), "metric-samples-value", load_schema("metric_batch"), validate_metric_batch
    )
