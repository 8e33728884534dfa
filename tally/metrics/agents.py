"""Metrics pipeline glue: metric batches → minute rollups indexed by server and by metric.

1. `roll_up_samples` (metric-samples, partitioned by server, and metric-samples-routed: the
   batches other partitions forwarded to their server's partition, runtime.routing): decodes
   batches, forwards those of servers another partition owns, rejects bad samples one by one,
   classifies each sample against the partition's watermark (a sample of a final minute is
   late), folds the whole batch in memory (`fold_samples`), then merges
   each touched (server, minute) record of `server_rollups` once, skipping samples a record
   already holds (redelivered: tables.applied); each touched server's whole rollup of the
   minute goes, grouped by metric, to `metric-rollups-by-metric`.
2. `index_by_metric` (that topic, partitioned by metric) puts them into `metric_rollups`,
   per server and across servers, so a by-metric query reads one partition.
3. `close_minutes` (a tick per owned partition per second, on `metric-ticks`) emits every
   (server, minute) that became final to `metric-rollups-1m`, once, remembering how far it got in
   `metric_clocks`; and deletes minutes older than the retention, by event time. Event time
   passes on idle partitions too (the clock advances at wall speed), so minutes close without
   traffic.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from faust.types import EventT, StreamT

from tally.app import app, settings
from tally.codecs.avro import Record, check_event_time, validate_metric_sample
from tally.codecs.catalog import metric_batch_codec
from tally.core.applied import Source, Stamped, apply_server_rollups, holds, reach, stamp, value_of
from tally.core.clock import now_ms
from tally.core.errors import TallyError, ValidationError
from tally.core.limits import (
    MAX_METRICS_PER_SERVER_MINUTE,
    MESSAGE_MAX_BYTES,
    RecordTooLarge,
    bounded_chunks,
)
from tally.core.partitioning import partition_for
from tally.core.rollups import (
    Acc,
    Cells,
    IndexUpdate,
    Judged,
    Rollup,
    final_before,
    fold_samples,
    hot_horizon,
    merge_cells,
    minute_of,
    room_for_all,
    room_for_metrics,
)
from tally.core.tenancy import letter_tenant, scoped, tenant_of, unscoped
from tally.metrics.prefold import Prefolded, prefold
from tally.metrics.state import (
    PartitionState,
    index_pruned_through,
    index_watermark,
    state_for,
    states,
)
from tally.metrics.tables import (
    GRACE_MS,
    PER_SERVER,
    RETENTION_MS,
    SERIES_PARTS,
    metric_clocks,
    metric_index_watermarks,
    metric_rollups,
    metric_ticks,
    minute_key,
    rollups_1m,
    rollups_by_metric,
    server_rollups,
    split_key,
)
from tally.runtime.cells import flush, has_cell, place, read_cell, write_cell, write_cells
from tally.runtime.intake import (
    by_partition,
    caught_up,
    decode,
    each_partition,
    reject,
    timer,
)
from tally.runtime.offload import Ahead, offload
from tally.runtime.routing import (
    Forwarded,
    announce,
    announcement,
    forward,
    hear_all,
    is_forwarded,
    source_of,
)
from tally.runtime.store import delete_below, first_parts, partition_key, scan, stored_value
from tally.runtime.topics import (
    dead_letters,
    late_events,
    metric_samples,
    routed_metric_samples,
    with_routed,
)
from tally.telemetry import EVENTS, PREFOLDED

#: Longer batches than the sales pipeline's: each batch writes every (server, minute) and
#: (metric, minute) it touched, so fewer batches mean fewer writes; half a second more delay
#: is small next to the grace (10 s by default) every minute waits anyway.
METRICS_BATCH_WITHIN_S = 0.5
MAX_FUTURE_MS = int(settings.max_future_seconds * 1000)
#: Ticks are taken at least this often (take_events waits this long between batches).
TICK_WITHIN_S = 0.05


class LateSample(TallyError):
    """A sample of a minute that was already final when it arrived."""

    rule = "late"


class TooManyMetrics(TallyError):
    """A sample of a metric new to a server's minute that already holds the most metrics
    one minute record may (tally.core.limits.MAX_METRICS_PER_SERVER_MINUTE)."""

    rule = "too_many_metrics"


def one_sample(batch: Record, sample: Record) -> bytes:
    """A batch holding one sample: how a rejected or late sample is kept on its own."""
    return metric_batch_codec().dumps({**batch, "samples": [sample]})


def why_invalid(sample: Record, wall: int) -> ValidationError:
    """The validators' reason for a sample `fold_samples` found invalid (its fast checks and
    these validators are one rule, tested to agree)."""
    try:
        validate_metric_sample(sample)
        check_event_time("ts_ms", sample["ts_ms"], wall, MAX_FUTURE_MS)
    except ValidationError as exc:
        return exc
    raise AssertionError(f"fold_samples and the validators disagree on {sample!r}")


async def roll_up_partition(events: Sequence[EventT]) -> None:
    state = state_for(events[0].message.partition)
    state.folding = True  # the batch awaits dead-letter sends: the tick may run meanwhile
    try:
        await roll_up(state, events)
    finally:
        state.folding = False


@dataclass
class Folding:
    """One partition's batch, folded in memory before any table is touched."""

    #: Servers here are `scoped` by their tenant (core.tenancy), as the tables key them.
    #: (server, minute) → its stored record, read once per batch (core.applied).
    stored: dict[tuple[str, int], Stamped | None] = field(default_factory=dict)
    #: server → minute → metric → rollup of the batch's fresh samples.
    folded: dict[str, dict[int, Cells]] = field(default_factory=lambda: defaultdict(dict))
    #: (server, minute) → metrics whose samples were already in the record (redelivered).
    redelivered: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    counted: int = 0
    repeated: int = 0
    #: Messages taken as they were folded ahead (metrics.prefold), and those taken back.
    prefolded: int = 0
    taken_back: int = 0


async def roll_up(state: PartitionState, events: Sequence[EventT]) -> None:
    """One partition's share of a batch, step by step: decode (and reject), skip what the
    records already hold, fold (setting aside invalid, crowded and late samples), persist each
    touched (server, minute) once, send the by-metric index its whole rollups."""
    partition = events[0].message.partition
    wall = now_ms()
    # A batch of its own means the partition was not idle: the wall time since the last
    # settle does not count. One forwarded to it says nothing of its own source.
    own = not is_forwarded(events[0])
    state.clock.settle(wall, not own and own_source_idle(partition, state) is True)
    messages = [event for event in events if announcement(event) is None]
    forwarded = Forwarded()
    folding = Folding()
    decoded = [
        (event, batch)
        for event in messages
        if (batch := await owned(event, state, wall, forwarded, folding))
    ]
    await forwarded.acknowledged()
    for event, batch in decoded:
        if isinstance(batch, Prefolded):
            if fold_prefolded(state, folding, event, batch, wall):
                continue
            folding.taken_back += 1
            if (batch := await decode(event, metric_batch_codec())) is None:
                continue
        await fold_message(state, folding, event, batch, wall)
    forwarded.move(state.clock, wall)  # its own messages, counted elsewhere: its clock
    hear_all(state.clock, events)  # after the batch: an announcement follows what it covers
    records = persist(messages, events[-1], state, folding)
    EVENTS.labels(metric_samples.get_topic_name(), "counted").inc(folding.counted)
    EVENTS.labels(metric_samples.get_topic_name(), "redelivered").inc(folding.repeated)
    PREFOLDED.labels("folded").inc(folding.prefolded)
    PREFOLDED.labels("taken back").inc(folding.taken_back)
    watermark = state.clock.watermark(wall, GRACE_MS)
    await send_to_metric_index(touched(folding, records), partition, watermark)
    if own:
        await announce(metric_samples, partition, state.clock.own_watermark(wall, GRACE_MS), False)


def own_source_idle(partition: int, state: PartitionState) -> bool | None:
    """Whether the partition's metric samples are all processed (None: unknown yet). Idle when
    its own partition is: what others forward is covered by their announcements."""
    return caught_up(metric_samples, partition, state.offset, roll_up_partition)


async def fold_message(
    state: PartitionState, folding: Folding, event: EventT, batch: Record, wall: int
) -> None:
    """One message's fresh samples into the batch's fold; the others set aside, each alone."""
    server = scoped(tenant_of(batch, settings.default_tenant), batch["server_id"])
    samples = batch["samples"]
    fresh = unapplied(
        event.message.partition,
        server,
        samples,
        source_of(event),
        folding.stored,
        folding.redelivered,
    )
    folding.repeated += len(samples) - len(fresh)
    # The message arrives as a whole: its samples are judged against the watermark before
    # it, so samples of one message never make each other late.
    watermark = state.clock.judging(wall, GRACE_MS, own=not is_forwarded(event))
    judged = fold_samples(
        fresh,
        folding.folded[server],
        state.closed_before(watermark),
        wall + MAX_FUTURE_MS,
        room_for_metrics(stored_cells(folding.stored, server), MAX_METRICS_PER_SERVER_MINUTE),
    )
    set_aside = [
        *((fresh[i], why_invalid(fresh[i], wall), "validate") for i in judged.invalid),
        *((fresh[i], crowded(server, fresh[i]), "validate") for i in judged.crowded),
        *((fresh[i], late(fresh[i], watermark), "late") for i in judged.late),
    ]
    for sample, why, stage in set_aside:
        to = late_events if stage == "late" else dead_letters
        value = one_sample(batch, sample)
        await reject(
            event,
            why,
            stage=stage,
            value=value,
            to=to,
            tenant=unscoped(server)[0],
        )
    state.late_events += len(judged.late)
    folded(state, folding, event, judged, wall)


def fold_prefolded(
    state: PartitionState, folding: Folding, event: EventT, batch: Prefolded, wall: int
) -> bool:
    """A message the offload process folded (metrics.prefold) into the batch's fold, when
    `fold_message` would take every sample of it as it is: none ahead of the clock, of a
    final minute, of a record already holding the message, or of a metric with no room."""
    if batch.newest_ts > wall + MAX_FUTURE_MS:
        return False
    server = scoped(tenant_of({"tenant": batch.tenant}, settings.default_tenant), batch.server_id)
    minutes = batch.minutes
    if held_minutes(event.message.partition, server, minutes, source_of(event), folding.stored):
        return False
    closed = state.closed_before(state.clock.judging(wall, GRACE_MS, own=not is_forwarded(event)))
    if closed is not None and batch.oldest_minute < closed:
        return False
    into = folding.folded[server]
    held = stored_cells(folding.stored, server)
    for minute, cells in minutes.items():
        if not room_for_all(
            held(minute), into.get(minute, {}), cells, MAX_METRICS_PER_SERVER_MINUTE
        ):
            return False
    for minute, cells in minutes.items():
        merge_cells(into.setdefault(minute, {}), cells)
    folding.prefolded += 1
    folded(
        state,
        folding,
        event,
        Judged(counted=batch.samples, newest_ts=batch.newest_ts, oldest_minute=batch.oldest_minute),
        wall,
    )
    return True


def folded(
    state: PartitionState, folding: Folding, event: EventT, judged: Judged, wall: int
) -> None:
    """A message's folded samples move the partition's clock and first minute."""
    if judged.newest_ts is not None and judged.oldest_minute is not None:
        if not is_forwarded(event):  # forwarded samples do not move the clock (EventClock)
            state.clock.observe(judged.newest_ts, wall)
        if state.final_through is None and (
            state.first_minute is None or judged.oldest_minute < state.first_minute
        ):
            state.first_minute = judged.oldest_minute
    folding.counted += judged.counted


def crowded(server: str, sample: Record) -> TooManyMetrics:
    tenant, server_id = unscoped(server)
    return TooManyMetrics(
        f"server {server_id!r} of tenant {tenant!r} already has "
        f"{MAX_METRICS_PER_SERVER_MINUTE} metrics in minute "
        f"{minute_of(sample['ts_ms'])}; metric {sample['metric_id']!r} is one more"
    )


def late(sample: Record, watermark: int | None) -> LateSample:
    return LateSample(
        f"sample at {sample['ts_ms']} belongs to minute {minute_of(sample['ts_ms'])}, final "
        f"since the watermark passed its end (watermark {watermark})"
    )


def persist(
    messages: Sequence[EventT], context: EventT, state: PartitionState, folding: Folding
) -> dict[tuple[str, int], Cells]:
    """Each touched (server, minute) record written once, stamped with how far the batch's
    `messages` reach in each source (core.applied); then the partition's clock, with the
    offset of the batch's last event (`context`) if it is the partition's own (idle:
    caught_up). Returns the records as written."""
    through = reach(source_of(message) for message in messages)
    records: dict[tuple[str, int], Cells] = {}
    partition = context.message.partition
    for server, minutes in folding.folded.items():
        for minute, cells in minutes.items():
            stored = folding.stored[(server, minute)]
            records[(server, minute)] = merged = merge_cells(value_of(stored, {}), cells)
            record = stamp(merged, through, stored)
            write_cell(server_rollups, minute_key(server, minute), record, partition)
        if minutes:
            state.servers.add(server)
    if not is_forwarded(context):
        state.offset = context.message.offset
    write_cell(metric_clocks, partition_key(partition), state.record(), partition)
    return records


def touched(
    folding: Folding, records: dict[tuple[str, int], Cells]
) -> list[tuple[str, int, Iterable[str], Cells | None]]:
    """What the by-metric index gets: each touched (server, minute, metric)'s whole rollup so
    far. Taking it twice changes nothing there, and a redelivered message re-sends what its
    first delivery may have sent before a crash."""
    redelivered = folding.redelivered
    fresh: list[tuple[str, int, Iterable[str], Cells | None]] = [
        (
            server,
            minute,
            {*folding.folded[server][minute], *redelivered.get((server, minute), ())},
            record,
        )
        for (server, minute), record in records.items()
    ]
    return fresh + [
        (server, minute, metrics, value_of(folding.stored[(server, minute)]))
        for (server, minute), metrics in redelivered.items()
        if (server, minute) not in records
    ]


async def owned(
    event: EventT, state: PartitionState, wall: int, forwarded: Forwarded, folding: Folding
) -> Record | Prefolded | None:
    """The event's metric batch (as the offload process folded it, when it did), if it
    decodes and its server belongs to this partition; else None after forwarding it to its
    server's partition (noted in `forwarded`: it moves this partition's clock, being one of
    its own messages) or dead-lettering it."""
    partition = event.message.partition
    prefolded = await prefolds.take(event)
    if prefolded is not None:
        if partition_for(prefolded.server_id, settings.partitions) == partition:
            return prefolded
        folding.taken_back += 1
    batch = await decode(event, metric_batch_codec())
    if batch is None:
        return None
    owner = partition_for(batch["server_id"], settings.partitions)
    if owner == partition:
        return batch
    if not is_forwarded(event):
        delivery = await forward(event, owner)
        samples = batch["samples"]
        forwarded.add([delivery], (s["ts_ms"] for s in samples if isinstance(s.get("ts_ms"), int)))
        return None
    misrouted = ValidationError(
        f"server {batch['server_id']!r} belongs to partition {owner} (murmur2 of the server "
        f"id), but its batch was forwarded to partition {partition}: do all workers have the "
        "same TALLY_PARTITIONS as the topic?",
        "misrouted",
    )
    await reject(
        event, misrouted, stage="validate", tenant=letter_tenant(batch, settings.default_tenant)
    )
    return None


def stored_cells(
    stored: dict[tuple[str, int], Stamped | None], server: str
) -> Callable[[int], Cells]:
    """A server's stored rollups of a minute (read for the batch by `unapplied`)."""

    def held(minute: int) -> Cells:
        cells: Cells = value_of(stored.get((server, minute))) or {}
        return cells

    return held


def unapplied(
    partition: int,
    server: str,
    samples: list[Record],
    origin: tuple[Source, int],
    stored: dict[tuple[str, int], Stamped | None],
    redelivered: dict[tuple[str, int], set[str]],
) -> list[Record]:
    """The samples of a message from `origin` (core.applied) that their (server, minute)
    record does not hold yet; the others are noted in `redelivered`. Reads each record once
    per batch (into `stored`); a message delivered once (the usual case) passes whole."""
    held = held_minutes(
        partition, server, {minute_of(sample["ts_ms"]) for sample in samples}, origin, stored
    )
    if not held:
        return samples
    fresh = []
    for sample in samples:
        minute = minute_of(sample["ts_ms"])
        if minute in held:
            redelivered[(server, minute)].add(sample["metric_id"])
        else:
            fresh.append(sample)
    return fresh


def held_minutes(
    partition: int,
    server: str,
    minutes: Iterable[int],
    origin: tuple[Source, int],
    stored: dict[tuple[str, int], Stamped | None],
) -> set[int]:
    """Which of a message's `minutes` their (server, minute) record already holds it in
    (core.applied); each record read once per batch, into `stored`."""
    held = set()
    for minute in minutes:
        key = (server, minute)
        if key not in stored:
            stored[key] = read_cell(server_rollups, minute_key(server, minute), partition)
        if holds(stored[key], origin[1], origin[0]):
            held.add(minute)
    return held


async def send_to_metric_index(
    touched: list[tuple[str, int, Iterable[str], Cells | None]],
    partition: int,
    watermark: int | None,
) -> None:
    """Whole rollups for the by-metric index, grouped by the partition that owns each metric:
    one message per destination partition, written there explicitly (murmur2 of the metric,
    as routing uses)."""
    destinations: dict[str, int] = {}
    by_destination: dict[int, list[tuple[str, int, str, Acc]]] = defaultdict(list)
    for server, minute, metrics, record in touched:
        if record is None:
            continue
        tenant, server_id = unscoped(server)
        for metric in metrics:
            acc = record.get(metric)
            if acc is None:
                continue  # every sample of it was invalid or late
            destination = destinations.get(metric)
            if destination is None:
                destination = destinations[metric] = partition_for(metric, settings.partitions)
            by_destination[destination].append((scoped(tenant, metric), minute, server_id, acc))
    for destination, rollups in by_destination.items():
        for part in bounded_chunks(rollups, cell_size, len(rollups), MESSAGE_MAX_BYTES):
            await rollups_by_metric.send(
                key=b"partials",
                partition=destination,
                value=IndexUpdate(partition, watermark, part).to_json(),
            )


def cell_size(cell: tuple[str, int, str, Acc]) -> int:
    """A rollup's JSON size in an update, near enough: its two ids (UTF-8) and five numbers."""
    return len(cell[0].encode()) + len(cell[2].encode()) + 120


#: What the offload process made of the current batch's messages.
prefolds: Ahead[Prefolded] = Ahead(offload)
#: Envelopes per call of the offload process (~500 samples each: ~1 ms there): the worker
#: starts on a partition's share once its first call is back.
PREFOLD_CHUNK = 25


def prefold_ahead(events: Sequence[EventT]) -> None:
    """A batch's metric batches handed to the offload process, partition by partition in the
    order the worker processes them, a chunk per call."""
    if not offload.processes:
        return
    codec = metric_batch_codec()
    calls = []
    for share in by_partition(events).values():
        messages = [e for e in share if isinstance(e.value, bytes) and announcement(e) is None]
        for start in range(0, len(messages), PREFOLD_CHUNK):
            chunk = messages[start : start + PREFOLD_CHUNK]
            payloads = [event.value for event in chunk]
            calls.append((chunk, (payloads, codec.readings_of(payloads), codec.validate)))
    prefolds.start(prefold, calls)


@app.agent(with_routed(metric_samples, routed_metric_samples))
async def roll_up_samples(stream: StreamT) -> None:
    await each_partition(
        stream, roll_up_partition, states, within=METRICS_BATCH_WITHIN_S, ahead=prefold_ahead
    )


@timer(interval=1.0)
async def tick_owned_partitions() -> None:
    """One tick per owned metric-samples partition with state (which an announcement heard
    creates too); one with none yet announces it holds no other partition back
    (runtime.routing)."""
    if not app.ready:
        return
    for tp in app.assignor.assigned_actives():
        if tp.topic != metric_samples.get_topic_name():
            continue
        if tp.partition in states or has_cell(
            metric_clocks, partition_key(tp.partition), tp.partition
        ):
            await metric_ticks.send(key=b"tick", value={}, partition=tp.partition)
        else:  # no sample yet: it holds no other partition back while none waits
            idle = caught_up(metric_samples, tp.partition, None, roll_up_partition)
            await announce(metric_samples, tp.partition, None, idle)


async def close_ticked(events: Sequence[EventT]) -> None:
    for event in events:
        await close_partition_minutes(event)


@app.agent(metric_ticks)
async def close_minutes(stream: StreamT) -> None:
    await each_partition(stream, close_ticked, states, within=TICK_WITHIN_S)


async def close_partition_minutes(event: EventT) -> None:
    """Emit the minutes that became final, then remember it; then apply the retention."""
    partition = event.message.partition
    state = state_for(partition)
    if state.folding:
        return  # the next tick, a second later, sees the batch written
    wall = now_ms()
    idle = own_source_idle(partition, state)
    if idle is None:
        return  # backlog unknown (just assigned): wait, rather than close minutes too early
    state.clock.settle(wall, idle)
    await announce(metric_samples, partition, state.clock.own_watermark(wall, GRACE_MS), idle)
    watermark = state.clock.watermark(wall, GRACE_MS)
    if watermark is None:
        return
    end = final_before(watermark)  # minutes before `end` are final
    start = state.final_through if state.final_through is not None else state.first_minute
    if start is not None and end is not None and start < end:
        closing = [
            (server, split_key(key)[1], value_of(stored_value(value)))
            for server in sorted(state.servers)
            for key, value in scan(
                server_rollups, partition, minute_key(server, start), minute_key(server, end)
            )
        ]
        # Closed from now on for the sample agent too, before the first await below; recorded
        # (persisted) only once the sends are acknowledged, so a crash in between re-emits
        # rather than loses; and written out at once (not at the next commit), so that window
        # is a round trip, not a commit interval. The minutes' rollups are written first
        # (acknowledged before the clock is sent): samples redelivered after a crash would be
        # late for a minute recorded final, and the tables must hold them already.
        state.final_through = end
        sent = [
            await rollups_1m.send(
                key=f"{server}|{minute}".encode(), value=final_minute_value(server, minute, cells)
            )
            for server, minute, cells in closing
        ]
        await asyncio.gather(*sent)
        state.emitted_through = end
        write_cell(metric_clocks, partition_key(partition), state.record(), partition)
        await flush([place(server_rollups, partition)], acknowledged=True)
        await flush([place(metric_clocks, partition)])
    # The by-metric index learns this partition's watermark even when it sends no data, so
    # an idle server partition does not hold back its retention and open minutes.
    for destination in range(settings.partitions):
        await rollups_by_metric.send(
            key=b"partials",
            partition=destination,
            value=IndexUpdate(partition, watermark).to_json(),
        )
    horizon = hot_horizon(watermark, RETENTION_MS)
    if horizon > state.pruned_through:
        for server in state.servers:
            delete_below(
                server_rollups,
                partition,
                minute_key(server, horizon),
                start=minute_key(server, 0),
            )
        state.pruned_through = horizon


def final_minute_value(server: str, minute: int, cells: Cells) -> dict[str, object]:
    """A metric-rollups-1m value: a (`scoped`) server's final minute."""
    tenant, server_id = unscoped(server)
    return {
        "tenant": tenant,
        "server_id": server_id,
        "minute_ms": minute,
        "metrics": {metric: Rollup.from_list(acc).fields() for metric, acc in cells.items()},
    }


async def index_partition(events: Sequence[EventT]) -> None:
    """Servers' whole rollups → each touched (metric, minute)'s per-server and all-servers
    records, each written once per batch (tables.applied.apply_server_rollups: a rollup taken
    twice changes nothing). A (metric, minute) whose record would outgrow a changelog record
    (too many servers) keeps what it has; the rollups that did not fit are dead-lettered."""
    updates: dict[tuple[str, int], list[tuple[int, str, Acc]]] = defaultdict(list)
    watermarks: dict[int, int] = {}
    for event in events:
        update = IndexUpdate.from_json(cast(dict[str, Any], event.value))  # JSON
        offset = event.message.offset
        for metric, minute, server, acc in update.cells:
            updates[(metric, minute)].append((offset, server, acc))
        if update.watermark_ms is not None:
            upstream = update.upstream
            watermarks[upstream] = max(watermarks.get(upstream, 0), update.watermark_ms)
    last = events[-1].message.offset
    indexed = 0
    #: (metric, minute, one message's rollups, why) of each message that did not fit.
    refused: list[tuple[str, int, list[tuple[int, str, Acc]], RecordTooLarge]] = []
    partition = events[0].message.partition
    for (metric, minute), rollups in updates.items():
        try:
            indexed += index_minute(partition, metric, minute, rollups, last)
            continue
        except RecordTooLarge:
            pass
        # Too many servers for one record: message by message, so the rollups that fit
        # are kept and only the messages that no longer fit are refused.
        for offset, carried in by_message(rollups).items():
            try:
                indexed += index_minute(partition, metric, minute, carried, offset)
            except RecordTooLarge as exc:
                refused.append((metric, minute, carried, exc))
    for upstream, watermark in watermarks.items():
        key = partition_key(upstream)
        known = read_cell(metric_index_watermarks, key, partition) or 0
        write_cell(metric_index_watermarks, key, max(known, watermark), partition)
    EVENTS.labels(rollups_by_metric.get_topic_name(), "counted").inc(indexed)
    by_offset = {event.message.offset: event for event in events}
    for metric, minute, rollups, why in refused:
        offset = rollups[0][0]
        cells = [(metric, minute, server, acc) for _, server, acc in rollups]
        sender = IndexUpdate.from_json(cast(dict[str, Any], by_offset[offset].value)).upstream
        value = json.dumps(IndexUpdate(sender, None, cells).to_json()).encode()
        key = f"{metric}|{minute}".encode()
        whose = unscoped(metric)[0]  # a `scoped` metric
        await reject(by_offset[offset], why, stage="process", value=value, key=key, tenant=whose)
    prune_metric_index(partition)


def index_minute(
    partition: int, metric: str, minute: int, rollups: list[tuple[int, str, Acc]], through: int
) -> int:
    """A (metric, minute)'s per-server and all-servers records with `rollups` taken; returns
    the samples it added. Raises RecordTooLarge before writing anything."""
    per_server, total = minute_key(metric, minute, PER_SERVER), minute_key(metric, minute)
    before = value_of(read_cell(metric_rollups, total, partition))
    servers, merged = apply_server_rollups(
        read_cell(metric_rollups, per_server, partition), rollups, through
    )
    write_cells(metric_rollups, {per_server: servers, total: merged}, partition)
    return int(value_of(merged)[3] - (before[3] if before else 0))


def by_message(rollups: list[tuple[int, str, Acc]]) -> dict[int, list[tuple[int, str, Acc]]]:
    """Rollups grouped by the offset of the message that carried them, in offset order."""
    grouped: dict[int, list[tuple[int, str, Acc]]] = defaultdict(list)
    for rollup in rollups:
        grouped[rollup[0]].append(rollup)
    return dict(sorted(grouped.items()))


@app.agent(rollups_by_metric)
async def index_by_metric(stream: StreamT) -> None:
    await each_partition(
        stream, index_partition, index_pruned_through, within=METRICS_BATCH_WITHIN_S
    )


def prune_metric_index(partition: int) -> None:
    """Drop minutes older than the retention, by the slowest upstream partition's watermark."""
    watermark = index_watermark(partition)
    if watermark is None:
        return
    horizon = hot_horizon(watermark, RETENTION_MS)
    if horizon > (index_pruned_through.get(partition) or 0):
        for metric in list(first_parts(metric_rollups, partition, SERIES_PARTS)):
            delete_below(
                metric_rollups,
                partition,
                minute_key(metric, horizon),
                start=minute_key(metric, 0),
            )
        index_pruned_through[partition] = horizon
