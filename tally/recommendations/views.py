"""Recommendations views: what a session is shown next, answered by the worker owning the
session (forwarded there), which reads the co-view rows of the item viewed and of the
session's recent items from the workers owning them. The tenant is the caller's (an
operator names one with `?tenant=`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from aiohttp import hdrs, web
from faust.web import Request, Response

from tally.app import app, settings
from tally.core.clock import iso, now_ms
from tally.core.partitioning import partition_for
from tally.core.recommendations import RECENT_ITEMS, recent, recommend
from tally.core.tenancy import scoped
from tally.recommendations.agents import co_views_clock, sessions_state
from tally.recommendations.tables import (
    SESSION_TTL,
    co_view_changes,
    co_views,
    session_items,
    total_key,
    window_of,
)
from tally.runtime.cells import read_cell
from tally.runtime.queries import (
    BadRequest,
    OwnedView,
    OwnerUnavailable,
    another_worker,
    id_param,
    int_param,
    one_tenant_read,
    routed_by_key,
)

#: The most recommendations one answer holds.
MAX_K = 100
#: Rows one request for rows may name: the item viewed and the session's recent items.
MAX_ROWS = RECENT_ITEMS + 1


def partition_of(tenant: str, item: str) -> int:
    return partition_for(scoped(tenant, item), settings.partitions)


def held_partitions() -> set[int]:
    """The co-view partitions this worker holds as active (whose rows are current here)."""
    name = co_view_changes.get_topic_name()
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name}


def local_rows(tenant: str, items: Sequence[str]) -> dict[str, Any]:
    """Rows of items whose partitions this worker holds, and each row's last pane."""
    rows, last_panes = {}, {}
    for item in items:
        partition = partition_of(tenant, item)
        rows[item] = read_cell(co_views, total_key(tenant, item), partition) or {}
        last_panes[item] = co_views_clock(partition).get("last_pane")
    return {"rows": rows, "last_panes": last_panes}


async def rows_of(request: Request, tenant: str, items: Sequence[str]) -> dict[str, Any]:
    """The items' rows: from this worker's tables where it owns them, else one request to
    each worker owning some."""
    held = held_partitions()
    found = local_rows(tenant, [item for item in items if partition_of(tenant, item) in held])
    elsewhere: dict[str, list[str]] = {}
    for item in items:
        if partition_of(tenant, item) not in held:
            url = str(app.router.key_store(co_views.name, scoped(tenant, item)))
            elsewhere.setdefault(url, []).append(item)
    answers = await asyncio.gather(
        *(remote_rows(request, url, theirs) for url, theirs in elsewhere.items())
    )
    for answer in answers:
        found["rows"].update(answer["rows"])
        found["last_panes"].update(answer["last_panes"])
    return found


async def remote_rows(request: Request, url: str, items: list[str]) -> dict[str, Any]:
    query: list[tuple[str, str]] = [("item", item) for item in items]
    if "tenant" in request.query:
        query.append(("tenant", request.query["tenant"]))
    headers = {}
    if hdrs.AUTHORIZATION in request.headers:
        headers[hdrs.AUTHORIZATION] = request.headers[hdrs.AUTHORIZATION]
    async with (
        another_worker(request.method),
        app.http_client.get(
            url.rstrip("/") + "/api/recommendations/rows", params=query, headers=headers
        ) as answer,
    ):
        if answer.status != 200:
            raise OwnerUnavailable(
                f"the worker owning some of the co-view rows ({url}) answered "
                f"{answer.status}: {(await answer.text())[:200]}; retry shortly"
            )
        return cast(dict[str, Any], await answer.json())


def window_fields(last_panes: dict[str, int | None]) -> dict[str, Any]:
    """The co-view window the answer's rows reflect: the oldest of their partitions'."""
    known = [pane for pane in last_panes.values() if pane is not None]
    if not known:
        return {"window_start": None, "window_end": None}
    start, end = window_of(min(known))
    return {"window_start": iso(start), "window_end": iso(end)}


@app.page("/api/recommendations")
class Recommendations(OwnedView):
    """`?session=<id>[&item=<id>][&k=10]`: the items to show a session now, best first: how
    many sessions of the last 7 days viewed each with the item viewed now and with the
    session's recent items, without anything the session has seen; with the session's
    freshness (its clock, last view, expiry) and the co-view window's."""

    pipeline = "recommendations"

    async def owned(self, request: Request) -> Response:
        tenant = one_tenant_read(request)
        if not request.query.get("session"):
            raise BadRequest("session is required: ?session=<session id>[&item=<item id>]")
        session = id_param("session", request.query["session"])
        item = request.query.get("item") or None
        if item is not None:
            item = id_param("item", item)
        k = int_param(request, "k", 10, 1, MAX_K)
        key = scoped(tenant, session)

        async def answer() -> Response:
            partition = partition_for(key, settings.partitions)
            wall = now_ms()
            stored = sessions_state.live(key.encode(), partition, wall)
            first_views: dict[str, int] = {} if stored is None else stored["value"]
            sources = list(dict.fromkeys([*([item] if item else []), *recent(first_views)]))
            found = await rows_of(request, tenant, sources)
            ranked = recommend(found["rows"], item, first_views, k)
            last = None if stored is None else stored["last_ms"]
            return self.json(
                {
                    "tenant": tenant,
                    "session": session,
                    "item": item,
                    "k": k,
                    "recommendations": [{"item": other, "score": n} for other, n in ranked],
                    "session_state": {
                        "items_seen": len(first_views),
                        "recent_items": recent(first_views),
                        "last_view_ms": last,
                        "expires_at_ms": None if last is None else SESSION_TTL.expires_at(last),
                        "clock_ms": sessions_state.now(partition, wall),
                        "ttl_seconds": settings.session_ttl_seconds,
                    },
                    "co_views": {
                        **window_fields(found["last_panes"]),
                        "rows_read": len(sources),
                    },
                }
            )

        return await routed_by_key(session_items, key, self, request, answer)


@app.page("/api/recommendations/rows")
class CoViewRows(OwnedView):
    """`?item=<id>&item=<id>...`: the items' co-view rows over the window (other item →
    sessions), answered for the items whose partitions this worker owns; what a session's
    owner asks the others for."""

    pipeline = "recommendations"

    async def owned(self, request: Request) -> Response:
        tenant = one_tenant_read(request)
        items = [
            id_param("item", item) for item in cast(web.Request, request).query.getall("item", [])
        ]
        if not items or len(items) > MAX_ROWS:
            raise BadRequest(f"name 1 to {MAX_ROWS} items: ?item=<id>&item=<id>...")
        held = held_partitions()
        missing = [item for item in items if partition_of(tenant, item) not in held]
        if missing:
            raise OwnerUnavailable(
                f"this worker does not own the rows of {', '.join(missing[:5])} (a rebalance "
                "moved them); retry shortly"
            )
        return self.json(local_rows(tenant, items))
