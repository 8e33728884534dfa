"""The worker's view of the serving topic (see tally.core.generations): which generation answers
each pipeline, followed live, so a cutover reaches every worker within a poll."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import TopicPartition
from mode import Service

from tally.app import app, settings
from tally.broker.admin import end_offsets, reader
from tally.core.generations import Generations, Serving

logger = logging.getLogger(__name__)


class ServingFollower(Service):
    """Reads the serving topic from its start and keeps following it. `loaded` is set once
    the records written before this worker started are in: until then a query cannot know
    whether it belongs to a newer generation, so the views answer 503."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generations = Generations()
        self.loaded = False

    def forward_to(self, pipeline: str) -> Serving | None:
        return self.generations.forward_to(pipeline, settings.generation)

    @Service.task
    async def _follow(self) -> None:
        consumer = reader(settings.bootstrap_servers)
        await consumer.start()
        try:
            tp = TopicPartition(settings.serving_topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await end_offsets(consumer, [tp]))[tp]
            while not self.should_stop:
                batch = await consumer.getmany(tp, timeout_ms=500)
                for record in batch.get(tp, []):
                    self.generations.absorb(record.key, record.value)
                    logger.info("serving topic: %s = %s", record.key, record.value)
                if not self.loaded and await consumer.position(tp) >= end:
                    self.loaded = True
        finally:
            await consumer.stop()


serving = ServingFollower()
app.waiting_for.append(
    ("reading which generation serves each pipeline", lambda: not serving.loaded)
)


@app.task
async def follow_serving_topic() -> None:
    await app.add_runtime_dependency(serving)
