"""`/` (what this worker is, and its endpoints) and `/api/openapi.json` (all of them, described)."""

from __future__ import annotations

from faust.web import Request, Response, View

from tally import __version__
from tally.app import app, settings
from tally.web.openapi import document, endpoint_index

#: Built once: the endpoints do not change while the worker runs.
OPENAPI = document()
INDEX = endpoint_index()


@app.page("/")
class Index(View):
    async def get(self, request: Request) -> Response:
        return self.json(
            {
                "service": "tally",
                "version": __version__,
                "app_id": settings.app_id,
                "broker": settings.broker,
                "endpoints": INDEX,
                "openapi": "/api/openapi.json",
            }
        )


@app.page("/api/openapi.json")
class OpenApi(View):
    async def get(self, request: Request) -> Response:
        return self.json(OPENAPI)
