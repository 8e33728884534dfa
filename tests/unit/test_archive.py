"""The archive on real Parquet files (pyarrow) queried by DuckDB, against brute force."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.archive.query import ArchiveQuery, archived_rollups
from tally.archive.store import (
    DAY_MS,
    Archive,
    DataFile,
    Journal,
    day_of,
    day_start_ms,
    final_minute,
    live,
    rows_by_day,
)
from tally.core.errors import ValidationError
from tally.core.rollups import MINUTE_MS, STEPS_MS
from tally.settings import retention_days

DAY0 = day_start_ms(date(2026, 11, 1))
#: Two tenants with the same server and metric ids: different series.
TENANTS = ["acme", "globex"]
SERVERS = ["s1", "s2", "s3"]
METRICS = ["cpu", "mem"]
#: (tenant, server, minute, raw values per metric)
History = list[tuple[str, str, int, dict[str, list[float]]]]


def final(
    tenant: str, server: str, minute: int, values: dict[str, list[float]]
) -> dict[str, object]:
    """A metric-rollups-1m value for the given raw values per metric."""
    return {
        "tenant": tenant,
        "server_id": server,
        "minute_ms": minute,
        "metrics": {
            m: {"min": min(v), "max": max(v), "sum": math.fsum(v), "count": len(v)}
            for m, v in values.items()
        },
    }


def history(rng: random.Random, minutes: int, tenants: list[str] = TENANTS[:1]) -> History:
    """(tenant, server, minute, raw values per metric) over `minutes` minutes from 2026-11-01
    22:00, so the history crosses midnight."""
    start = DAY0 + 22 * 3_600_000
    out = []
    for i in range(minutes):
        for tenant in tenants:
            for server in SERVERS:
                values = {
                    m: [rng.uniform(-5, 100) for _ in range(rng.randint(1, 3))] for m in METRICS
                }
                out.append((tenant, server, start + i * MINUTE_MS, values))
    return out


def rows(archive: Archive) -> list[tuple[str, str, str, int]]:
    found = []
    for day in archive.days():
        for file in archive.files(day):
            columns = ["tenant", "server", "metric", "minute_ms"]
            table = pq.read_table(archive.path(file), columns=columns)
            found += list(
                zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
            )
    return found


def append_all(archive: Archive, hist: list, partition: int = 0, batch: int = 50) -> None:
    minutes = [(offset, final_minute(final(*h))) for offset, h in enumerate(hist)]
    for i in range(0, len(minutes), batch):
        archive.append(partition, minutes[i : i + batch])


def test_append_writes_each_minute_once_per_day_and_skips_redelivered_offsets(
    tmp_path: Path,
) -> None:
    archive = Archive(tmp_path)
    hist = history(random.Random(1), 240)  # 22:00 to 02:00: two days
    append_all(archive, hist)
    assert archive.days() == [date(2026, 11, 1), date(2026, 11, 2)]
    before = sorted(rows(archive))
    assert len(before) == len(hist) * len(METRICS) == len(set(before))
    # A restart redelivers everything from offset 0, in other batch sizes: nothing new.
    append_all(archive, hist, batch=37)
    assert sorted(rows(archive)) == before
    assert archive.journal(0).through == len(hist) - 1


def test_a_flush_cut_short_is_undone_before_the_partition_writes_again(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    hist = history(random.Random(2), 240)
    minutes = [(offset, final_minute(final(*h))) for offset, h in enumerate(hist)]
    archive.append(0, minutes[:100])
    # A crash mid-flush: the intent was journaled and the first day's file written, but not
    # the second day's file nor the new `through`.
    first, last = minutes[100][0], minutes[-1][0]
    tables = rows_by_day(m for _, m in minutes[100:])
    days = sorted(tables)
    assert len(days) == 2
    archive._save_journal(0, Journal(99, (first, last, days)))
    archive._write(DataFile(days[0], 0, first, last), tables[days[0]])
    # Redelivery from offset 100, in other batches: the half-written flush is undone first.
    for i in range(100, len(minutes), 60):
        archive.append(0, minutes[i : i + 60])
    found = rows(archive)
    assert len(found) == len(set(found)) == len(hist) * len(METRICS)
    assert archive.journal(0) == Journal(len(minutes) - 1)


def test_compaction_merges_a_days_files_and_a_crash_before_deleting_shows_rows_once(
    tmp_path: Path,
) -> None:
    archive = Archive(tmp_path)
    hist = history(random.Random(3), 240)
    append_all(archive, hist, batch=40)
    day = date(2026, 11, 1)
    small = archive.files(day)
    assert len(small) > 3
    before = sorted(rows(archive))
    # A crash between writing the merged file and deleting the small ones: copy them back.
    kept = {f: archive.fs.open_input_stream(archive.path(f)).read() for f in small}
    merged = archive.compact(day, 0)
    assert merged is not None and archive.files(day) == [merged]
    for file, data in kept.items():
        with archive.fs.open_output_stream(archive.path(file)) as out:
            out.write(data)
    assert archive.files(day) == [merged]
    assert sorted(rows(archive)) == before
    # The next compaction finds one live file, leaves it, and deletes the shadowed ones.
    assert archive.compact(day, 0) is None
    assert archive._all_files(day) == [merged]


def test_compaction_keeps_a_minute_sent_twice_once(tmp_path: Path) -> None:
    """An upstream re-emission (a new offset, the same minute) in two flushes."""
    archive = Archive(tmp_path)
    hist = history(random.Random(4), 30)
    minutes = [(offset, final_minute(final(*h))) for offset, h in enumerate(hist)]
    archive.append(0, minutes)
    archive.append(0, [(len(minutes) + 5, minutes[3][1])])
    day = day_of(minutes[0][1][2])
    assert len(rows(archive)) == len(hist) * len(METRICS) + len(METRICS)
    # Before compaction a query counts the minute once already.
    tenant, server, minute, _ = minutes[3][1]
    query = ArchiveQuery(tenant, "server", server, minute, minute + MINUTE_MS, "metric", MINUTE_MS)
    counts = {m: p[0][1].count for m, p in archived_rollups(archive, query, 10).items()}
    assert counts == {m: len(v) for m, v in hist[3][3].items()}
    archive.compact(day, 0)
    found = rows(archive)
    assert len(found) == len(set(found)) == len(hist) * len(METRICS)


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40), st.integers(0, 40)), max_size=30))
def test_live_files_are_exactly_those_not_inside_another(
    ranges: list[tuple[int, int, int]],
) -> None:
    files = {DataFile(date(2026, 1, 1), p, min(a, b), max(a, b)) for p, a, b in ranges}
    expected = {
        f
        for f in files
        if not any(
            o != f and o.partition == f.partition and o.first <= f.first and f.last <= o.last
            for o in files
        )
    }
    assert set(live(files)) == expected


def brute(
    hist: History,
    tenant: str | None,
    key_column: str,
    key: str,
    start: int,
    end: int,
    series_column: str | None,
    step_ms: int | None,
) -> dict[str, dict[int, list[float]]]:
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for of, server, minute, values in hist:
        if tenant not in (None, of):
            continue
        for metric, vals in values.items():
            row = {"server": server, "metric": metric}
            if row[key_column] != key or not start <= minute < end:
                continue
            series = "all" if series_column is None else row[series_column]
            if tenant is None and series_column == "server":
                series = f"{of}|{server}"
            bucket = start if step_ms is None else minute - minute % step_ms
            out[series][bucket] += vals
    return out


@pytest.mark.parametrize(
    ("key_column", "key", "series_column"),
    [("server", "s2", "metric"), ("metric", "cpu", None), ("metric", "mem", "server")],
)
@pytest.mark.parametrize("step", ["1m", "1h", "1d", None])
@pytest.mark.parametrize("tenant", ["globex", None])
def test_queries_equal_brute_force(
    tmp_path: Path,
    key_column: str,
    key: str,
    series_column: str | None,
    step: str | None,
    tenant: str | None,
) -> None:
    """Of one tenant, and of every tenant (an operator's): two tenants share every id."""
    archive = Archive(tmp_path)
    hist = history(random.Random(5), 300, TENANTS)
    append_all(archive, hist, batch=90)
    archive.compact(date(2026, 11, 1), 0)
    start = DAY0 + 22 * 3_600_000 + 17 * MINUTE_MS
    end = start + 250 * MINUTE_MS
    step_ms = None if step is None else STEPS_MS[step]
    query = ArchiveQuery(tenant, key_column, key, start, end, series_column, step_ms)
    got = archived_rollups(archive, query, limit=100_000)
    truth = brute(hist, tenant, key_column, key, start, end, series_column, step_ms)
    assert sorted(got) == sorted(truth)
    for series, points in got.items():
        assert [t for t, _ in points] == sorted(truth[series])
        for t, rollup in points:
            vals = truth[series][t]
            assert (rollup.min, rollup.max, rollup.count) == (min(vals), max(vals), len(vals))
            assert math.isclose(rollup.sum, math.fsum(vals), rel_tol=1e-9)


def test_metric_filter_and_limit(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    append_all(archive, history(random.Random(6), 60))
    start, end = DAY0, DAY0 + 2 * DAY_MS
    cpu = frozenset({"cpu"})
    only_cpu = ArchiveQuery("acme", "server", "s1", start, end, "metric", MINUTE_MS, cpu)
    assert list(archived_rollups(archive, only_cpu, limit=1000)) == ["cpu"]
    everything = ArchiveQuery("acme", "server", "s1", start, end, "metric", MINUTE_MS)
    assert sum(len(p) for p in archived_rollups(archive, everything, limit=10).values()) == 11
    assert archived_rollups(Archive(tmp_path / "empty"), everything, limit=10) == {}


def write_old(archive: Archive, file: DataFile, table: pa.Table) -> None:
    """A file as the archive wrote it before rows had a tenant."""
    archive.fs.create_dir(archive.day_dir(file.day), recursive=True)
    pq.write_table(table.drop_columns(["tenant"]), archive.path(file))


def test_files_written_before_rows_had_a_tenant_are_the_default_tenants(tmp_path: Path) -> None:
    """An archive of before: its rows count as the default tenant's, beside new files, and a
    compaction of such a day rewrites them with the tenant."""
    archive = Archive(tmp_path, default_tenant="acme")
    hist = history(random.Random(8), 60, ["acme"])
    minutes = [(offset, final_minute(final(*h))) for offset, h in enumerate(hist)]
    archive.append(0, minutes[:90])  # a new file (with the tenant column)
    old = rows_by_day(m for _, m in minutes[90:])
    for day, table in old.items():  # an old one: the same rows, no tenant column
        write_old(archive, DataFile(day, 0, 90, len(minutes) - 1), table)
    archive._save_journal(0, Journal(len(minutes) - 1))
    start, end = DAY0, DAY0 + 2 * DAY_MS
    for tenant in ("acme", None):
        query = ArchiveQuery(tenant, "metric", "cpu", start, end, "server", MINUTE_MS)
        got = archived_rollups(archive, query, limit=100_000)
        want = brute(hist, tenant, "metric", "cpu", start, end, "server", MINUTE_MS)
        assert {s: len(p) for s, p in got.items()} == {s: len(p) for s, p in want.items()}
    only_old = Archive(tmp_path / "old", default_tenant="acme")
    for day, table in old.items():
        write_old(only_old, DataFile(day, 0, 0, 9), table)
    everything = ArchiveQuery("acme", "server", "s1", start, end, "metric", None)
    assert archived_rollups(only_old, everything, limit=100) != {}
    day = date(2026, 11, 1)
    assert archive.compact(day, 0) is not None
    assert {t for t, *_ in rows(archive)} == {"acme"}


def test_prune_drops_whole_days_and_stats_describe_what_is_left(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    hist = history(random.Random(7), 240)
    append_all(archive, hist)
    stats = archive.stats()
    assert [d.day for d in stats.days] == [date(2026, 11, 1), date(2026, 11, 2)]
    assert stats.rows == len(hist) * len(METRICS)
    assert stats.oldest_ms == hist[0][2] and stats.newest_ms == hist[-1][2]
    assert stats.bytes > 0 and stats.files >= 2
    assert archive.prune(date(2026, 11, 2)) == [date(2026, 11, 1)]
    assert archive.days() == [date(2026, 11, 2)]
    left = archive.stats()
    assert left.rows == sum(1 for _, _, m, _ in hist if m >= DAY0 + DAY_MS) * len(METRICS)
    assert archive.prune(date(2026, 11, 2)) == []


@pytest.mark.parametrize(
    "value",
    [
        {"tenant": "t", "server_id": "s", "minute_ms": 61_000, "metrics": {}},
        {"tenant": "t", "server_id": "a|b", "minute_ms": 60_000, "metrics": {}},
        {"tenant": "a|b", "server_id": "s", "minute_ms": 60_000, "metrics": {}},
        {"server_id": "s", "minute_ms": 60_000, "metrics": {}},
        {"tenant": "t", "server_id": "s", "minute_ms": 60_000, "metrics": {"cpu": {"min": 1}}},
        {
            "tenant": "t",
            "server_id": "s",
            "minute_ms": 60_000,
            "metrics": {"cpu": {"min": "x", "max": 1, "sum": 1, "count": 1}},
        },
        "not a dict",
        None,
    ],
)
def test_final_minute_rejects_what_is_not_one(value: object) -> None:
    with pytest.raises(ValidationError):
        final_minute(value)


def test_retention_durations() -> None:
    assert retention_days("5y") == 1825
    assert retention_days("26w") == 182
    assert retention_days("30d") == 30
    for bad in ("5", "0d", "1m", "-1d", "y"):
        with pytest.raises(ValueError, match="duration"):
            retention_days(bad)
