"""The baseline: Faust's own `.hopping(86400, 3600)` table doing the sales job, straightforwardly.

Run by bench/sales.py as `python -m bench.faust_hopping worker` with BENCH_* variables; decodes
the same Avro purchases with Tally's codec and adds each to 24 hourly-hopping windows by the
record's Kafka timestamp (= its event time).
"""

from __future__ import annotations

from datetime import timedelta

from bench.faust_base import Timing, baseline_app, baseline_codec

app = baseline_app()
codec = baseline_codec("purchases-value", "purchase")
purchases = app.topic("purchases", value_type=bytes)
hopping_sales = app.Table("hopping_sales", default=int).hopping(
    86400, 3600, expires=timedelta(hours=48)
)
timing = Timing()


@app.agent(purchases)
async def count(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        if timing.done():
            continue
        purchase = codec.loads(event.value)
        hopping_sales[purchase["item_id"]] += purchase["quantity"]
        timing.count()


if __name__ == "__main__":
    app.main()
