"""How far this worker is: the partitions it holds, the changelog records still to restore, the
messages waiting on its source partitions. Read by `/api/health` and the Prometheus gauges."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from aiokafka.errors import KafkaError
from faust.types import TP

from tally.app import app, settings
from tally.core.stalls import Stalls
from tally.runtime.faust_compat import (
    committed_offset,
    delivery_state,
    fetching,
    log_gaps,
    read_again,
)
from tally.runtime.intake import (
    readers,
    slowest_processed,
    timer,
    unread,
    unread_keys,
)
from tally.runtime.restore import RestoringTableManager

logger = logging.getLogger(__name__)


def ownership() -> dict[str, list[str]]:
    """Table partitions this worker holds, as "topic[partition]" strings."""
    assignor = app.assignor
    return {
        "active": sorted(f"{tp.topic}[{tp.partition}]" for tp in assignor.assigned_actives()),
        "standby": sorted(f"{tp.topic}[{tp.partition}]" for tp in assignor.assigned_standbys()),
    }


def next_to_process(tp: TP) -> int | None:
    """The offset after the last one processed: this worker's record, else the committed
    (as the monitor saw it commit, else where Faust's consumer started reading it), else
    (nothing committed) the first offset the client fetched."""
    done = slowest_processed(tp.topic, tp.partition)
    if done is not None:
        return done + 1
    committed = app.monitor.tp_committed_offsets.get(tp)
    if committed is None:
        committed = committed_offset(app.consumer, tp)
    return committed if committed is not None else log_gaps.first((tp.topic, tp.partition))


def owned_sources() -> list[TP]:
    """The source partitions (of the agents' topics) this worker holds as active."""
    sources = set(app.source_topic_partitions())
    return [tp for tp in sorted(app.assignor.assigned_actives()) if tp.topic in sources]


def consumer_lag() -> dict[TP, int]:
    """Messages waiting on each source partition this worker owns (high watermark minus the
    next offset to process), where both are known."""
    lag: dict[TP, int] = {}
    for tp in owned_sources():
        try:
            highwater = app.consumer.highwater(tp)
        except AssertionError:  # aiokafka: no longer assigned
            continue
        position = next_to_process(tp)
        if highwater is not None and position is not None:
            lag[tp] = max(highwater - position, 0)
    return lag


def recovery() -> dict[str, Any]:
    """Changelog records still to read: actives (blocking answers) and standbys (catching up
    in the background); standby copies with a hole (unfit to answer from until mended) and
    the holes mended so far; and the last bulk restore's progress (None before the first)."""
    tables = cast(RestoringTableManager, app.tables).recovery
    return {
        "completed": tables.completed.is_set(),
        "active_records_remaining": tables.active_remaining_total(),
        "standby_records_remaining": tables.standby_remaining_total(),
        "standby_holes": {
            f"{tp.topic}[{tp.partition}]": hole
            for tp, hole in sorted(tables.standby_holes().items())
        },
        "standby_holes_mended": tables.holes_mended,
        "bulk_restore": tables.progress.describe() if tables.progress else None,
    }


def lag_by_topic() -> dict[str, int]:
    by_topic: dict[str, int] = {}
    for tp, waiting in consumer_lag().items():
        by_topic[tp.topic] = by_topic.get(tp.topic, 0) + waiting
    return by_topic


#: How long the stall watch waits for the broker's end offsets before trying next time.
END_OFFSETS_TIMEOUT_S = 10.0

#: Under exactly_once the offset after the last message may be a transaction's commit
#: marker, not a message: one offset is not counted as waiting then.
TRAILING_MARKER = 1 if settings.processing_guarantee == "exactly_once" else 0

#: Source partitions with messages waiting and none processed (core.stalls).
stalls = Stalls()


@timer(interval=5.0)
async def watch_for_stalls() -> None:
    """Warn, every `stalls.after_s` while it lasts, of a source partition whose messages wait
    and none is processed: what the agent and Faust's consumer know of it says where it hangs;
    one stuck on a hole is read again from it once its last reread had its patience
    (`Unread.patience_s`), long before the stall is worth a warning; so is one whose last
    messages were dropped with none after them (`dropped_tail`).
    What waits is counted from the broker's end offsets, not the client's last fetch: a
    partition the client stopped fetching would otherwise look caught up."""
    now = time.monotonic()
    owned = owned_sources() if app.ready else []  # restoring or rebalancing: not stalled
    known = {tp: position for tp in owned if (position := next_to_process(tp)) is not None}
    try:
        async with asyncio.timeout(END_OFFSETS_TIMEOUT_S):
            ends = await app.consumer.highwaters(*known) if known else {}
    except (KafkaError, TimeoutError):  # the broker is away: BrokerWatch says so
        return
    waiting = {
        tp: max(ends[tp] - known[tp] - TRAILING_MARKER, 0)
        for tp in known
        if ends.get(tp) is not None
    }
    for tp, count in waiting.items():
        stalls.observe(tp, known[tp], count, now, readers.window(tp.topic))
    stalls.keep_only(waiting)
    for tp, seconds in cast(dict[TP, float], stalls.due(now)).items():
        logger.warning(
            "%s[%s]: %d messages wait and none was processed for %.0f s: next to process %s, "
            "the log ends at %s; consumer: %s; %s",
            tp.topic,
            tp.partition,
            waiting[tp],
            seconds,
            known[tp],
            ends[tp],
            delivery_state(app.consumer, tp),
            "; ".join(unread.describe(key) for key in unread_keys(tp)) or "no hole",
        )
    for tp in cast(dict[TP, float], stalls.stalled(now, unread.patience_s)):
        keys = unread_keys(tp)
        if any(unread.hole(key) is not None for key in keys):
            holes = [hole for key in keys if (hole := unread.overdue(key, now)) is not None]
            if holes:
                hole = min(holes)
                # Its reread was dropped too (records fetched before the seek moved Faust's
                # read offset past it again), and no new message comes to try it again.
                logger.warning("%s[%s]: reading again from %s", tp.topic, tp.partition, hole)
                await read_again(app.consumer, tp, hole)
        elif dropped_tail(tp, known[tp], ends[tp], now) and stalls.reread_due(
            tp, now, unread.patience_s
        ):
            logger.warning(
                "%s[%s]: %d waiting message(s) from %s were fetched and no agent holds them "
                "(Faust drops what it fetched around a rebalance); reading again from there",
                tp.topic,
                tp.partition,
                waiting[tp],
                known[tp],
            )
            await read_again(app.consumer, tp, known[tp])


def dropped_tail(tp: TP, next_offset: int, end: int, now: float) -> bool:
    """Whether a stalled partition's messages from `next_offset` to `end` were fetched and
    dropped on their way to the agents, with none after them to show the hole: the client
    fetched one (not markers, which a reread would not bring either), it fetches the partition
    still, no agent reading the topic holds a message, and nothing moved it meanwhile (the
    watch's awaits let a rebalance through)."""
    return (
        log_gaps.holds((tp.topic, tp.partition))(next_offset, end)
        and fetching(app.consumer, tp)
        and readers.all_idle(tp.topic, now)
        and app.ready
        and next_to_process(tp) == next_offset
    )


def stalled() -> dict[str, float]:
    """ "topic[partition]" → seconds it has been stalled, for `/api/health`."""
    now = time.monotonic()
    partitions = cast(dict[TP, float], stalls.stalled(now))
    return {f"{tp.topic}[{tp.partition}]": round(s, 1) for tp, s in partitions.items()}
