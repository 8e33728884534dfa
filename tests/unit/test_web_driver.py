"""Tally's web driver over Faust's: aiohttp-cors's hook before every answer only when a route
answers CORS requests."""

from __future__ import annotations

from aiohttp_cors import ResourceOptions
from faust.web import Request, Response, View

from tally.app import app
from tally.runtime.web_driver import Web


class Ping(View):
    view_name = "ping"
    view_path = "/ping"

    async def get(self, request: Request) -> Response:
        return self.json({"pong": True})


def test_no_cors_hook_runs_before_answers_unless_a_route_takes_cors() -> None:
    plain = Web(app)
    plain.add_view(Ping)
    assert plain.cors is not None  # what Faust asks for when the server starts
    assert list(plain.web_app.on_response_prepare) == []

    cross_site = Web(app)
    cross_site.add_view(Ping, cors_options={"*": ResourceOptions()})
    assert cross_site.cors is not None
    assert len(cross_site.web_app.on_response_prepare) == 1  # aiohttp-cors's
