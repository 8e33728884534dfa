"""`/api/health`: is this worker ready to answer queries, and what does it own."""

from __future__ import annotations

from faust.web import Request, Response, View

from tally.app import app


def ownership() -> dict[str, list[str]]:
    """Table partitions this worker holds, as "topic[partition]" strings."""
    assignor = app.assignor
    return {
        "active": sorted(f"{tp.topic}[{tp.partition}]" for tp in assignor.assigned_actives()),
        "standby": sorted(f"{tp.topic}[{tp.partition}]" for tp in assignor.assigned_standbys()),
    }


@app.page("/api/health")
class Health(View):
    """200 when ready (tables recovered, no rebalance under way), else 503 saying why."""

    async def get(self, request: Request) -> Response:
        if app.ready:
            return self.json({"status": "ready", **ownership()})
        reason = "rebalancing" if app.rebalancing else "recovering tables"
        return self.json({"status": "starting", "reason": reason}, status=503)
