"""Every topic Tally reads or writes, and the codecs of their values: the data flow in one file.

Topic values are declared raw: agents decode them with the codec themselves, so that one bad
message becomes a dead letter instead of an exception inside Faust's stream machinery.
"""

from __future__ import annotations

from functools import cache

from tally.app import SOURCE_TOPICS, app, settings
from tally.codecs.avro import (
    AvroCodec,
    RecordTypeCodec,
    load_schema,
    validate_metric_batch,
    validate_purchase,
)
from tally.codecs.registry import SchemaRegistry, open_registry

#: Purchases, Avro `tally.sales.Purchase`, keyed by item id.
purchases = app.topic(SOURCE_TOPICS[0], key_type=bytes, value_type=bytes)
#: Metric batches, Avro `tally.metrics.MetricBatch` (one server, many samples), keyed by server id.
metric_samples = app.topic(SOURCE_TOPICS[1], key_type=bytes, value_type=bytes)
#: Rejected messages: original key and bytes, reason and origin in `tally.dlq.*` headers.
dead_letters = app.topic("dead-letters", key_type=bytes, value_type=bytes)

#: Events that arrived after their window closed: the event's bytes, why in the same headers.
late_events = app.topic("late-events", key_type=bytes, value_type=bytes)


@cache
def registry() -> SchemaRegistry:
    return open_registry(settings.registry_url)


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


@app.task
async def register_schemas() -> None:
    """Register every schema this worker reads at start, before any message arrives."""
    purchases_topic_codec()
    metric_batch_codec()
