"""How far this worker is: the partitions it holds, the changelog records still to restore, the
messages waiting on its source partitions. Read by `/api/health` and the Prometheus gauges."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from faust.types import TP

from tally.app import app
from tally.core.stalls import Stalls
from tally.runtime.faust_compat import delivery_state
from tally.runtime.intake import processed_offsets, timer, unread
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
    """The offset after the last one processed: this worker's record, else the committed."""
    done = processed_offsets(tp.topic).get(tp.partition)
    if done is not None:
        return done + 1
    return app.monitor.tp_committed_offsets.get(tp)


def consumer_lag() -> dict[TP, int]:
    """Messages waiting on each source partition this worker owns (high watermark minus the
    next offset to process), where both are known."""
    lag: dict[TP, int] = {}
    sources = set(app.source_topic_partitions())
    for tp in sorted(app.assignor.assigned_actives()):
        if tp.topic not in sources:
            continue
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
    in the background); and the last bulk restore's progress (None before the first)."""
    tables = cast(RestoringTableManager, app.tables).recovery
    return {
        "completed": tables.completed.is_set(),
        "active_records_remaining": tables.active_remaining_total(),
        "standby_records_remaining": tables.standby_remaining_total(),
        "bulk_restore": tables.progress.describe() if tables.progress else None,
    }


def lag_by_topic() -> dict[str, int]:
    by_topic: dict[str, int] = {}
    for tp, waiting in consumer_lag().items():
        by_topic[tp.topic] = by_topic.get(tp.topic, 0) + waiting
    return by_topic


#: Source partitions with messages waiting and none processed (core.stalls).
stalls = Stalls()


@timer(interval=5.0)
async def watch_for_stalls() -> None:
    """Warn, every `stalls.after_s` while it lasts, of a source partition whose messages wait
    and none is processed: what the agent and Faust's consumer know of it says where it hangs."""
    now = time.monotonic()
    lag = consumer_lag() if app.ready else {}  # restoring or rebalancing: not stalled
    for tp, waiting in lag.items():
        position = next_to_process(tp)
        if position is not None:
            stalls.observe(tp, position, waiting, now)
    stalls.keep_only(lag)
    for tp, seconds in cast(dict[TP, float], stalls.due(now)).items():
        logger.warning(
            "%s[%s]: %d messages wait and none was processed for %.0f s: next to process %s; "
            "consumer: %s; %s",
            tp.topic,
            tp.partition,
            lag[tp],
            seconds,
            next_to_process(tp),
            delivery_state(app.consumer, tp),
            unread.describe((tp.topic, tp.partition)),
        )


def stalled() -> dict[str, float]:
    """ "topic[partition]" → seconds it has been stalled, for `/api/health`."""
    now = time.monotonic()
    partitions = cast(dict[TP, float], stalls.stalled(now))
    return {f"{tp.topic}[{tp.partition}]": round(s, 1) for tp, s in partitions.items()}
