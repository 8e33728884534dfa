"""`/metrics`: Prometheus text format (counters from tally.telemetry)."""

from __future__ import annotations

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tally.app import app


@app.page("/metrics")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
