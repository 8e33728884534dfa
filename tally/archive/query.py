"""Range queries over the archive with DuckDB: rollups merged per series and step bucket.

DuckDB scans only the days in the range (one directory each), reads only the columns asked
for, skips row groups by their statistics, and merges minutes into steps itself, so a month
at 1h leaves DuckDB as a few thousand rows instead of a million minutes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from tally.archive.store import Archive, connect
from tally.core.rollups import Rollup

#: What a query selects on and what its series are: columns of the archive's rows.
KEY_COLUMNS = ("server", "metric")


@dataclass(frozen=True)
class ArchiveQuery:
    """Rows of `tenant` (None: of every tenant) where `key_column` = `key` and start_ms <=
    minute < end_ms, merged per series and bucket. `series_column` None: one series, "all"
    (of every tenant's rows merged); of every tenant, a series of servers is named
    `<tenant>|<server>` (core.tenancy.scoped). `step_ms` None: one bucket, at start_ms.
    `metrics`: only these metrics (None: all)."""

    tenant: str | None
    key_column: str
    key: str
    start_ms: int
    end_ms: int
    series_column: str | None
    step_ms: int | None
    metrics: frozenset[str] | None = None

    def sql(self) -> tuple[str, list[object]]:
        """The statement and its parameters (identifiers come from KEY_COLUMNS only)."""
        if self.key_column not in KEY_COLUMNS or self.series_column not in (*KEY_COLUMNS, None):
            raise ValueError(f"unknown columns in {self!r}")
        series = self.series_column or "'all'"
        if self.tenant is None and self.series_column == "server":
            series = "tenant || '|' || server"
        params: list[object]
        if self.step_ms is None:
            bucket, params = "?::BIGINT", [self.start_ms]
        else:
            bucket, params = "minute_ms - minute_ms % ?", [self.step_ms]
        where = [f"{self.key_column} = ?", "minute_ms >= ?", "minute_ms < ?"]
        params += [self.key, self.start_ms, self.end_ms]
        if self.tenant is not None:
            where.append("tenant = ?")
            params.append(self.tenant)
        if self.metrics is not None:
            where.append(f"metric IN ({', '.join('?' for _ in self.metrics)})")
            params += sorted(self.metrics)
        # A minute sent twice upstream (a re-emission after a crash: a new offset) sits in
        # two files until its day is compacted: each (tenant, server, metric, minute) counts
        # once.
        sql = (
            f"SELECT {series} AS series, {bucket} AS bucket, "
            'min("min"), max("max"), sum("sum"), sum("count") '
            "FROM (SELECT DISTINCT ON (tenant, server, metric, minute_ms) * FROM rows "
            f"WHERE {' AND '.join(where)}) "
            "GROUP BY series, bucket ORDER BY series, bucket"
        )
        return sql, params


def archived_rollups(
    archive: Archive, query: ArchiveQuery, limit: int
) -> dict[str, list[tuple[int, Rollup]]]:
    """series → [(bucket start, merged rollup)] in time order; at most `limit` + 1 points in
    all (the caller says "too many" past `limit`). Blocking: run it in a thread."""
    files = archive.files_between(query.start_ms, query.end_ms)
    result: dict[str, list[tuple[int, Rollup]]] = defaultdict(list)
    if not files:
        return result
    sql, params = query.sql()
    with connect() as con:
        archive.register(con, files)
        rows = con.execute(f"{sql} LIMIT {int(limit) + 1}", params).fetchall()
    for series, bucket, low, high, total, count in rows:
        result[series].append((int(bucket), Rollup(low, high, total, int(count))))
    return result
