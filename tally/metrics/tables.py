"""The metrics pipeline's tables and topics (Faust declarations; the logic is in tables.rollups).

    metric-samples (by server) ─► server_rollups   "<tenant>|<server>|<minute ms>|" →
                               │                   {metric: rollup}
                               └► metric_clocks    "<partition>" → event clock + late count
    final minutes ────────────► metric-rollups-1m  one record per (tenant, server, minute)
    partial rollups, re-keyed ─► metric-rollups-by-metric (by metric)
                               ─► metric_rollups   "<tenant>|<metric>|<minute ms>|" → all servers'
                                                   rollup; "…|servers" → {server: rollup}
                               └► metric_index_watermarks "<upstream partition>" → watermark

Keys put the tenant first, the series (core.tenancy.scoped) second and the minute third, so a
range query is one ordered scan of one partition that reads only the tenant's minutes asked
for. Partitions are by the bare server or metric id. One record holds a whole minute of a
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
#: Every final minute of every server, once: key "<tenant>|<server>|<minute ms>", JSON value
#: {"tenant", "server_id", "minute_ms", "metrics": {metric: {"min", "max", "sum", "count"}}}.
rollups_1m = internal_topic(METRIC_FINAL_MINUTES, value_serializer="json")


@cache
def archive() -> Archive:
    """The cold tier: final minutes as Parquet (written by the archive sink, read by the
    views), opened on first use."""
    return Archive(settings.archive_location, settings.default_tenant)


#: The second key part of a metric's per-server record (the all-servers record has none).
PER_SERVER = "servers"


def minute_key(series: str, minute_ms: int, second: str = "") -> bytes:
    """The key of a (`scoped`) series' record of a minute; with no `second` also the smallest
    key of that minute, so scans run from one minute's key to another's."""
    return f"{series}|{minute_ms:013d}|{second}".encode()


def split_key(key: bytes) -> tuple[str, int, str]:
    """(series, minute, second part) of a `minute_key`."""
    series, minute, second = key.decode().rsplit("|", 2)
    return series, int(minute), second


#: Key parts of a series: its tenant and its id (tables' first_parts).
SERIES_PARTS = 2
