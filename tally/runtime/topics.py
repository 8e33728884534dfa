"""The Faust topics every pipeline shares (names in `tally.topics`; a pipeline's own topics are
in its `tables` module). Values are Avro (`tally.codecs.catalog`).

Topic values are declared raw: agents decode them with the codec themselves, so that one bad
message becomes a dead letter instead of an exception inside Faust's stream machinery.
"""

from __future__ import annotations

from faust.types import TopicT

from tally.app import app, settings
from tally.codecs.catalog import metric_batch_codec, purchases_topic_codec
from tally.topics import DEAD_LETTERS, LATE_EVENTS, METRIC_SAMPLES, PURCHASES, ROUTED

#: Purchases, Avro `tally.sales.Purchase`, keyed by item id.
purchases = app.topic(PURCHASES, key_type=bytes, value_type=bytes)
#: Metric batches, Avro `tally.metrics.MetricBatch` (one server, many samples), keyed by server id.
metric_samples = app.topic(METRIC_SAMPLES, key_type=bytes, value_type=bytes)


def routed(source: str) -> TopicT:
    """Where messages of `source` that came on another partition than their key's go: as many
    partitions as `source` (so partition n of both is owned by one worker), one per generation."""
    return app.topic(
        settings.generation_topic(ROUTED[source]),
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
    )


routed_purchases = routed(PURCHASES)
routed_metric_samples = routed(METRIC_SAMPLES)


def with_routed(source: TopicT, forwarded: TopicT) -> TopicT:
    """What a pipeline reads: its source topic and the messages forwarded to its partitions."""
    return app.topic(
        source.get_topic_name(), forwarded.get_topic_name(), key_type=bytes, value_type=bytes
    )


#: Rejected messages: original key and bytes, reason and origin in `tally.dlq.*` headers.
dead_letters = app.topic(DEAD_LETTERS, key_type=bytes, value_type=bytes)

#: Events that arrived after their window closed: the event's bytes, why in the same headers.
late_events = app.topic(LATE_EVENTS, key_type=bytes, value_type=bytes)


@app.task
async def register_schemas() -> None:
    """Register every schema this worker reads at start, before any message arrives."""
    purchases_topic_codec()
    metric_batch_codec()
