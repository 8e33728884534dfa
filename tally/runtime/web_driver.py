"""Faust's aiohttp web driver, with each route answering `Expect: 100-continue` by the body
limit of its path (`tally.http.hygiene`): 413 before the client sends a body that is too large.
aiohttp-cors's hook runs before an answer only when some route takes CORS options.

Registered under the `faust.web.drivers` entry point as `tally` (the app's `web="tally://"`);
connection and body hygiene come in through Faust's `web_application_options`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from aiohttp import web
from aiohttp_cors import CorsConfig
from faust.types.web import View
from faust.web.drivers import aiohttp as faust_aiohttp

from tally.http.hygiene import BodyLimits, expect_handler


class Web(faust_aiohttp.Web):
    #: Whether a route answers CORS requests (CORS options given, in the route or the app).
    cors_in_use = False

    @property
    def cors(self) -> CorsConfig:
        """Faust sets up aiohttp-cors when the server starts, whether a route takes CORS
        options or not, and its hook then runs before every answer (~3 % of a worker
        answering the top-10): without such a route, the hook is taken off again. (Faust
        asks for this when the server starts: a route with CORS options added later, none
        in Tally, where `app.page` registers views at import, would not get it back.)"""
        hooks = list(self.web_app.on_response_prepare)
        config = cast(CorsConfig, faust_aiohttp.Web.cors.fget(self))  # type: ignore[attr-defined]
        if not self.cors_in_use:
            for hook in list(self.web_app.on_response_prepare):
                if hook not in hooks:
                    self.web_app.on_response_prepare.remove(hook)
        return config

    def route(
        self,
        pattern: str,
        handler: Callable[..., Any],
        cors_options: Mapping[str, Any] | None = None,
    ) -> None:
        if cors_options or self.cors_options:
            self.cors_in_use = True
            super().route(pattern, handler, cors_options)
            return
        limits = cast(BodyLimits, getattr(self.app, "body_limits", BodyLimits(())))
        expect = expect_handler(limits)

        async def dispatch(request: web.Request) -> web.StreamResponse:
            return cast(web.StreamResponse, await handler(request))

        dispatch.__doc__ = handler.__doc__
        for method in cast(View, handler).get_methods():
            self.web_app.router.add_route(method, pattern, dispatch, expect_handler=expect)
