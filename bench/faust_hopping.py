"""The baseline: Faust's own `.hopping(86400, 3600)` table doing the sales job, straightforwardly.

Run by bench/sales.py as `python -m bench.faust_hopping worker` with BENCH_* variables; decodes
the same Avro purchases with Tally's codec and adds each to 24 hourly-hopping windows by the
record's Kafka timestamp (= its event time). Once done it reports the top-10 of the window
starting at BENCH_WINDOW_START_MS, read back from the table.
"""

from __future__ import annotations

from datetime import timedelta

from bench.baseline import TOPIC, WINDOW_START_MS, Timing, baseline_codec, report_answer, top_items
from bench.faust_base import baseline_app

app = baseline_app()
codec = baseline_codec("purchases-value", "purchase")
purchases = app.topic(TOPIC, value_type=bytes)
hopping_sales = app.Table("hopping_sales", default=int).hopping(
    86400, 3600, expires=timedelta(hours=48)
)
timing = Timing()


def window_totals() -> dict[str, int]:
    """Every item's total in the reported window, from the table's own (key, window) records."""
    totals = {}
    for (item, (start, _end)), quantity in hopping_sales.table.items():
        if round(start * 1000) == WINDOW_START_MS:
            totals[item.decode() if isinstance(item, bytes) else item] = quantity
    return totals


@app.agent(purchases)
async def count(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        if timing.done():
            continue
        purchase = codec.loads(event.value)
        hopping_sales[purchase["item_id"]] += purchase["quantity"]
        timing.count()
        if timing.done():
            report_answer(top_items(window_totals()))


if __name__ == "__main__":
    app.main()
