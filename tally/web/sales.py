"""Sales views: `/api/sales/items/{item_id}`, routed to the worker that owns the item."""

from __future__ import annotations

import time

from faust.web import Request, Response, View

from tally.agents.sales import HOUR_MS, WINDOW_PANES, hourly_sales, pane_key
from tally.app import app
from tally.web.params import iso, require_ready, time_param


@app.page("/api/sales/items/{item_id}")
class ItemSales(View):
    """An item's 24-hour total and its hourly panes, for the window ending at `?at=` (now)."""

    async def get(self, request: Request, item_id: str) -> Response:
        require_ready()
        return await self.owned_item(request, item_id=item_id)

    @app.table_route(table=hourly_sales, match_info="item_id")
    async def owned_item(self, request: Request, item_id: str) -> Response:
        at_ms = time_param(request, "at", int(time.time() * 1000))
        last = at_ms // HOUR_MS
        panes = [
            {
                "pane_start": iso(hour * HOUR_MS),
                "quantity": hourly_sales.get(pane_key(item_id, hour), 0),
            }
            for hour in range(last - WINDOW_PANES + 1, last + 1)
        ]
        return self.json(
            {
                "item_id": item_id,
                "window_start": iso((last - WINDOW_PANES + 1) * HOUR_MS),
                "window_end": iso((last + 1) * HOUR_MS),
                "quantity": sum(p["quantity"] for p in panes),
                "panes": panes,
            }
        )
