"""The baseline: Faust's own `.hopping(86400, 3600)` table doing the sales job, straightforwardly.

Run by bench/sales.py as `python -m bench.faust_hopping worker` with BENCH_* variables; decodes
the same Avro purchases with Tally's codec, adds each to 24 hourly-hopping windows by the
record's Kafka timestamp (= its event time), and prints one line when BENCH_EXPECT are done.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import faust

from tally.codecs.avro import AvroCodec, load_schema
from tally.codecs.registry import FileSchemaRegistry

EXPECT = int(os.environ["BENCH_EXPECT"])

app = faust.App(
    os.environ["BENCH_APP_ID"],
    broker=os.environ["BENCH_BROKER"],
    store="rocksdb://",
    datadir=os.environ["BENCH_DATA_DIR"],
    web_enabled=False,
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "4")),
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
)
codec = AvroCodec(
    FileSchemaRegistry(Path(os.environ["BENCH_DATA_DIR"]) / "registry"),
    "purchases-value",
    load_schema("purchase"),
)
purchases = app.topic("purchases", value_type=bytes)
hopping_sales = app.Table("hopping_sales", default=int).hopping(
    86400, 3600, expires=timedelta(hours=48)
)
state = {"seen": 0, "started": 0.0}


@app.agent(purchases)
async def count(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        if state["seen"] >= EXPECT:
            continue  # done: the changelog then holds exactly EXPECT events' writes
        if not state["seen"]:
            state["started"] = time.monotonic()
        purchase = codec.loads(event.value)
        hopping_sales[purchase["item_id"]] += purchase["quantity"]
        state["seen"] += 1
        if state["seen"] == EXPECT:
            elapsed = time.monotonic() - state["started"]
            print(f"BENCH done {EXPECT} {elapsed:.4f}", flush=True)


if __name__ == "__main__":
    app.main()
