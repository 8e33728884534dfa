"""`/` (the live dashboard for browsers; for other clients what this worker is and its
endpoints), `/static/*` (the dashboard's files) and `/api/openapi.json` (every endpoint)."""

from __future__ import annotations

from importlib.resources import files

from faust.web import Request, Response, View
from faust.web.exceptions import NotFound

from tally import __version__
from tally.app import app, settings
from tally.web.openapi import STATIC_CONTENT_TYPES, document, endpoint_index, served_by

#: Built once: the endpoints do not change while the worker runs.
OPENAPI = document(served_by(settings.pipelines, settings.reads_only))
INDEX = endpoint_index(served_by(settings.pipelines, settings.reads_only))

#: The dashboard's files, read once from the package (no build step, nothing from a CDN).
STATIC = {
    entry.name: entry.read_bytes()
    for entry in files("tally.web").joinpath("static").iterdir()
    if entry.name.endswith(tuple(STATIC_CONTENT_TYPES))
}


def static_response(view: View, name: str) -> Response:
    body = STATIC.get(name)
    if body is None:
        raise NotFound(f"no static file {name!r}; there are {sorted(STATIC)}")
    content_type = STATIC_CONTENT_TYPES[name[name.rindex(".") :]]
    return view.bytes(body, headers={"Content-Type": f"{content_type}; charset=utf-8"})


@app.page("/")
class Index(View):
    """Browsers (asking for HTML) get the dashboard; curl and programs the JSON index."""

    async def get(self, request: Request) -> Response:
        if "text/html" in request.headers.get("Accept", ""):
            return static_response(self, "dashboard.html")
        return self.json(
            {
                "service": "tally",
                "version": __version__,
                "app_id": settings.app_id,
                "broker": settings.broker,
                "dashboard": "/ (from a browser)",
                "endpoints": INDEX,
                "openapi": "/api/openapi.json",
            }
        )


@app.page("/static/{name}")
class Static(View):
    async def get(self, request: Request, name: str) -> Response:
        return static_response(self, name)


@app.page("/api/openapi.json")
class OpenApi(View):
    async def get(self, request: Request) -> Response:
        return self.json(OPENAPI)
