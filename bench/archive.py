"""Archive benchmark: how fast the sink writes final minutes, and what a 30-day query costs.

    python -m bench.archive [--servers 100] [--metrics 20] [--days 30] [--runs 7]

1. Query path: `days` days of history in the compacted layout (a file per day and partition,
   4 partitions), then the views' archive queries (`archived_rollups`, DuckDB) repeated
   `runs` times: medians. No broker: this measures the cold tier alone.
2. Write path: one day of final minutes (servers x metrics x 1,440 rows) as the sink gets
   them (decoded metric-rollups-1m values), through `Archive.append` in flushes of 5,000
   server-minutes, then compaction of the day. Baseline, same rows, same process: writing a
   ready Arrow table with pyarrow alone (the ceiling: no Python rows to convert).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tally.archive.query import ArchiveQuery, archived_rollups
from tally.archive.store import (
    DAY_MS,
    ROWS,
    SORT_KEYS,
    Archive,
    DataFile,
    day_start_ms,
    final_minute,
    rows_by_day,
)
from tally.core.rollups import MINUTE_MS, STEPS_MS
from tally.metrics.archive_sink import ARCHIVE_FLUSH_EVENTS

PARTITIONS = 4
MINUTES_PER_DAY = 1440
FIRST_DAY = date(2026, 10, 1)


def names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


#: The one tenant of the benchmark's archive.
TENANT = "default"


def final_minutes(servers: list[str], metrics: list[str], day: date) -> list[dict[str, object]]:
    """A day of metric-rollups-1m values, as the sink's agent receives them."""
    start = day_start_ms(day)
    out = []
    for minute in range(MINUTES_PER_DAY):
        minute_ms = start + minute * MINUTE_MS
        for s, server in enumerate(servers):
            cells = {}
            for m, metric in enumerate(metrics):
                value = float((minute * 7 + s * 13 + m * 31) % 1000) / 10
                cells[metric] = {"min": value - 1, "max": value + 1, "sum": value * 4, "count": 4}
            out.append(
                {"tenant": TENANT, "server_id": server, "minute_ms": minute_ms, "metrics": cells}
            )
    return out


def history_day(servers: list[str], metrics: list[str], day: date, partition: int) -> pa.Table:
    """One partition's compacted file of a day, built column-wise (fast to generate): every
    PARTITIONS-th minute, all servers and metrics, sorted like the sink sorts."""
    minutes = MINUTES_PER_DAY // PARTITIONS
    n = len(servers) * len(metrics) * minutes
    index = pa.array(range(n), pa.int64())
    per_server = len(metrics) * minutes
    server_ix = pc.divide(index, per_server)
    metric_ix = pc.divide(pc.subtract(index, pc.multiply(server_ix, per_server)), minutes)
    minute_ix = pc.add(
        pc.multiply(
            pc.subtract(index, pc.multiply(pc.divide(index, minutes), minutes)), PARTITIONS
        ),
        partition,
    )
    minute_ms = pc.add(pc.multiply(minute_ix, MINUTE_MS), day_start_ms(day))
    value = pc.add(pc.multiply(pc.sin(pc.cast(index, pa.float64())), 50.0), 50.0)
    table = pa.table(
        {
            "tenant": pa.array([TENANT] * n, pa.string()),
            "server": pc.take(pa.array(servers), server_ix),
            "metric": pc.take(pa.array(metrics), metric_ix),
            "minute_ms": minute_ms,
            "min": pc.subtract(value, 1.0),
            "max": pc.add(value, 1.0),
            "sum": pc.multiply(value, 4.0),
            "count": pa.array([4] * n, pa.int64()),
        }
    )
    return table.cast(ROWS).sort_by(SORT_KEYS)


def median_seconds(run: Callable[[], object], runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_path(root: Path, servers: list[str], metrics: list[str]) -> None:
    archive = Archive(root / "sink")
    values = final_minutes(servers, metrics, FIRST_DAY)
    rows = len(values) * len(metrics)
    records = [(offset, value) for offset, value in enumerate(values)]
    started = time.perf_counter()
    for i in range(0, len(records), ARCHIVE_FLUSH_EVENTS):
        batch = records[i : i + ARCHIVE_FLUSH_EVENTS]
        archive.append(0, [(offset, final_minute(value)) for offset, value in batch])
    sink_s = time.perf_counter() - started
    files = len(archive.files(FIRST_DAY))
    started = time.perf_counter()
    archive.compact(FIRST_DAY, 0)
    compact_s = time.perf_counter() - started

    table = rows_by_day(final_minute(v) for v in values)[FIRST_DAY]
    started = time.perf_counter()
    pq.write_table(table, root / "ceiling.parquet", compression="zstd")
    ceiling_s = time.perf_counter() - started
    size = sum(f.stat().st_size for f in (root / "sink").rglob("*.parquet"))
    print(f"write path: one day, {len(servers)} servers x {len(metrics)} metrics = {rows:,} rows")
    print(f"  sink (Archive.append, {files} flushes)  {rows / sink_s:>12,.0f} rows/s")
    print(f"  ceiling (pyarrow, a ready table)   {rows / ceiling_s:>12,.0f} rows/s")
    print(f"  sink / ceiling                     {ceiling_s / sink_s:>12.2f}x")
    print(f"  compaction of the day              {compact_s:>12.2f} s")
    print(f"  day on disk (compacted)            {size / 1e6:>12.1f} MB ({size / rows:.1f} B/row)")


def query_path(root: Path, servers: list[str], metrics: list[str], days: int, runs: int) -> None:
    archive = Archive(root / "history")
    started = time.perf_counter()
    for d in range(days):
        day = date.fromordinal(FIRST_DAY.toordinal() + d)
        for partition in range(PARTITIONS):
            table = history_day(servers, metrics, day, partition)
            archive._write(DataFile(day, partition, d * 10 + partition, d * 10 + partition), table)
    stats = archive.stats()
    print(
        f"query path: {days} days of history, {stats.rows:,} rows in {stats.files} files, "
        f"{stats.bytes / 1e6:,.0f} MB (generated in {time.perf_counter() - started:.0f} s)"
    )
    start = day_start_ms(FIRST_DAY)
    end = start + days * DAY_MS
    queries = {
        f"server, {days}d at 1h, all metrics": ArchiveQuery(
            TENANT, "server", servers[len(servers) // 2], start, end, "metric", STEPS_MS["1h"]
        ),
        f"server, {days}d at 1m, one metric": ArchiveQuery(
            TENANT, "server", servers[1], start, end, "metric", MINUTE_MS, frozenset([metrics[3]])
        ),
        f"server summary, {days}d": ArchiveQuery(
            TENANT, "server", servers[2], start, end, "metric", None
        ),
        f"metric across servers, {days}d at 1h": ArchiveQuery(
            TENANT, "metric", metrics[1], start, end, None, STEPS_MS["1h"]
        ),
        f"metric by server, {days}d at 1d": ArchiveQuery(
            TENANT, "metric", metrics[2], start, end, "server", STEPS_MS["1d"]
        ),
    }
    print(f"  {'query':<40}{'median ms':>10}{'points':>9}   ({runs} runs)")
    for name, query in queries.items():
        seconds, result = median_seconds(lambda q=query: archived_rollups(archive, q, 10**6), runs)
        points = sum(len(p) for p in result.values())  # type: ignore[union-attr]
        print(f"  {name:<40}{seconds * 1000:>10.0f}{points:>9,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    servers, metrics = names("server", args.servers), names("metric", args.metrics)
    with tempfile.TemporaryDirectory(prefix="tally-bench-archive-") as tmp:
        query_path(Path(tmp), servers, metrics, args.days, args.runs)
        print(f"  peak RSS so far (generation + queries)  {peak_rss_mb():,.0f} MB\n")
        write_path(Path(tmp), servers, metrics)


if __name__ == "__main__":
    main()
