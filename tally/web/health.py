"""`/api/health`: is this worker ready to answer queries, what does it own, how far behind."""

from __future__ import annotations

from typing import Any

from faust.types import TP
from faust.web import Request, Response, View

from tally.agents.intake import processed_offsets
from tally.app import app, settings
from tally.serving import serving


def ownership() -> dict[str, list[str]]:
    """Table partitions this worker holds, as "topic[partition]" strings."""
    assignor = app.assignor
    return {
        "active": sorted(f"{tp.topic}[{tp.partition}]" for tp in assignor.assigned_actives()),
        "standby": sorted(f"{tp.topic}[{tp.partition}]" for tp in assignor.assigned_standbys()),
    }


def next_to_process(tp: TP) -> int | None:
    """The offset after the last one processed: this worker's record, else the committed."""
    done = processed_offsets.get(tp)
    if done is not None:
        return done + 1
    return app.monitor.tp_committed_offsets.get(tp)


def consumer_lag() -> dict[TP, int]:
    """Messages waiting on each source partition this worker owns (high watermark minus the
    next offset to process), where both are known."""
    lag: dict[TP, int] = {}
    sources = set(app.source_topic_partitions())
    for tp in sorted(app.assignor.assigned_actives()):
        if tp.topic not in sources:
            continue
        try:
            highwater = app.consumer.highwater(tp)
        except AssertionError:  # aiokafka: no longer assigned
            continue
        position = next_to_process(tp)
        if highwater is not None and position is not None:
            lag[tp] = max(highwater - position, 0)
    return lag


def recovery() -> dict[str, Any]:
    """Changelog records still to read: actives (blocking answers) and standbys (catching up
    in the background)."""
    tables = app.tables.recovery
    return {
        "completed": tables.completed.is_set(),
        "active_records_remaining": tables.active_remaining_total(),
        "standby_records_remaining": tables.standby_remaining_total(),
    }


def lag_by_topic() -> dict[str, int]:
    by_topic: dict[str, int] = {}
    for tp, waiting in consumer_lag().items():
        by_topic[tp.topic] = by_topic.get(tp.topic, 0) + waiting
    return by_topic


@app.page("/api/health")
class Health(View):
    """200 when ready (tables recovered, no rebalance under way), else 503 saying why; both
    with the partitions held, recovery progress and consumer lag."""

    async def get(self, request: Request) -> Response:
        details = {
            "worker": settings.web_url,
            **ownership(),
            "recovery": recovery(),
            "lag": lag_by_topic(),
            "standby_replicas": settings.standby_replicas,
            "generation": settings.generation,
            "pipelines": sorted(settings.pipelines),
            **serving.generations.describe(),
        }
        if app.ready:
            return self.json({"status": "ready", **details})
        reason = app.not_ready_because()
        return self.json({"status": "starting", "reason": reason, **details}, status=503)


@app.page("/api/health/live")
class Live(View):
    """Liveness: this process serves HTTP. It says nothing of the broker or the tables, so a
    supervisor does not restart a worker for an outage a restart cannot mend."""

    async def get(self, request: Request) -> Response:
        return self.json({"status": "alive", "worker": settings.web_url})
