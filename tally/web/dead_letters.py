"""`/api/dead-letters/stats`: what was rejected, counted by rule, stage and origin."""

from __future__ import annotations

from faust.web import Request, Response, View

from tally.app import app, settings
from tally.dlq import DeadLetterWatch
from tally.runtime.queries import tenant_read

watch = DeadLetterWatch(settings.bootstrap_servers)


@app.task
async def start_dead_letter_watch() -> None:
    await app.add_runtime_dependency(watch)


@app.page("/api/dead-letters/stats")
class DeadLetterStats(View):
    """Counts over the whole topic, read by this worker itself (no routing needed): of the
    caller's tenant's letters (an operator's: of every letter, or of `?tenant=`'s)."""

    async def get(self, request: Request) -> Response:
        return self.json(watch.body(tenant_read(request, across=True)))
