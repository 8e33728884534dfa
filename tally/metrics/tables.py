"""The metrics pipeline's tables and topics (Faust declarations; the logic is in tables.rollups).

    metric-samples (by server) ─► server_rollups   "<server>|<minute ms>|" → {metric: rollup}
                               └► metric_clocks    "<partition>" → event clock + late count
    final minutes ────────────► metric-rollups-1m  one record per (server, minute)
    partial rollups, re-keyed ─► metric-rollups-by-metric (by metric)
                               ─► metric_rollups   "<metric>|<minute ms>|" → all servers' rollup,
                                                   "<metric>|<minute ms>|servers" → {server: rollup}
                               └► metric_index_watermarks "<upstream partition>" → watermark

Keys put the query key first and the minute second, so a range query is one ordered scan of
one partition that reads only the minutes asked for. One record holds a whole minute of a
server (or of a metric), so a batch writes each touched minute once, not each cell: table
writes, and with them changelog records, grow with servers and minutes, not with metrics.
A rollup is stored as [min, max, sum, count].
"""

from __future__ import annotations

from functools import cache

from tally.app import app, settings
from tally.archive.store import Archive
from tally.runtime.topics import internal_topic
from tally.topics import METRIC_FINAL_MINUTES, METRIC_PARTIALS, METRIC_TICKS

#: How long minutes stay in the hot tables, by event time (then the archive answers for them).
RETENTION_MS = max(60_000, int(settings.metrics_hot_hours * 60) * 60_000)  # whole minutes
#: The watermark trails each partition's event clock by this much.
GRACE_MS = int(settings.grace_seconds * 1000)
_CHANGELOG = {"cleanup.policy": "compact,delete", "retention.ms": RETENTION_MS + 86_400_000}

server_rollups = app.Table("server_rollups", key_type=bytes, extra_topic_configs=_CHANGELOG)
metric_clocks = app.Table("metric_clocks", key_type=bytes)
rollups_by_metric = internal_topic(METRIC_PARTIALS, value_serializer="json")
metric_rollups = app.Table("metric_rollups", key_type=bytes, extra_topic_configs=_CHANGELOG)
metric_index_watermarks = app.Table("metric_index_watermarks", key_type=bytes)

#: A tick per owned partition per second (co-partitioned with metric-samples, so it reaches
#: the same worker): closing minutes and retention run as stream events, in partition context.
metric_ticks = internal_topic(METRIC_TICKS, value_serializer="json")
#: Every final minute of every server, once: key "<server>|<minute ms>", JSON value
#: {"server_id", "minute_ms", "metrics": {metric: {"min", "max", "sum", "count"}}}.
rollups_1m = internal_topic(METRIC_FINAL_MINUTES, value_serializer="json")


@cache
def archive() -> Archive:
    """The cold tier: final minutes as Parquet (written by the archive sink, read by the
    views), opened on first use."""
    return Archive(settings.archive_location)


#: The second key part of a metric's per-server record (the all-servers record has none).
PER_SERVER = "servers"


def minute_key(first: str, minute_ms: int, second: str = "") -> bytes:
    """The key of `first`'s record of a minute; with no `second` also the smallest key of that
    minute, so scans run from one minute's key to another's."""
    return f"{first}|{minute_ms:013d}|{second}".encode()


def split_key(key: bytes) -> tuple[str, int, str]:
    first, minute, second = key.decode().split("|", 2)
    return first, int(minute), second
