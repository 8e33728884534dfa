"""The worker's view of the serving topic (see tally.core.generations): which generation answers
each pipeline, followed live, so a cutover reaches every worker within a poll."""

from __future__ import annotations

import logging
from typing import Any

from mode import Service

from tally.app import app, settings
from tally.broker.admin import follow_topic
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

    def absorb(self, key: bytes | None, value: bytes | None) -> None:
        self.generations.absorb(key, value)
        logger.info("serving topic: %s = %s", key, value)

    def caught_up(self) -> None:
        self.loaded = True

    @Service.task
    async def _follow(self) -> None:
        await follow_topic(
            settings.bootstrap_servers, settings.serving_topic, self.absorb, self.caught_up
        )


serving = ServingFollower()
app.waiting_for.append(
    ("reading which generation serves each pipeline", lambda: not serving.loaded)
)


@app.task
async def follow_serving_topic() -> None:
    await app.add_runtime_dependency(serving)
