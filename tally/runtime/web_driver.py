"""Faust's aiohttp web driver, with each route answering `Expect: 100-continue` by the body
limit of its path (`tally.http.hygiene`): 413 before the client sends a body that is too large.

Registered under the `faust.web.drivers` entry point as `tally` (the app's `web="tally://"`);
connection and body hygiene come in through Faust's `web_application_options`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from aiohttp import web
from faust.types.web import View
from faust.web.drivers import aiohttp as faust_aiohttp

from tally.http.hygiene import BodyLimits, expect_handler


class Web(faust_aiohttp.Web):
    def route(
        self,
        pattern: str,
        handler: Callable[..., Any],
        cors_options: Mapping[str, Any] | None = None,
    ) -> None:
        if cors_options or self.cors_options:
            super().route(pattern, handler, cors_options)
            return
        limits = cast(BodyLimits, getattr(self.app, "body_limits", BodyLimits(())))
        expect = expect_handler(limits)

        async def dispatch(request: web.Request) -> web.StreamResponse:
            return cast(web.StreamResponse, await handler(request))

        dispatch.__doc__ = handler.__doc__
        for method in cast(View, handler).get_methods():
            self.web_app.router.add_route(method, pattern, dispatch, expect_handler=expect)
