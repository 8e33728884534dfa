"""Sales views: the top-K and one item's panes, each answered by the worker that owns it.

Each answers for the caller's tenant (runtime.queries.tenant_read): the top-K of its items,
an item id under its keys only. An operator's top-K with no `?tenant=` is the site-wide one,
over every tenant's items, each named with its tenant.
"""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response

from tally.access.tokens import OPERATOR
from tally.app import app, settings
from tally.core.applied import value_of
from tally.core.clock import iso, now_ms
from tally.core.partitioning import partition_for
from tally.core.tenancy import scoped, unscoped
from tally.core.topk import GlobalTopK
from tally.core.windowing import EventClock
from tally.runtime.cells import read_cell
from tally.runtime.panes import pane_key
from tally.runtime.queries import (
    NO_WINDOW,
    OwnedView,
    check_retained,
    id_param,
    int_param,
    one_tenant_read,
    routed_to_owner,
    tenant_read,
    time_param,
)
from tally.runtime.store import partition_key
from tally.sales.state import answer_at, current_answer, current_body, windows
from tally.sales.tables import SALES_SPEC, sales_clocks, sales_panes, sales_topk


def window_fields(last_pane: int) -> dict[str, str]:
    return {
        "window_start": iso(SALES_SPEC.start_ms(SALES_SPEC.first_pane(last_pane))),
        "window_end": iso(SALES_SPEC.start_ms(last_pane + 1)),
    }


def stale_reasons(answer: GlobalTopK, wall_ms: int, historical: bool) -> list[str]:
    reasons = []
    if answer.lagging:
        reasons.append(
            f"partitions {answer.lagging} have not reached this window yet (lagging or idle)"
        )
    age_s = (wall_ms - answer.as_of_ms) / 1000
    if not historical and age_s > 3 * settings.heartbeat_seconds:
        reasons.append(
            f"last update {age_s:.0f} s ago: the pipeline is stalled or a worker is down"
        )
    return reasons


def ranked_items(answer: GlobalTopK, k: int) -> list[dict[str, Any]]:
    """The answer's items, each naming its tenant (site-wide answers mix them)."""
    items: list[dict[str, Any]] = []
    for rank, (key, quantity) in enumerate(answer.top[:k], start=1):
        tenant, item = unscoped(key)
        items.append({"tenant": tenant, "item_id": item, "quantity": quantity, "rank": rank})
    return items


def top_payload(
    tenant: str | None, answer: GlobalTopK | None, last: int | None, reasons: list[str], k: int
) -> dict[str, Any]:
    """The top-K answer's body for `tenant` (None: site-wide); `last`: the window asked for
    when there is no answer."""
    whose = {"tenant": OPERATOR if tenant is None else tenant}
    if answer is None:
        return {
            **whose,
            **(window_fields(last) if last is not None else NO_WINDOW),
            "as_of": None,
            "watermark": None,
            "stale": True,
            "stale_reasons": reasons,
            "late_events": 0,
            "items": [],
        }
    return {
        **whose,
        **window_fields(answer.last_pane),
        "as_of": iso(answer.as_of_ms),
        "watermark": iso(answer.watermark_ms),
        "stale": bool(reasons),
        "stale_reasons": reasons,
        "late_events": answer.late_events,
        "items": ranked_items(answer, k),
    }


@app.page("/api/sales/top")
class TopSales(OwnedView):
    """The top-K items of the sliding window (the current one, or the one ending at `?at=`).
    The current answers are kept serialized (`current_body`) until the candidates change."""

    pipeline = "sales"

    @routed_to_owner(sales_topk, exact_key="top")
    async def owned(self, request: Request) -> Response:
        k = int_param(request, "k", settings.top_k, 1, settings.top_k)
        tenant = tenant_read(request, across=True)
        wall = now_ms()
        current = current_answer(tenant)
        if "at" not in request.query:
            reasons = (
                ["no purchases seen yet"]
                if current is None
                else stale_reasons(current, wall, historical=False)
            )
            body = current_body.get(
                (tenant, k, tuple(reasons)),
                None,  # the candidates' changes drop every kept answer
                lambda: self.json(top_payload(tenant, current, None, reasons, k)).body,
            )
            return self.serialized(body)
        asked = SALES_SPEC.pane_of(time_param(request, "at", wall))
        if current is not None:
            check_retained(SALES_SPEC, asked, current.watermark_ms)
        answer = answer_at(asked, tenant)
        reasons = (
            ["no purchases in this window"]
            if answer is None
            else stale_reasons(answer, wall, historical=True)
        )
        return self.json(top_payload(tenant, answer, asked, reasons, k))


@app.page("/api/sales/items/{item_id}")
class ItemSales(OwnedView):
    """An item's total over the window and its panes (current window, or the one at `?at=`)."""

    pipeline = "sales"

    @routed_to_owner(sales_panes, match_info="item_id")
    async def owned(self, request: Request, item_id: str) -> Response:
        tenant = one_tenant_read(request)
        item = scoped(tenant, id_param("item_id", item_id))
        wall = now_ms()
        partition = partition_for(item_id, settings.partitions)
        # The clock as the pipeline last settled it (each second on an active partition).
        window = windows.get(partition)
        saved = read_cell(sales_clocks, partition_key(partition), partition)
        clock = window.clock if window else EventClock.from_record(saved)
        now = clock.now(clock.wall_ms)
        watermark = clock.watermark(clock.wall_ms, SALES_SPEC.grace_ms)
        last = SALES_SPEC.pane_of(time_param(request, "at", now if now is not None else wall))
        if watermark is not None:
            check_retained(SALES_SPEC, last, watermark)
        panes = [
            {
                "pane_start": iso(SALES_SPEC.start_ms(pane)),
                "quantity": value_of(read_cell(sales_panes, pane_key(pane, item), partition), 0),
            }
            for pane in range(SALES_SPEC.first_pane(last), last + 1)
        ]
        return self.json(
            {
                "tenant": tenant,
                "item_id": item_id,
                **window_fields(last),
                "watermark": None if watermark is None else iso(watermark),
                # When the pipeline last settled the partition: the answer holds still
                # between settles, so a repeat within one is revalidated (a 304).
                "as_of": iso(clock.wall_ms or wall),
                "quantity": sum(p["quantity"] for p in panes),
                "panes": panes,
            }
        )
