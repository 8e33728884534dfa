"""`/api/health`: is this worker ready to answer queries, what does it own, how far behind."""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from tally.app import app, settings
from tally.runtime.following import followers
from tally.runtime.progress import lag_by_topic, ownership, recovery, stalled
from tally.runtime.serving import serving


@app.page("/api/health")
class Health(View):
    """200 when ready (tables recovered, no rebalance under way; a reader: its copies
    loaded), else 503 saying why; both with the partitions held, recovery progress and
    consumer lag (a reader: its copies and how far behind they are)."""

    async def get(self, request: Request) -> Response:
        details = {
            "worker": settings.web_url,
            "role": settings.role,
            **(self.reader() if settings.reads_only else self.processor()),
            "generation": settings.generation,
            "pipelines": sorted(settings.pipelines),
            **serving.generations.describe(),
        }
        if app.ready:
            return self.json({"status": "ready", **details})
        reason = app.not_ready_because()
        return self.json({"status": "starting", "reason": reason, **details}, status=503)

    def reader(self) -> dict[str, Any]:
        """A reader's copies: whether loaded, how many changelog records behind."""
        return {"copies": [follower.describe() for follower in followers]}

    def processor(self) -> dict[str, Any]:
        """A processing worker's partitions, recovery, lag and stalls."""
        return {
            **ownership(),
            "recovery": recovery(),
            "lag": lag_by_topic(),
            # Source partitions whose messages wait, none processed for 30 s or more.
            "stalled": stalled(),
            "standby_replicas": settings.standby_replicas,
            # The consumer group's: it steps at every rebalance (a worker joined, left or died).
            "group_generation": app.consumer_generation_id,
        }


@app.page("/api/health/live")
class Live(View):
    """Liveness: this process serves HTTP. It says nothing of the broker or the tables, so a
    supervisor does not restart a worker for an outage a restart cannot mend."""

    async def get(self, request: Request) -> Response:
        return self.json({"status": "alive", "worker": settings.web_url})
