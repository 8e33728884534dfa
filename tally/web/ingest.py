"""`POST /api/ingest/{endpoint}` on the worker's web server (see `tally.ingest.http`).

Ingest does not touch tables: it answers while the worker is still recovering or rebalancing.
"""

from __future__ import annotations

from faust.web import Request, Response, View

from tally.app import app, settings
from tally.ingest.http import handle_ingest, make_gateway

gateway = make_gateway(settings, app.broker_watch)


@app.task
async def start_ingest_gateway() -> None:
    """Started and stopped with the worker; it connects to the broker on the first request."""
    await app.add_runtime_dependency(gateway)


@app.page("/api/ingest/{endpoint}")
class Ingest(View):
    async def post(self, request: Request, endpoint: str) -> Response:
        return await handle_ingest(gateway, request, endpoint)  # type: ignore[arg-type,return-value]
