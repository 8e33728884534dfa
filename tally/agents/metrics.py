"""Metrics pipeline glue: metric batches → minute rollups indexed by server and by metric.

1. `roll_up_samples` (metric-samples, partitioned by server): decodes batches, rejects bad
   samples one by one, classifies each sample against the partition's watermark (a sample of
   a final minute is late), folds the rest into one rollup per (server, metric, minute) and
   merges each into `server_rollups` once per batch; the same partial rollups go, grouped by
   metric, to `metric-rollups-by-metric`.
2. `index_by_metric` (that topic, partitioned by metric) merges them into `metric_rollups`,
   per server and across servers, so a by-metric query reads one partition.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

from faust.types import EventT, TableT

from tally.agents.intake import by_partition, decode, reject, writing_for
from tally.app import app, settings
from tally.codecs.avro import Record, validate_metric_sample
from tally.errors import TallyError, ValidationError
from tally.tables.metrics import (
    cell_key,
    metric_clocks,
    metric_index_watermarks,
    metric_rollups,
    rollups_by_metric,
    server_rollups,
)
from tally.tables.rollups import Rollup, fold, is_final, minute_of
from tally.tables.store import partition_key
from tally.tables.windowing import EventClock
from tally.telemetry import EVENTS
from tally.topics import late_events, metric_batch_codec, metric_samples

BATCH_SIZE = 2000
BATCH_WITHIN_S = 0.1
GRACE_MS = int(settings.grace_seconds * 1000)


class LateSample(TallyError):
    """A sample of a minute that was already final when it arrived."""


def now_ms() -> int:
    return int(time.time() * 1000)


#: partition → its event clock (restored from `metric_clocks` on first use).
clocks: dict[int, EventClock] = {}
late_counts: dict[int, int] = defaultdict(int)


def clock_for(partition: int) -> EventClock:
    clock = clocks.get(partition)
    if clock is None:
        saved = metric_clocks.get(partition_key(partition)) or {}
        clock = clocks[partition] = EventClock(saved.get("event_ms"), saved.get("wall_ms", 0))
        late_counts[partition] = int(saved.get("late_events", 0))
    return clock


@app.on_partitions_revoked.connect
async def forget_revoked(sender: object, revoked: set, **kwargs: object) -> None:
    for tp in revoked:
        if tp.topic == metric_samples.get_topic_name():
            clocks.pop(tp.partition, None)


def one_sample(batch: Record, sample: Record) -> bytes:
    """A batch holding one sample: how a rejected or late sample is kept on its own."""
    return metric_batch_codec().dumps({**batch, "samples": [sample]})


async def roll_up_partition(events: Sequence[EventT]) -> None:
    partition = events[0].message.partition
    clock = clock_for(partition)
    wall = now_ms()
    accepted: list[tuple[tuple[str, str], int, float]] = []
    for event in events:
        batch = await decode(event, metric_batch_codec())
        if batch is None:
            continue
        for sample in batch["samples"]:
            try:
                validate_metric_sample(sample)
            except ValidationError as exc:
                await reject(event, exc, stage="validate", value=one_sample(batch, sample))
                continue
            clock.observe(sample["ts_ms"], wall)
            watermark = clock.watermark(wall, GRACE_MS)
            if is_final(minute_of(sample["ts_ms"]), watermark):
                late_counts[partition] += 1
                late = LateSample(
                    f"sample at {sample['ts_ms']} belongs to minute {minute_of(sample['ts_ms'])}, "
                    f"final since the watermark passed its end (watermark {watermark})"
                )
                await reject(
                    event, late, stage="late", value=one_sample(batch, sample), to=late_events
                )
                continue
            accepted.append(
                ((batch["server_id"], sample["metric_id"]), sample["ts_ms"], sample["value"])
            )
    folded = fold(accepted)
    with writing_for(events[-1]):
        for ((server, metric), minute), delta in folded.items():
            merge_into(server_rollups, cell_key(server, minute, metric), delta)
        metric_clocks[partition_key(partition)] = {
            "event_ms": clock.event_ms,
            "wall_ms": clock.wall_ms,
            "late_events": late_counts[partition],
        }
    EVENTS.labels(metric_samples.get_topic_name(), "counted").inc(len(accepted))
    by_metric: dict[str, list[list[object]]] = defaultdict(list)
    for ((server, metric), minute), delta in folded.items():
        by_metric[metric].append([minute, server, *delta.to_list()])
    watermark = clock.watermark(wall, GRACE_MS)
    for metric, cells in by_metric.items():
        await rollups_by_metric.send(
            key=metric.encode(),
            value={
                "metric": metric,
                "cells": cells,
                "upstream": partition,
                "watermark_ms": watermark,
            },
        )


def merge_into(table: TableT, key: bytes, delta: Rollup) -> None:
    old = table.get(key)
    merged = delta if old is None else Rollup.from_list(old).merge(delta)
    table[key] = merged.to_list()


@app.agent(metric_samples)
async def roll_up_samples(stream):  # type: ignore[no-untyped-def]
    async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
        for events in by_partition(batch).values():
            await roll_up_partition(events)


@app.agent(rollups_by_metric)
async def index_by_metric(stream):  # type: ignore[no-untyped-def]
    """Partial rollups by metric → per-server and all-server cells, merged once per batch."""
    async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
        for events in by_partition(batch).values():
            merged: dict[bytes, Rollup] = {}
            watermarks: dict[int, int] = {}
            for event in events:
                body = event.value
                for minute, server, *values in body["cells"]:
                    delta = Rollup.from_list(values)
                    for key in (
                        cell_key(body["metric"], minute, server),
                        cell_key(body["metric"], minute, ""),
                    ):
                        merged[key] = delta if key not in merged else merged[key].merge(delta)
                if body["watermark_ms"] is not None:
                    upstream = int(body["upstream"])
                    watermarks[upstream] = max(watermarks.get(upstream, 0), body["watermark_ms"])
            with writing_for(events[-1]):
                for key, delta in merged.items():
                    merge_into(metric_rollups, key, delta)
                for upstream, watermark in watermarks.items():
                    key = partition_key(upstream)
                    metric_index_watermarks[key] = max(
                        metric_index_watermarks.get(key) or 0, watermark
                    )
