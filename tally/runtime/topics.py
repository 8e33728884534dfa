"""The Faust topics every pipeline shares (names in `tally.topics`; a pipeline's own topics are
in its `tables` module). Values are Avro (`tally.codecs.catalog`).

Topic values are declared raw: agents decode them with the codec themselves, so that one bad
message becomes a dead letter instead of an exception inside Faust's stream machinery.
"""

from __future__ import annotations

from typing import Any

from faust.types import TopicT

from tally.app import app, settings
from tally.codecs.catalog import metric_batch_codec, purchases_topic_codec
from tally.topics import DEAD_LETTERS, LATE_EVENTS, METRIC_SAMPLES, PURCHASES, ROUTED

#: Purchases, Avro `tally.sales.Purchase`, keyed by item id.
purchases = app.topic(PURCHASES, key_type=bytes, value_type=bytes)
#: Metric batches, Avro `tally.metrics.MetricBatch` (one server, many samples), keyed by server id.
metric_samples = app.topic(METRIC_SAMPLES, key_type=bytes, value_type=bytes)


#: Handover messages (a batch's records for one partition, up to HANDOVER_MAX_BYTES each) a
#: stage buffers ahead of its agent: Faust's default (stream_buffer_maxsize, 4,096 messages)
#: would let a backlog fill gigabytes before it stops fetching. Its agent's batches take a
#: quarter of that (intake.each_partition).
HANDOVER_BUFFER = 64


def internal_topic(
    name: str, partitions: int | None = None, maxsize: int | None = None, **options: Any
) -> TopicT:
    """A topic one generation writes and reads for itself (`Settings.generation_topic`),
    bytes-keyed, with the source topics' partition count unless told (so partition n of it
    and of the sources is owned by one worker); `maxsize`: the messages its agent's stream
    buffers (Faust's App.topic drops the argument: set on the topic, which its clones keep,
    faust_compat.honour_topic_maxsize)."""
    topic = app.topic(
        settings.generation_topic(name),
        partitions=partitions or settings.partitions,
        key_type=bytes,
        **options,
    )
    topic.maxsize = maxsize
    return topic


def handover_topic(name: str) -> TopicT:
    """A topic one stage hands another stage's partitions their records on (JSON lists,
    codecs.handover; runtime.routing.hand_over), buffered HANDOVER_BUFFER messages ahead."""
    return internal_topic(name, value_type=bytes, maxsize=HANDOVER_BUFFER)


#: Where messages that came on another partition than their key's go (runtime.routing).
routed_purchases = internal_topic(ROUTED[PURCHASES], value_type=bytes)
routed_metric_samples = internal_topic(ROUTED[METRIC_SAMPLES], value_type=bytes)


def with_routed(source: TopicT, forwarded: TopicT) -> TopicT:
    """What a pipeline reads: its source topic and the messages forwarded to its partitions."""
    return read_together(source, forwarded)


def read_together(*topics: TopicT) -> TopicT:
    """Topics of the same partitioning one agent reads as one stream (bytes)."""
    names = [topic.get_topic_name() for topic in topics]
    return app.topic(*names, key_type=bytes, value_type=bytes)


#: Rejected messages: original key and bytes, reason and origin in `tally.dlq.*` headers.
dead_letters = app.topic(DEAD_LETTERS, key_type=bytes, value_type=bytes)

#: Events that arrived after their window closed: the event's bytes, why in the same headers.
late_events = app.topic(LATE_EVENTS, key_type=bytes, value_type=bytes)


@app.task
async def register_schemas() -> None:
    """Register every schema this worker reads at start, before any message arrives (a
    reader reads no messages: it needs no registry)."""
    if settings.reads_only:
        return
    purchases_topic_codec()
    metric_batch_codec()
