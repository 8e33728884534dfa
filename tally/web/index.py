"""`/`: what this worker is and where its endpoints are."""

from __future__ import annotations

from faust.web import Request, Response, View

from tally import __version__
from tally.app import app, settings

ENDPOINTS = {
    "GET /": "this index",
    "GET /api/health": "readiness and the partitions this worker owns",
    "GET /metrics": "Prometheus counters: events by outcome, dead letters by error",
    "GET /api/sales/top?k=&at=": "top-K items of the last 24 hours, with freshness",
    "GET /api/sales/items/{item_id}?at=": "an item's 24-hour total and its hourly panes",
    "GET /api/servers/{server_id}/metrics?from=&to=&step=&metric=": "a server's metrics, any range",
    "GET /api/servers/{server_id}/summary?from=&to=": "a server's metrics over the range",
    "GET /api/metrics/{metric_id}?from=&to=&step=&by=server": "a metric across servers",
    "GET /registry/subjects": "schema registry (Confluent-compatible API over the file registry)",
    "GET /registry/subjects/{subject}/versions[/{version}|/latest]": "versions of a subject",
    "POST /registry/subjects/{subject}/versions": "register {'schema': ...} -> {'id': N}",
    "GET /registry/schemas/ids/{id}": "one schema by id",
}


@app.page("/")
class Index(View):
    async def get(self, request: Request) -> Response:
        return self.json(
            {
                "service": "tally",
                "version": __version__,
                "app_id": settings.app_id,
                "broker": settings.broker,
                "endpoints": ENDPOINTS,
            }
        )
