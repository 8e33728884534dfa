"""Metric views: by server, by metric, and a server's summary; each answered by the owner.

Each answers for the caller's tenant (runtime.queries.tenant_read): a server or metric id
is looked up under that tenant's keys only, so another tenant's id is simply not there. An
operator's view of a metric with no `?tenant=` merges every tenant's servers.

Any range: minutes inside the hot window come from the tables, older ones from the archive
(DuckDB over Parquet, in a thread), merged per step at the boundary. Every answer carries the
watermark, the minutes in the range that are still open (their rollups can still change) and
which tier answered for which minutes; steps merge minute rollups exactly (tables.rollups).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import cast

from aiohttp import web
from faust.types import CollectionT
from faust.web import Request, Response

from tally.access.tokens import OPERATOR
from tally.app import app, settings
from tally.archive.query import ArchiveQuery, archived_rollups
from tally.core.applied import value_of
from tally.core.clock import iso, now_ms
from tally.core.partitioning import partition_for
from tally.core.rollups import (
    MINUTE_MS,
    STEPS_MS,
    Rollup,
    by_step,
    final_before,
    hot_horizon,
    merge_all,
    merge_series,
    minute_of,
)
from tally.core.tenancy import scoped
from tally.core.windowing import EventClock
from tally.http.caching import KeptAnswers
from tally.metrics.state import index_watermark, states
from tally.metrics.tables import (
    GRACE_MS,
    PER_SERVER,
    RETENTION_MS,
    archive,
    metric_clocks,
    metric_rollups,
    minute_key,
    server_rollups,
    split_key,
)
from tally.runtime.cells import read_cell, version
from tally.runtime.queries import (
    BadRequest,
    OwnedView,
    id_param,
    one_tenant_read,
    read_archive,
    routed_to_owner,
    tenant_read,
    time_param,
)
from tally.runtime.store import first_parts, partition_key, scan, stored_value

logger = logging.getLogger(__name__)

#: Points (series x steps) one answer may hold.
MAX_POINTS = 100_000
#: A query without `from` covers this much before `to`.
DEFAULT_RANGE_MS = 2 * 86_400_000

#: series (metric, server or "all") → [(minute or step start, rollup)] in time order.
Series = dict[str, list[tuple[int, Rollup]]]


class Query:
    """from/to/step/metric of a request, validated; defaults: the last 2 days at 1m.

    Minutes before the hot tables' horizon come from the archive, the rest from the tables:
    each minute from exactly one tier, whatever the range."""

    def __init__(self, request: Request, watermark: int | None) -> None:
        now = now_ms()
        self.to_ms = time_param(request, "to", now)
        self.from_ms = time_param(request, "from", self.to_ms - DEFAULT_RANGE_MS)
        if self.from_ms >= self.to_ms:
            raise BadRequest(f"from ({iso(self.from_ms)}) must be before to ({iso(self.to_ms)})")
        step = request.query.get("step", "1m")
        if step not in STEPS_MS:
            raise BadRequest(f"step={step!r} is not one of {', '.join(STEPS_MS)}")
        self.step = step
        self.step_ms = STEPS_MS[step]
        wanted = request.query.get("metric", "")
        self.metrics = frozenset(m for m in wanted.split(",") if m) or None
        self.watermark = watermark
        first, end = minute_of(self.from_ms), minute_of(self.to_ms - 1) + MINUTE_MS
        # No watermark: the hot tables hold nothing for this key, the archive answers alone.
        boundary = end if watermark is None else hot_horizon(watermark, RETENTION_MS)
        boundary = min(max(boundary, first), end)
        #: [start, end) minutes each tier answers for (empty when start == end).
        self.archived = (first, boundary)
        self.hot = (boundary, end)

    def freshness(self) -> dict[str, object]:
        """The range, the watermark, the minutes of the range still open, and which tier
        answered for which minutes."""
        open_minutes = []
        closed = final_before(self.watermark)
        first, end = self.hot
        if self.watermark is not None and closed is not None:
            # Open: not final yet, and not past the event clock (later minutes have no data):
            # a handful at most, whatever `to` is.
            newest = minute_of(self.watermark + GRACE_MS) + MINUTE_MS
            open_minutes = [iso(m) for m in range(max(first, closed), min(end, newest), MINUTE_MS)]
        return {
            "from": iso(self.from_ms),
            "to": iso(self.to_ms),
            "step": self.step,
            "watermark": None if self.watermark is None else iso(self.watermark),
            "open_minutes": open_minutes,
            "tiers": {
                name: {"from": iso(start), "to": iso(stop)} if start < stop else None
                for name, (start, stop) in (("archive", self.archived), ("hot", self.hot))
            },
        }

    async def from_archive(
        self,
        tenant: str | None,
        key_column: str,
        key: str,
        series_column: str | None,
        whole_range: bool = False,
    ) -> Series:
        """The archive's part of the answer (of `tenant`; None: of every tenant), merged by
        step (or over the whole range)."""
        start, end = self.archived
        if start >= end:
            return {}
        query = ArchiveQuery(
            tenant,
            key_column,
            key,
            start,
            end,
            series_column,
            None if whole_range else self.step_ms,
            self.metrics if key_column == "server" else None,
        )
        series = await read_archive(
            lambda: archived_rollups(archive(), query, MAX_POINTS), f"{iso(start)} to {iso(end)}"
        )
        too_many(sum(len(points) for points in series.values()))
        return series

    def series(self, archived: Series, hot: Series) -> dict[str, list[dict[str, object]]]:
        """Both tiers' minutes merged per step (a step across the boundary merges both)."""
        too_many(sum(len(m) for m in hot.values()) * MINUTE_MS // self.step_ms)
        hot_steps = {name: list(by_step(rows, self.step_ms)) for name, rows in hot.items()}
        merged = merge_series(archived, hot_steps)
        too_many(sum(len(points) for points in merged.values()))
        return {name: [r.as_point(iso(t)) for t, r in points] for name, points in merged.items()}


def too_many(points: int) -> None:
    if points > MAX_POINTS:
        raise BadRequest(
            f"about {points} points asked for, more than {MAX_POINTS}: narrow the range, "
            "pick metrics with ?metric=a,b, or use a coarser step"
        )


def records(
    table: CollectionT, tenant: str, first: str, query: Query
) -> Iterator[tuple[int, str, bytes]]:
    """(minute, second key part, raw value) of the tenant's `first` (a server or metric id)
    records in the query's hot minutes, in key order; values are left undecoded for the caller
    to pick what it reads."""
    start, end = query.hot
    if start >= end:
        return
    partition = partition_for(first, settings.partitions)
    series = scoped(tenant, first)
    for key, value in scan(table, partition, minute_key(series, start), minute_key(series, end)):
        _, minute, second = split_key(key)
        yield minute, second, value


def server_watermark(server_id: str) -> int | None:
    """The watermark the pipeline last decided with (settled at most a second ago on an
    active partition): never ahead of what the minutes' state says."""
    partition = partition_for(server_id, settings.partitions)
    state = states.get(partition)
    clock = (
        state.clock
        if state
        else EventClock.from_record(read_cell(metric_clocks, partition_key(partition), partition))
    )
    return clock.watermark(clock.wall_ms, GRACE_MS)


def metric_watermark(metric_id: str) -> int | None:
    return index_watermark(partition_for(metric_id, settings.partitions))


def server_minutes(tenant: str, server_id: str, query: Query) -> Series:
    minutes: Series = defaultdict(list)
    for minute, _, value in records(server_rollups, tenant, server_id, query):
        for metric, acc in value_of(stored_value(value)).items():
            if query.metrics is None or metric in query.metrics:
                minutes[metric].append((minute, Rollup.from_list(acc)))
    return minutes


#: Answers the hot tables alone give for a range the request fixes (`to` given: nothing moves
#: with the wall clock), kept per tenant while the key's partition and watermark stay as they
#: were.
kept: KeptAnswers[bytes] = KeptAnswers(limit=1_000)


class MetricsView(OwnedView):
    pipeline = "metrics"

    async def answered(
        self,
        request: Request,
        tenant: str | None,
        query: Query,
        table: CollectionT,
        key: str,
        hot: Callable[[], Series],
        archived: Callable[[], Awaitable[Series]],
        body: Callable[[Series, Series], dict[str, object]],
    ) -> Response:
        """`body` of the hot tables' part and the archive's; the hot part is read first (pruning
        may run while the archive is read). An answer of the hot tables alone for a fixed
        range is kept until the key's partition changes."""
        start, end = query.archived
        if start >= end and request.query.get("to"):
            partition = partition_for(key, settings.partitions)
            return self.serialized(
                kept.get(
                    (tenant, cast(web.Request, request).path_qs),
                    (version(table, partition), query.watermark),
                    lambda: self.json(body(hot(), {})).body,
                )
            )
        hot_part = hot()
        return self.json(body(hot_part, await archived()))


@app.page("/api/servers/{server_id}/metrics")
class ServerMetrics(MetricsView):
    """One server: per metric, {t, min, max, avg, count} per step."""

    @routed_to_owner(server_rollups, match_info="server_id")
    async def owned(self, request: Request, server_id: str) -> Response:
        tenant = one_tenant_read(request)
        query = Query(request, server_watermark(id_param("server_id", server_id)))
        return await self.answered(
            request,
            tenant,
            query,
            server_rollups,
            server_id,
            lambda: server_minutes(tenant, server_id, query),
            lambda: query.from_archive(tenant, "server", server_id, "metric"),
            lambda hot, archived: {
                "tenant": tenant,
                "server_id": server_id,
                **query.freshness(),
                "metrics": query.series(archived, hot),
            },
        )


@app.page("/api/servers/{server_id}/summary")
class ServerSummary(MetricsView):
    """One server: min/max/avg/count of each metric over the whole range."""

    @routed_to_owner(server_rollups, match_info="server_id")
    async def owned(self, request: Request, server_id: str) -> Response:
        tenant = one_tenant_read(request)
        query = Query(request, server_watermark(id_param("server_id", server_id)))

        def hot() -> Series:
            # One bucket per metric, keyed like the archive's (the range's first minute).
            return {
                metric: [(query.archived[0], merged)]
                for metric, rows in server_minutes(tenant, server_id, query).items()
                if (merged := merge_all(r for _, r in rows)) is not None
            }

        def summary(hot: Series, archived: Series) -> dict[str, object]:
            merged = merge_series(archived, hot)
            return {
                "tenant": tenant,
                "server_id": server_id,
                **query.freshness(),
                "metrics": {
                    m: points[0][1].as_point(iso(query.from_ms)) for m, points in merged.items()
                },
            }

        return await self.answered(
            request,
            tenant,
            query,
            server_rollups,
            server_id,
            hot,
            lambda: query.from_archive(tenant, "server", server_id, "metric", whole_range=True),
            summary,
        )


@app.page("/api/metrics/{metric_id}")
class MetricAcrossServers(MetricsView):
    """One metric across the tenant's servers per step; `?by=server` for the per-server
    breakdown. Across every tenant (an operator's, with no `?tenant=`), the servers merge and
    the breakdown names each `<tenant>|<server>`."""

    @routed_to_owner(metric_rollups, match_info="metric_id")
    async def owned(self, request: Request, metric_id: str) -> Response:
        by = request.query.get("by", "")
        if by not in ("", "server"):
            raise BadRequest(f"by={by!r}: the only breakdown is by=server")
        tenant = tenant_read(request, across=True)
        query = Query(request, metric_watermark(id_param("metric_id", metric_id)))

        def of_tenant(of: str) -> Series:
            minutes: Series = defaultdict(list)
            wanted = PER_SERVER if by == "server" else ""
            for minute, second, value in records(metric_rollups, of, metric_id, query):
                if second != wanted:
                    continue  # the other record of the minute, left undecoded
                if by == "server":
                    for server, acc in value_of(stored_value(value)).items():
                        name = server if tenant is not None else scoped(of, server)
                        minutes[name].append((minute, Rollup.from_list(acc)))
                else:
                    rollup = Rollup.from_list(value_of(stored_value(value)))
                    minutes["all"].append((minute, rollup))
            return minutes

        def hot() -> Series:
            if tenant is not None:
                return of_tenant(tenant)
            partition = partition_for(metric_id, settings.partitions)
            return merge_series(*(of_tenant(t) for t in first_parts(metric_rollups, partition)))

        def across(hot: Series, archived: Series) -> dict[str, object]:
            series = query.series(archived, hot)
            body: dict[str, object] = {
                "tenant": tenant or OPERATOR,
                "metric_id": metric_id,
                **query.freshness(),
            }
            if by == "server":
                body["servers"] = series
            else:
                body["series"] = series.get("all", [])
            return body

        return await self.answered(
            request,
            tenant,
            query,
            metric_rollups,
            metric_id,
            hot,
            lambda: query.from_archive(tenant, "metric", metric_id, "server" if by else None),
            across,
        )
