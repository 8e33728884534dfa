"""The baseline: Faust's own `.tumbling(60)` table rolling up metric samples, one per message.

Run by bench/metrics.py as `python -m bench.faust_tumbling worker` with BENCH_* variables; each
message is a MetricBatch holding one sample (decoded with Tally's codec); the table keeps
[min, max, sum, count] per "<server>|<metric>" per minute of the record's Kafka timestamp
(= the sample's time). Prints one line when BENCH_EXPECT samples are done.
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
    "metric-samples-value",
    load_schema("metric_batch"),
)
samples = app.topic(os.environ.get("BENCH_TOPIC", "metric-singles"), value_type=bytes)
rollups = app.Table("tumbling_rollups", default=list).tumbling(60, expires=timedelta(days=2))
state = {"seen": 0, "started": 0.0}


@app.agent(samples)
async def roll_up(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        if state["seen"] >= EXPECT:
            continue  # done: the changelog then holds exactly EXPECT events' writes
        if not state["seen"]:
            state["started"] = time.monotonic()
        batch = codec.loads(event.value)
        for sample in batch["samples"]:
            key = f"{batch['server_id']}|{sample['metric_id']}"
            value = sample["value"]
            current = rollups[key].current()
            rollups[key] = (
                [min(current[0], value), max(current[1], value), current[2] + value, current[3] + 1]
                if current
                else [value, value, value, 1]
            )
        state["seen"] += 1
        if state["seen"] == EXPECT:
            elapsed = time.monotonic() - state["started"]
            print(f"BENCH done {EXPECT} {elapsed:.4f}", flush=True)


if __name__ == "__main__":
    app.main()
