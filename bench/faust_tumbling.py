"""The baseline: Faust's own `.tumbling(60)` table rolling up metric samples, one per message.

Run by bench/metrics.py as `python -m bench.faust_tumbling worker` with BENCH_* variables; each
message is a MetricBatch holding one sample (decoded with Tally's codec); the table keeps
[min, max, sum, count] per "<server>|<metric>" per minute of the record's Kafka timestamp
(= the sample's time). Once done it reports the minutes of the keys in BENCH_KEY_PREFIXES,
read back from the table.
"""

from __future__ import annotations

from datetime import timedelta

from bench.baseline import KEY_PREFIXES, TOPIC, Timing, baseline_codec, report_answer
from bench.faust_base import baseline_app

app = baseline_app()
codec = baseline_codec("metric-samples-value", "metric_batch")
samples = app.topic(TOPIC, value_type=bytes)
rollups = app.Table("tumbling_rollups", default=list).tumbling(60, expires=timedelta(days=2))
timing = Timing()


def reported_minutes() -> dict[str, list[float]]:
    """ "<key>|<minute ms>" → [min, max, count] of the reported keys, from the table."""
    found = {}
    for (key, (start, _end)), rollup in rollups.table.items():
        name = key.decode() if isinstance(key, bytes) else key
        if name.startswith(KEY_PREFIXES):
            found[f"{name}|{round(start * 1000)}"] = rollup
    return found


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
        if timing.done():
            report_answer(reported_minutes())


if __name__ == "__main__":
    app.main()
