"""Sales pipeline: purchases → hourly panes per item."""

from __future__ import annotations

from collections import Counter

from tally.agents.intake import by_partition, decode_events, writing_for
from tally.app import app
from tally.topics import purchase_codec, purchases

HOUR_MS = 3_600_000
WINDOW_PANES = 24
BATCH_SIZE = 2000
BATCH_WITHIN_S = 0.2

#: (item, hour) → units sold in that hour. Key: "<item_id>|<hour since epoch>".
hourly_sales = app.Table("hourly_sales", key_type=str, value_type=int, default=int)


def pane_key(item_id: str, hour: int) -> str:
    return f"{item_id}|{hour}"


@app.agent(purchases)
async def count_sales(stream):  # type: ignore[no-untyped-def]
    """Fold each batch into per-(item, hour) deltas, then touch each table key once."""
    async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
        for events in by_partition(batch).values():
            deltas: Counter[str] = Counter()
            for purchase in await decode_events(events, purchase_codec()):
                hour = purchase["event_time_ms"] // HOUR_MS
                deltas[pane_key(purchase["item_id"], hour)] += purchase["quantity"]
            with writing_for(events[-1]):
                for key, quantity in deltas.items():
                    hourly_sales[key] += quantity
