"""Metrics pipeline glue: metric batches → minute rollups indexed by server and by metric.

1. `roll_up_samples` (metric-samples, partitioned by server): decodes batches, rejects bad
   samples one by one, classifies each sample against the partition's watermark (a sample of
   a final minute is late), folds the rest into one rollup per (server, metric, minute) and
   merges each into `server_rollups` once per batch; the same partial rollups go, grouped by
   metric, to `metric-rollups-by-metric`.
2. `index_by_metric` (that topic, partitioned by metric) merges them into `metric_rollups`,
   per server and across servers, so a by-metric query reads one partition.
3. `close_minutes` (a tick per owned partition per second, on `metric-ticks`) emits every
   minute that became final to `metric-rollups-1m`, once, remembering how far it got in
   `metric_clocks`; and deletes minutes older than the retention, by event time. Event time
   passes on idle partitions too (the clock advances at wall speed), so minutes close without
   traffic.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from faust.types import EventT, StreamT, TableT

from tally.agents.intake import (
    check_event_time,
    decode,
    each_partition,
    forget_when_revoked,
    reject,
    writing_for,
)
from tally.app import app, settings
from tally.codecs.avro import Record, validate_metric_sample
from tally.errors import TallyError, ValidationError
from tally.partitioning import partition_for
from tally.tables.metrics import (
    RETENTION_MS,
    cell_key,
    metric_clocks,
    metric_index_watermarks,
    metric_rollups,
    metric_ticks,
    minute_bound,
    rollups_1m,
    rollups_by_metric,
    server_rollups,
    split_key,
)
from tally.tables.rollups import MINUTE_MS, Rollup, final_before, fold, minute_of
from tally.tables.store import delete_below, first_parts, partition_key, scan
from tally.tables.windowing import EventClock, now_ms
from tally.telemetry import EVENTS
from tally.topics import late_events, metric_batch_codec, metric_samples

GRACE_MS = int(settings.grace_seconds * 1000)
MAX_FUTURE_MS = int(settings.max_future_seconds * 1000)


class LateSample(TallyError):
    """A sample of a minute that was already final when it arrived."""


@dataclass
class PartitionState:
    """What this worker knows of one metric-samples partition it owns."""

    clock: EventClock
    late_events: int = 0
    #: Every minute before this was emitted to metric-rollups-1m (None: nothing yet).
    final_through: int | None = None
    #: The oldest minute accepted before anything was emitted: where emission starts.
    first_minute: int | None = None
    pruned_through: int = 0
    servers: set[str] = field(default_factory=set)

    def record(self) -> dict[str, object]:
        return {
            **self.clock.record(),
            "late_events": self.late_events,
            "final_through": self.final_through,
            "first_minute": self.first_minute,
        }

    def closed_before(self, watermark: int | None) -> int | None:
        """Minutes before this are final: by the watermark, or already emitted (a minute once
        emitted stays closed even if a later batch reads an older wall clock)."""
        by_watermark = final_before(watermark)
        if self.final_through is None:
            return by_watermark
        return self.final_through if by_watermark is None else max(by_watermark, self.final_through)


#: partition → its state, restored from `metric_clocks` (and a skip-scan of servers) on first use.
states: dict[int, PartitionState] = {}


def state_for(partition: int) -> PartitionState:
    state = states.get(partition)
    if state is None:
        saved = metric_clocks.get(partition_key(partition)) or {}
        state = states[partition] = PartitionState(
            clock=EventClock.from_record(saved),
            late_events=int(saved.get("late_events", 0)),
            final_through=saved.get("final_through"),
            first_minute=saved.get("first_minute"),
            servers=set(first_parts(server_rollups, partition)),
        )
    return state


forget_when_revoked(metric_samples, states)


def one_sample(batch: Record, sample: Record) -> bytes:
    """A batch holding one sample: how a rejected or late sample is kept on its own."""
    return metric_batch_codec().dumps({**batch, "samples": [sample]})


async def roll_up_partition(events: Sequence[EventT]) -> None:
    partition = events[0].message.partition
    state = state_for(partition)
    clock = state.clock
    wall = now_ms()
    accepted: list[tuple[tuple[str, str], int, float]] = []
    for event in events:
        batch = await decode(event, metric_batch_codec())
        if batch is None:
            continue
        # The message arrives as a whole: its samples are judged against the watermark before
        # it, so samples of one message never make each other late.
        watermark = clock.watermark(wall, GRACE_MS)
        closed = state.closed_before(watermark)
        server, newest = batch["server_id"], None
        owner = partition_for(server, settings.partitions)
        if owner != partition:
            misrouted = ValidationError(
                f"server {server!r} belongs to partition {owner} (murmur2 of the server id, "
                f"Kafka's default partitioner), but its batch came on partition {partition}"
            )
            await reject(event, misrouted, stage="validate")
            continue
        for sample in batch["samples"]:
            ts = sample["ts_ms"]
            try:
                validate_metric_sample(sample)
                check_event_time("ts_ms", ts, wall, MAX_FUTURE_MS)
            except ValidationError as exc:
                await reject(event, exc, stage="validate", value=one_sample(batch, sample))
                continue
            minute = ts - ts % MINUTE_MS
            if closed is not None and minute < closed:
                state.late_events += 1
                late = LateSample(
                    f"sample at {ts} belongs to minute {minute}, final since the watermark "
                    f"passed its end (watermark {watermark})"
                )
                await reject(
                    event, late, stage="late", value=one_sample(batch, sample), to=late_events
                )
                continue
            if state.final_through is None and (
                state.first_minute is None or minute < state.first_minute
            ):
                state.first_minute = minute
            accepted.append(((server, sample["metric_id"]), ts, sample["value"]))
            if newest is None or ts > newest:
                newest = ts
        if newest is not None:
            clock.observe(newest, wall)
    folded = fold(accepted)
    with writing_for(events[-1]):
        for ((server, metric), minute), delta in folded.items():
            merge_into(server_rollups, cell_key(server, minute, metric), delta)
            state.servers.add(server)
        metric_clocks[partition_key(partition)] = state.record()
    EVENTS.labels(metric_samples.get_topic_name(), "counted").inc(len(accepted))
    # The same partial rollups, grouped by the partition that owns each metric: one message per
    # destination partition, written there explicitly (murmur2 of the metric, as routing uses).
    by_destination: dict[int, list[list[object]]] = defaultdict(list)
    for ((server, metric), minute), delta in folded.items():
        destination = partition_for(metric, settings.partitions)
        by_destination[destination].append([metric, minute, server, *delta.to_list()])
    watermark = clock.watermark(wall, GRACE_MS)
    for destination, cells in by_destination.items():
        await rollups_by_metric.send(
            key=b"partials",
            partition=destination,
            value={"cells": cells, "upstream": partition, "watermark_ms": watermark},
        )


def merge_into(table: TableT, key: bytes, delta: Rollup) -> None:
    old = table.get(key)
    merged = delta if old is None else Rollup.from_list(old).merge(delta)
    table[key] = merged.to_list()


@app.agent(metric_samples)
async def roll_up_samples(stream: StreamT) -> None:
    await each_partition(stream, roll_up_partition, states)


@app.timer(interval=1.0)
async def tick_owned_partitions() -> None:
    """One tick per owned metric-samples partition that has ever had data."""
    if not app.ready:
        return
    for tp in app.assignor.assigned_actives():
        if tp.topic != metric_samples.get_topic_name():
            continue
        if tp.partition in states or partition_key(tp.partition) in metric_clocks:
            await metric_ticks.send(key=b"tick", value={}, partition=tp.partition)


@app.agent(metric_ticks)
async def close_minutes(stream: StreamT) -> None:
    async for event in stream.events():
        await close_partition_minutes(event)


async def close_partition_minutes(event: EventT) -> None:
    """Emit the minutes that became final, then remember it; then apply the retention."""
    partition = event.message.partition
    state = state_for(partition)
    watermark = state.clock.watermark(now_ms(), GRACE_MS)
    if watermark is None:
        return
    end = final_before(watermark)  # minutes before `end` are final
    start = state.final_through if state.final_through is not None else state.first_minute
    if start is not None and end is not None and start < end:
        closing = [
            (*split_key(key), Rollup.from_list(json.loads(value)))
            for server in sorted(state.servers)
            for key, value in scan(
                server_rollups, partition, minute_bound(server, start), minute_bound(server, end)
            )
        ]
        # Closed from now on for the sample agent too, before the first await below; recorded
        # (persisted) only after the sends, so a crash in between re-emits rather than loses.
        state.final_through = end
        for server, minute, metric, rollup in closing:
            await rollups_1m.send(
                key=f"{server}|{metric}|{minute}".encode(),
                value={
                    "server_id": server,
                    "metric_id": metric,
                    "minute_ms": minute,
                    "min": rollup.min,
                    "max": rollup.max,
                    "sum": rollup.sum,
                    "count": rollup.count,
                },
            )
        with writing_for(event):
            metric_clocks[partition_key(partition)] = state.record()
    # The by-metric index learns this partition's watermark even when it sends no data, so
    # an idle server partition does not hold back its retention and open minutes.
    for destination in range(settings.partitions):
        await rollups_by_metric.send(
            key=b"partials",
            partition=destination,
            value={"cells": [], "upstream": partition, "watermark_ms": watermark},
        )
    horizon = minute_of(watermark) - RETENTION_MS
    if horizon > state.pruned_through:
        for server in state.servers:
            delete_below(
                server_rollups,
                partition,
                minute_bound(server, horizon),
                start=minute_bound(server, 0),
            )
        state.pruned_through = horizon


async def index_partition(events: Sequence[EventT]) -> None:
    """Partial rollups → per-server and all-server cells, merged once per batch."""
    merged: dict[bytes, Rollup] = {}
    watermarks: dict[int, int] = {}
    for event in events:
        body = event.value
        for metric, minute, server, *values in body["cells"]:
            delta = Rollup.from_list(values)
            for key in (cell_key(metric, minute, server), cell_key(metric, minute, "")):
                merged[key] = delta if key not in merged else merged[key].merge(delta)
        if body["watermark_ms"] is not None:
            upstream = int(body["upstream"])
            watermarks[upstream] = max(watermarks.get(upstream, 0), body["watermark_ms"])
    with writing_for(events[-1]):
        for key, delta in merged.items():
            merge_into(metric_rollups, key, delta)
        for upstream, watermark in watermarks.items():
            key = partition_key(upstream)
            metric_index_watermarks[key] = max(metric_index_watermarks.get(key) or 0, watermark)
    prune_metric_index(events[0].message.partition)


@app.agent(rollups_by_metric)
async def index_by_metric(stream: StreamT) -> None:
    await each_partition(stream, index_partition, index_pruned_through)


#: metric-index partition → retention horizon already applied.
index_pruned_through: dict[int, int] = defaultdict(int)


def prune_metric_index(partition: int) -> None:
    """Drop minutes older than the retention, by the slowest upstream partition's watermark."""
    marks = [int(v) for _, v in scan(metric_index_watermarks, partition, b"", b"\xff")]
    if not marks:
        return
    horizon = minute_of(min(marks)) - RETENTION_MS
    if horizon > index_pruned_through[partition]:
        for metric in list(first_parts(metric_rollups, partition)):
            delete_below(
                metric_rollups,
                partition,
                minute_bound(metric, horizon),
                start=minute_bound(metric, 0),
            )
        index_pruned_through[partition] = horizon
