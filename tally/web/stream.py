"""Server-sent events: `/api/stream/...`, live versions of the query endpoints.

Each stream re-runs its query on this worker's own REST endpoint (so routing to the owning
worker, freshness fields and errors are exactly the REST answer's) every
`TALLY_STREAM_POLL_SECONDS`, and sends a snapshot, then what changed (`tally.live`). Agents never
see a client: a stalled one only fills its own latest-only mailbox, and a write that does not
finish within `WRITE_TIMEOUT_S` drops the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import hdrs, web
from faust.web import Request, Response, View
from mode import Service

from tally.app import app, settings
from tally.http.access import caller
from tally.live import Answer, Feeds, Refused, SeriesStream, Stream, TopStream, Unavailable
from tally.runtime.queries import BadRequest, int_param
from tally.telemetry import LIVE_CLIENTS, LIVE_FEEDS, LIVE_RESETS

logger = logging.getLogger(__name__)

#: A client that has not taken a frame within this long is gone (or stalled): drop it.
WRITE_TIMEOUT_S = 30.0
#: A comment line this often keeps proxies from closing a quiet stream and finds dead clients.
KEEPALIVE_S = 15.0
#: How long a browser waits before reconnecting (sent as the SSE `retry` field).
RETRY_MS = 2000
#: The longest range a series stream follows.
MAX_MINUTES = 24 * 60


def local_base_url() -> str:
    host = settings.web_host if settings.web_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{settings.web_port}"


class ReadFailed(Unavailable):
    """The query answered with a client error: the stream's parameters are wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class CredentialsRefused(ReadFailed, Refused):
    """The query refused the credentials (401, 403): revoked, expired, or not enough."""


async def fetch_local(path: str, credentials: str) -> Answer:
    """The JSON answer of this worker's own endpoint (which forwards to the key's owner), asked
    with the stream's clients' credentials: the gate checks them at every poll, so a revoked
    or expired token ends its streams too."""
    headers = {hdrs.AUTHORIZATION: credentials} if credentials else {}
    try:
        async with app.http_client.get(
            local_base_url() + path, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Unavailable(f"the query {path} failed: {type(exc).__name__}: {exc}") from exc
    if response.status == 200:
        return body
    reason = body.get("error") if isinstance(body, dict) else None
    message = reason or f"the query answered HTTP {response.status}"
    if response.status in (401, 403):
        raise CredentialsRefused(response.status, message)
    if 400 <= response.status < 500:
        raise ReadFailed(response.status, message)
    raise Unavailable(message)


class LiveStreams(Service):
    """The worker's feeds and open client connections; closes every stream when the worker
    stops (the web server would otherwise wait for them to end)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.feeds = Feeds(fetch_local, settings.stream_poll_seconds, on_reset=LIVE_RESETS.inc)
        self.handlers: set[asyncio.Task[object]] = set()
        LIVE_CLIENTS.set_function(lambda: self.feeds.clients)
        LIVE_FEEDS.set_function(lambda: len(self.feeds.feeds))

    async def on_stop(self) -> None:
        self.close()

    def close(self) -> None:
        """End every client's stream (each handler unsubscribes, which stops its feed)."""
        for task in list(self.handlers):
            task.cancel()

    async def serve(self, request: Request, stream: Stream) -> web.StreamResponse:
        """Check the query once (a bad parameter is a 4xx, not a stream), then stream."""
        stream.credentials = request.headers.get(hdrs.AUTHORIZATION, "")
        stream.caller = caller(request).token_id
        try:
            await stream.read(fetch_local)
        except ReadFailed as exc:
            raise BadRequest(str(exc), code=exc.status) from None
        except Unavailable:
            pass  # streamed as a status event until the query answers
        try:
            feed, mailbox = self.feeds.subscribe(stream)
        except Unavailable as exc:
            return web.json_response({"error": str(exc)}, status=503)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await response.prepare(request)  # type: ignore[arg-type]
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            while True:
                messages = await mailbox.wait(KEEPALIVE_S)
                frames = b"".join(m.frame() for m in messages) or b": keepalive\n\n"
                await asyncio.wait_for(response.write(frames), WRITE_TIMEOUT_S)
                if feed.refused is not None:  # the client was told why: the stream ends
                    break
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # the client left, stalled, or the worker is stopping
        finally:
            self.handlers.discard(task)
            self.feeds.unsubscribe(feed, mailbox)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response


live = LiveStreams()


@app.task
async def start_live_streams() -> None:
    await app.add_runtime_dependency(live)


async def close_live_streams(sender: object, **kwargs: Any) -> None:
    """Before the worker closes its HTTP client, which the feeds read their queries with."""
    live.close()


app.on_before_shutdown.connect(close_live_streams)  # type: ignore[arg-type]  # mode: sync-typed


@app.page("/api/stream/sales/top")
class TopSalesStream(View):
    """The top-K: `snapshot`, then `top` on every change (provisional), `final` per window."""

    async def get(self, request: Request) -> Response:
        stream = TopStream(query=passed_on(request, ("tenant",)))
        return await live.serve(request, stream)  # type: ignore[return-value]


def passed_on(request: Request, names: tuple[str, ...]) -> str:
    """The request's query parameters `names` that the stream's query takes, encoded."""
    return urlencode({name: request.query[name] for name in names if request.query.get(name)})


def series_stream(request: Request, path: str, field_name: str) -> SeriesStream:
    """`?minutes=`, `?tenant=` and, for a server, `?metric=a,b` (passed on to the query)."""
    minutes = int_param(request, "minutes", 120, 1, MAX_MINUTES)
    names = ("metric", "tenant") if field_name == "metrics" else ("tenant",)
    return SeriesStream(
        path=path,
        field_name=field_name,
        minutes=minutes,
        query=passed_on(request, names),
    )


@app.page("/api/stream/servers/{server_id}")
class ServerStream(View):
    """A server's minutes over the last `?minutes=` (120): `snapshot`, then `point`s."""

    async def get(self, request: Request, server_id: str) -> Response:
        path = f"/api/servers/{quote(server_id, safe='')}/metrics"
        stream = series_stream(request, path, "metrics")
        return await live.serve(request, stream)  # type: ignore[return-value]


@app.page("/api/stream/metrics/{metric_id}")
class MetricStream(View):
    """A metric across the tenant's servers over the last `?minutes=` (120): `snapshot`,
    `point`s."""

    async def get(self, request: Request, metric_id: str) -> Response:
        path = f"/api/metrics/{quote(metric_id, safe='')}"
        return await live.serve(request, series_stream(request, path, "series"))  # type: ignore[return-value]


@app.page("/api/stream/social/summary")
class SocialSummaryStream(View):
    """A brand's minutes per channel over the last `?minutes=` (60): `snapshot`, then `meta`
    (the totals) and `point`s."""

    async def get(self, request: Request) -> Response:
        stream = SeriesStream(
            path="/api/social/summary",
            field_name="series",
            minutes=int_param(request, "minutes", 60, 1, MAX_MINUTES),
            query=passed_on(request, ("channel", "tenant")),
        )
        return await live.serve(request, stream)  # type: ignore[return-value]
