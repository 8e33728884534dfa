"""The baseline: Faust's own `.tumbling(60)` table rolling up metric samples, one per message.

Run by bench/metrics.py as `python -m bench.faust_tumbling worker` with BENCH_* variables; each
message is a MetricBatch holding one sample (decoded with Tally's codec); the table keeps
[min, max, sum, count] per "<server>|<metric>" per minute of the record's Kafka timestamp
(= the sample's time).
"""

from __future__ import annotations

import os
from datetime import timedelta

from bench.faust_base import Timing, baseline_app, baseline_codec

app = baseline_app()
codec = baseline_codec("metric-samples-value", "metric_batch")
samples = app.topic(os.environ.get("BENCH_TOPIC", "metric-singles"), value_type=bytes)
rollups = app.Table("tumbling_rollups", default=list).tumbling(60, expires=timedelta(days=2))
timing = Timing()


@app.agent(samples)
async def roll_up(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        if timing.done():
            continue
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
        timing.count()


if __name__ == "__main__":
    app.main()
