"""What the views share: parameters parsed into clear 400s, readiness (503), routed views."""

from __future__ import annotations

from datetime import UTC, datetime

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


class OwnedView(View):
    """A GET answered by the worker owning the key: 503 until this worker is ready, then
    `owned`, which subclasses decorate with `app.table_route` to forward or answer."""

    async def get(self, request: Request, **match: str) -> Response:
        require_ready()
        return await self.owned(request, **match)

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
