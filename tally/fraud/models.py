"""Published fraud models: the compacted topic `fraud-models` (keyed by version, one
partition), read whole by every worker and followed (a Kafka Streams GlobalKTable, Flink's
broadcast state). Publishing sets the time from which a model decides; a worker decides an
order only once it has read the topic to its end as of a time after the order's, so a model
published meanwhile decides it on every worker alike (core.fraud.ModelBook).

Not a Faust GlobalTable: it gives no "read to the end as of time T", which the boundary
between two versions needs (and the field notes record GlobalTables not syncing across
instances, faust-streaming #283).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from tally.broker.admin import (
    end_offsets,
    ensure_compacted_topic,
    read_topic,
    reader,
    send_record,
)
from tally.core.clock import now_ms
from tally.core.errors import BrokerError
from tally.core.fraud import Model, ModelBook, ModelError

logger = logging.getLogger(__name__)

#: How often a worker asks where the models topic ends (an order waits at most about this
#: long past its own time for the models known to cover it).
POLL_S = 0.1
#: A model published now decides orders from this much later on: every worker has read it
#: by then (it asks every POLL_S; publishing waits for the broker's acknowledgement).
ACTIVATION_DELAY_MS = 2000
#: The model every deployment starts with (trained offline: `tally fraud train-model`).
DEFAULT_MODEL = Path(__file__).parent / "models" / "default.json"


class FollowedModels(ModelBook):
    """The models as this worker has read them; `loaded` once the topic was read to its end."""

    def absorb(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:  # a tombstone: the version is retired
            self.remove(key.decode(errors="replace"))
            return
        try:
            self.add(Model.from_record(orjson.loads(value)))
        except (ModelError, orjson.JSONDecodeError) as exc:
            logger.error("fraud-models: version %r is not usable, skipped: %s", key, exc)

    async def follow(self, bootstrap_servers: list[str], topic: str, replication: int) -> None:
        """Until cancelled: read the topic, then every POLL_S ask where it ends, read to
        there, and move `known_until_ms` to when it was asked. A broker that fails is
        retried every second (nothing is decided meanwhile: known_until_ms stays)."""
        while True:
            try:
                await ensure_compacted_topic(bootstrap_servers, topic, replication)
                await self._follow(bootstrap_servers, topic)
            except (KafkaError, OSError, BrokerError) as exc:
                logger.warning("following %s failed (%s); retrying in 1 s", topic, exc)
                await asyncio.sleep(1.0)

    async def _follow(self, bootstrap_servers: list[str], topic: str) -> None:
        consumer = reader(bootstrap_servers)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            # Fetched only while behind: the consumer's own long-polling Fetch would hold the
            # connection, and the broker answers the end-offsets request after it (a second).
            consumer.pause(tp)
            while True:
                asked_at = now_ms()
                end = (await end_offsets(consumer, [tp]))[tp]
                if await consumer.position(tp) < end:
                    consumer.resume(tp)
                    while await consumer.position(tp) < end:
                        batch = await consumer.getmany(tp, timeout_ms=500)
                        for record in batch.get(tp, []):
                            self.absorb(record.key, record.value)
                    consumer.pause(tp)
                self.known_until_ms = asked_at
                await asyncio.sleep(POLL_S)
        finally:
            await consumer.stop()


def read_model_file(path: Path) -> Model:
    """A model file, checked; `ModelError` saying what is wrong."""
    try:
        return Model.from_record(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from None


async def published_versions(bootstrap_servers: list[str], topic: str) -> set[str]:
    """The versions the models topic holds (retired ones' tombstones aside)."""
    held: dict[str, bool] = {}
    async for record in read_topic(bootstrap_servers, topic):
        if record.key is not None:
            held[record.key.decode(errors="replace")] = record.value is not None
    return {version for version, live in held.items() if live}


async def publish(
    bootstrap_servers: list[str],
    topic: str,
    replication: int,
    model: Model,
    effective_from_ms: int | None = None,
) -> Model:
    """Publish `model`, deciding orders from `effective_from_ms` on (default: now plus
    ACTIVATION_DELAY_MS); returns it as published, once the broker has it. `ModelError` for
    a version published already (orders it decided would change hands) or a time already
    past when the broker took it (orders placed since may have been decided by the model
    before: publish again with a later `--at`)."""
    await ensure_compacted_topic(bootstrap_servers, topic, replication)
    if model.version in await published_versions(bootstrap_servers, topic):
        raise ModelError(
            f"version {model.version!r} is published already: give the new model a version "
            "of its own (a model's orders keep the version that decided them)"
        )
    at = now_ms() + ACTIVATION_DELAY_MS if effective_from_ms is None else effective_from_ms
    published = Model.from_record({**model.to_record(), "effective_from_ms": at})
    value = orjson.dumps(published.to_record())
    await send_record(bootstrap_servers, topic, published.version.encode(), value)
    if effective_from_ms is None and now_ms() > at:
        raise ModelError(
            f"the broker took model {model.version} only after the time it was to decide "
            f"from ({at}): orders placed since may have been decided by the model before; "
            "retire it and publish it again with a later --at"
        )
    return published
