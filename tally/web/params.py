"""What the views share: parameters parsed into clear 400s, readiness (503), routed views."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
from faust.web import Request, Response, View
from faust.web.exceptions import WebError

from tally.app import app


class BadRequest(WebError):
    """A query parameter is unusable; the detail says which and what is allowed."""

    code = 400


class NotReady(WebError):
    """The worker is starting or rebalancing: its tables cannot answer yet."""

    code = 503
    detail = "this worker is starting or rebalancing (tables not recovered yet); retry shortly"


def require_ready() -> None:
    if not app.ready:
        raise NotReady()


#: The latest time a query may name: far from datetime's limit, so windows around it print.
LATEST_MS = int(datetime(9000, 1, 1, tzinfo=UTC).timestamp() * 1000)


class OwnerUnavailable(WebError):
    """The request was forwarded to the key's owner, which did not answer."""

    code = 503


#: A query (forwarded or local) that takes longer than this is answered 503.
QUERY_TIMEOUT_S = 60.0


class OwnedView(View):
    """A GET answered by the worker owning the key: 503 until this worker is ready, then
    `owned`, which subclasses decorate with `app.table_route` to forward or answer. An owner
    that does not answer (it died; the group has not moved its partitions yet) is a 503 that
    says so, not a 500."""

    async def get(self, request: Request, **match: str) -> Response:
        require_ready()
        try:
            async with asyncio.timeout(QUERY_TIMEOUT_S):
                return await self.owned(request, **match)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OwnerUnavailable(
                f"the query did not complete ({type(exc).__name__}: {exc}); if the worker "
                "that owns this key stopped, the group gives its partitions to another worker "
                "within seconds: retry shortly"
            ) from None

    async def owned(self, request: Request, **match: str) -> Response:
        raise NotImplementedError


def time_param(request: Request, name: str, default_ms: int) -> int:
    """An ISO-8601 time (or epoch milliseconds) as epoch ms; naive times are UTC."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default_ms
    try:
        if raw.isascii() and raw.isdecimal():
            value = int(raw)
        else:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            value = int(parsed.timestamp() * 1000)
    except ValueError:
        raise BadRequest(
            f"{name}={raw!r} is not a time; use ISO 8601 (2026-11-22T10:00:00Z) "
            "or epoch milliseconds"
        ) from None
    if not 0 <= value <= LATEST_MS:
        raise BadRequest(f"{name}={raw!r} is out of range (1970 to 9000)")
    return value


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}={value} is out of range; allowed: {low} to {high}")
    return value


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
