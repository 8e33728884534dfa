"""Final minute rollups as Parquet files, one directory per UTC day. No Faust.

    <archive>/date=2026-11-21/p002-000000001200-000000001499.parquet
    <archive>/_sink/p002.json        {"through": 1499, "pending": null}

A file holds what one flush of one `metric-rollups-1m` partition wrote for one day: rows
(tenant, server, metric, minute_ms, min, max, sum, count) sorted by (tenant, server, metric,
minute_ms). Its name carries the partition and the offsets the flush read, which ties the
sink's progress to the files themselves:

- The partition's journal says through which offset everything is written. A flush records
  its intent first (`pending`: offsets and days), then writes its files (each under a
  temporary name, then renamed), then the new `through`. Offsets at or below `through` are
  skipped, so a redelivered batch writes nothing twice; a flush cut short by a crash is undone
  (its files deleted) before the partition writes again.
- Compaction merges one partition's files of a day into one file named with the union of their
  offsets, then deletes them. Readers ignore a file whose offsets lie inside another file's of
  the same partition and day, so a crash between the two steps still shows each row once.

Deleting old data is dropping a day's directory. The location is a local directory or a URI
of one of pyarrow's filesystems (s3://bucket/prefix?endpoint_override=host:port for
S3-compatible stores). One writer per partition at a time: the partition's Kafka consumer.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tally.core.errors import ValidationError
from tally.core.limits import DEFAULT_TENANT, TENANT_PATTERN, usable_id
from tally.core.rollups import MINUTE_MS

ROWS = pa.schema(
    [
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("server", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("minute_ms", pa.int64(), nullable=False),
        pa.field("min", pa.float64(), nullable=False),
        pa.field("max", pa.float64(), nullable=False),
        pa.field("sum", pa.float64(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)
SORT_KEYS = [
    ("tenant", "ascending"),
    ("server", "ascending"),
    ("metric", "ascending"),
    ("minute_ms", "ascending"),
]
#: Row groups small enough that a one-server query skips most of a day's file by statistics.
ROW_GROUP_ROWS = 128 * 1024
COMPRESSION = "zstd"
DAY_MS = 86_400_000
EPOCH = date(1970, 1, 1)

#: DuckDB runs inside the worker: each connection may hold this much before it spills to
#: disk, and at most DUCKDB_SLOTS run at once (queries and compactions wait for a slot).
DUCKDB_MEMORY = "256MB"
DUCKDB_SLOTS = 2
_duckdb_slots = threading.BoundedSemaphore(DUCKDB_SLOTS)
#: Characters DuckDB's Parquet reader would take as a glob pattern in a path.
_GLOB_CHARACTERS = frozenset("[]?*{}")

_DAY_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_DATA_FILE = re.compile(r"^p(\d{3,})-(\d{12,})-(\d{12,})\.parquet$")
_JOURNALS = "_sink"


#: Connections not in use: opening one costs about 20 ms, more than a small query.
_idle_connections: list[duckdb.DuckDBPyConnection] = []
_idle_lock = threading.Lock()


@contextmanager
def connect() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with bounded memory (spilling to the system's temp dir),
    one of DUCKDB_SLOTS, kept for the next query (its views dropped) unless it failed."""
    with _duckdb_slots:
        with _idle_lock:
            con = _idle_connections.pop() if _idle_connections else None
        if con is None:
            spill = Path(tempfile.gettempdir()) / "tally-duckdb"
            con = duckdb.connect(
                config={"memory_limit": DUCKDB_MEMORY, "temp_directory": str(spill)}
            )
        try:
            yield con
        except BaseException:
            con.close()
            raise
        con.execute("DROP VIEW IF EXISTS rows")
        with suppress(duckdb.Error):
            con.unregister("stored")
        con.execute("DROP VIEW IF EXISTS stored")
        with _idle_lock:
            _idle_connections.append(con)


def day_of(ms: int) -> date:
    return EPOCH + timedelta(days=ms // DAY_MS)


def day_start_ms(day: date) -> int:
    return (day - EPOCH).days * DAY_MS


@dataclass(frozen=True, order=True)
class DataFile:
    """One Parquet file: a day's rows from offsets first..last of one partition."""

    day: date
    partition: int
    first: int
    last: int

    @property
    def name(self) -> str:
        return f"p{self.partition:03d}-{self.first:012d}-{self.last:012d}.parquet"

    @classmethod
    def parse(cls, day: date, name: str) -> DataFile | None:
        match = _DATA_FILE.match(name)
        if match is None:
            return None
        partition, first, last = (int(part) for part in match.groups())
        return cls(day, partition, first, last)


def live(files: Iterable[DataFile]) -> list[DataFile]:
    """The files whose rows count: not inside another file's offsets (same day, partition).

    Sorted by first offset with the widest range first, a file lies inside an earlier one
    exactly when an earlier one reaches as far as it does."""
    result = []
    reach: dict[tuple[date, int], int] = {}
    for file in sorted(files, key=lambda f: (f.day, f.partition, f.first, -f.last)):
        group = (file.day, file.partition)
        if reach.get(group, -1) >= file.last:
            continue
        reach[group] = file.last
        result.append(file)
    return result


@dataclass
class Journal:
    """A partition's progress: offsets through `through` are written; `pending` is a flush
    that had started: (first offset, last offset, its days)."""

    through: int | None = None
    pending: tuple[int, int, list[date]] | None = None

    def to_json(self) -> bytes:
        pending = None
        if self.pending is not None:
            first, last, days = self.pending
            pending = {"first": first, "last": last, "days": [d.isoformat() for d in days]}
        return json.dumps({"through": self.through, "pending": pending}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Journal:
        body = json.loads(raw)
        pending = body.get("pending")
        return cls(
            through=body.get("through"),
            pending=None
            if pending is None
            else (
                int(pending["first"]),
                int(pending["last"]),
                [date.fromisoformat(d) for d in pending["days"]],
            ),
        )


Metrics = Mapping[str, Mapping[str, float]]


#: A final minute as the archive keeps it: (tenant, server, minute_ms, {metric: rollup fields}).
FinalMinute = tuple[str, str, int, Metrics]


def final_minute(value: Any) -> FinalMinute:
    """(tenant, server, minute_ms, {metric: {min, max, sum, count}}) of a metric-rollups-1m
    value."""
    try:
        tenant, server = value["tenant"], value["server_id"]
        minute, metrics = value["minute_ms"], value["metrics"]
        if not (isinstance(tenant, str) and TENANT_PATTERN.fullmatch(tenant)):
            raise ValidationError(f"tenant={tenant!r} is not a tenant name")
        if not (isinstance(server, str) and usable_id(server)):
            raise ValidationError(f"server_id={server!r} is not a usable server id")
        if not isinstance(minute, int) or minute < 0 or minute % MINUTE_MS:
            raise ValidationError(f"minute_ms={minute!r} is not the start of a minute")
        for metric, cell in metrics.items():
            if not usable_id(metric):
                raise ValidationError(f"metric id {metric!r} is not usable")
            for part in ("min", "max", "sum", "count"):
                if not isinstance(cell[part], int | float):
                    raise ValidationError(f"metric {metric!r}: {part}={cell[part]!r}")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValidationError(
            "not a final minute: expected {tenant, server_id, minute_ms, metrics: {metric: "
            f"{{min, max, sum, count}}}} ({type(exc).__name__}: {exc})"
        ) from None
    return tenant, server, minute, metrics


def rows_by_day(minutes: Iterable[FinalMinute]) -> dict[date, pa.Table]:
    """Final minutes → one sorted table per day; a (tenant, server, minute) given twice counts
    once (the later one)."""
    latest: dict[tuple[str, str, int], Metrics] = {}
    for tenant, server, minute, metrics in minutes:
        latest[(tenant, server, minute)] = metrics
    columns: dict[date, tuple[list[Any], ...]] = {}
    for (tenant, server, minute), metrics in latest.items():
        day = day_of(minute)
        cols = columns.get(day)
        if cols is None:
            cols = columns[day] = tuple([] for _ in ROWS)
        for metric, cell in metrics.items():
            cols[0].append(tenant)
            cols[1].append(server)
            cols[2].append(metric)
            cols[3].append(minute)
            cols[4].append(float(cell["min"]))
            cols[5].append(float(cell["max"]))
            cols[6].append(float(cell["sum"]))
            cols[7].append(int(cell["count"]))
    return {
        day: pa.Table.from_arrays(
            [pa.array(c, f.type) for c, f in zip(cols, ROWS, strict=True)], schema=ROWS
        ).sort_by(SORT_KEYS)
        for day, cols in sorted(columns.items())
    }


@dataclass(frozen=True)
class Layout:
    """What an archive's rows are: their schema and order, the columns one row is unique by
    (a row written twice, before its day is compacted, counts once), the column of its time,
    how a flush's items become a sorted table per day, the tenant column if files written
    before it was added lack it (their rows are the default tenant's), and the rows of a row
    group (a query of one key skips the groups whose statistics rule it out)."""

    schema: pa.Schema
    sort_keys: list[tuple[str, str]]
    identity: tuple[str, ...]
    time_column: str
    tables_by_day: Callable[[Iterable[Any]], dict[date, pa.Table]]
    tenant_added_later: str | None = None
    row_group_rows: int = ROW_GROUP_ROWS

    def distinct_rows(self) -> str:
        """The rows, each identity once, in order (the order makes the choice stable)."""
        columns = ", ".join(self.identity)
        return f"SELECT DISTINCT ON ({columns}) * FROM rows ORDER BY {columns}"


#: Final metric minutes (the metrics pipeline's archive).
METRIC_MINUTES = Layout(
    ROWS,
    SORT_KEYS,
    ("tenant", "server", "metric", "minute_ms"),
    "minute_ms",
    rows_by_day,
    tenant_added_later="tenant",
)


@dataclass
class DayStats:
    day: date
    files: int
    rows: int
    bytes: int
    oldest_ms: int | None
    newest_ms: int | None


@dataclass
class ArchiveStats:
    days: list[DayStats] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.days)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.days)

    @property
    def files(self) -> int:
        return sum(d.files for d in self.days)

    @property
    def oldest_ms(self) -> int | None:
        return min((d.oldest_ms for d in self.days if d.oldest_ms is not None), default=None)

    @property
    def newest_ms(self) -> int | None:
        return max((d.newest_ms for d in self.days if d.newest_ms is not None), default=None)


class Archive:
    """The archive at one location: writes (per partition), compaction, pruning, reads."""

    def __init__(
        self,
        location: str | Path,
        default_tenant: str = DEFAULT_TENANT,
        layout: Layout = METRIC_MINUTES,
    ) -> None:
        #: Whose rows are those of files written before rows named their tenant.
        self.default_tenant = default_tenant
        self.layout = layout
        text = str(location)
        if "://" in text:
            self.fs, self.root = pafs.FileSystem.from_uri(text)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(text).resolve())
        self.location = text

    def __repr__(self) -> str:
        return f"Archive({self.location!r})"

    # -- layout ---------------------------------------------------------------------------

    def day_dir(self, day: date) -> str:
        return f"{self.root}/date={day.isoformat()}"

    def path(self, file: DataFile) -> str:
        return f"{self.day_dir(file.day)}/{file.name}"

    def _listing(self, directory: str) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))

    def days(self) -> list[date]:
        found = []
        for info in self._listing(self.root):
            match = _DAY_DIR.match(info.base_name)
            if match and info.type == pafs.FileType.Directory:
                found.append(date.fromisoformat(match.group(1)))
        return sorted(found)

    def _all_files(self, day: date) -> list[DataFile]:
        files = (DataFile.parse(day, info.base_name) for info in self._listing(self.day_dir(day)))
        return [f for f in files if f is not None]

    def files(self, day: date) -> list[DataFile]:
        """The day's live files (see `live`)."""
        return live(self._all_files(day))

    def files_between(self, start_ms: int, end_ms: int) -> list[DataFile]:
        """Live files of the days that overlap [start_ms, end_ms)."""
        if end_ms <= start_ms:
            return []
        first, last = day_of(start_ms), day_of(end_ms - 1)
        return [f for day in self.days() if first <= day <= last for f in self.files(day)]

    def register(self, con: duckdb.DuckDBPyConnection, files: Sequence[DataFile]) -> None:
        """Make `files` DuckDB's view `rows`. Local files go to DuckDB's own Parquet reader
        (about twice as fast as through Arrow, measured by bench.archive); remote ones go
        through pyarrow's filesystem, so the archive needs one set of credentials, and no
        DuckDB extension is downloaded at run time."""
        paths = [self.path(f) for f in files]
        lacking = self.layout.tenant_added_later
        if isinstance(self.fs, pafs.LocalFileSystem) and not _GLOB_CHARACTERS & set(self.root):
            listed = ", ".join("'" + path.replace("'", "''") + "'" for path in paths)
            # By name where older files may lack a column: that reads every file's footer
            # first (15 ms of a 365-file year), so only where it is needed.
            by_name = "true" if lacking else "false"
            con.execute(
                "CREATE VIEW stored AS SELECT * FROM "
                f"read_parquet([{listed}], hive_partitioning = false, union_by_name = {by_name})"
            )
        else:
            con.register(
                "stored",
                pads.dataset(
                    paths, schema=self.layout.schema, format="parquet", filesystem=self.fs
                ),
            )
        chosen = ", ".join(f'"{field.name}"' for field in self.layout.schema)
        if lacking:
            # Rows of files without a tenant are the default tenant's (as records without one).
            columns = {name for name, *_ in con.execute("DESCRIBE stored").fetchall()}
            default = "'" + self.default_tenant.replace("'", "''") + "'"
            tenant = f"coalesce({lacking}, {default})" if lacking in columns else default
            chosen = chosen.replace(f'"{lacking}"', f"{tenant} AS {lacking}")
        con.execute(f"CREATE VIEW rows AS SELECT {chosen} FROM stored")

    # -- writing --------------------------------------------------------------------------

    def _journal_path(self, partition: int) -> str:
        return f"{self.root}/{_JOURNALS}/p{partition:03d}.json"

    def journal(self, partition: int) -> Journal:
        path = self._journal_path(partition)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return Journal()
        with self.fs.open_input_stream(path) as stream:
            return Journal.from_json(stream.read())

    def _save_journal(self, partition: int, journal: Journal) -> None:
        path = self._journal_path(partition)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path + ".tmp") as stream:
            stream.write(journal.to_json())
        self.fs.move(path + ".tmp", path)

    def _write(self, file: DataFile, table: pa.Table | Iterator[pa.RecordBatch]) -> None:
        """Write under a temporary name, then rename: a file either is whole or is not there."""
        self.fs.create_dir(self.day_dir(file.day), recursive=True)
        path = self.path(file)
        temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"  # unique: two writers never share it
        with pq.ParquetWriter(
            temporary, self.layout.schema, filesystem=self.fs, compression=COMPRESSION
        ) as writer:
            if isinstance(table, pa.Table):
                writer.write_table(table, row_group_size=self.layout.row_group_rows)
            else:
                for batch in table:
                    writer.write_batch(
                        batch.cast(self.layout.schema), row_group_size=self.layout.row_group_rows
                    )
        self.fs.move(temporary, path)

    def _delete(self, path: str) -> None:
        """Delete if there (another compaction may have been first)."""
        with suppress(FileNotFoundError):
            self.fs.delete_file(path)

    def recover(self, partition: int) -> Journal:
        """The partition's journal, after undoing a flush a crash cut short."""
        journal = self.journal(partition)
        if journal.pending is None:
            return journal
        first, last, days = journal.pending
        for day in days:
            self._delete(self.path(DataFile(day, partition, first, last)))
        journal = Journal(journal.through)
        self._save_journal(partition, journal)
        return journal

    def append(self, partition: int, minutes: Sequence[tuple[int, Any]]) -> list[DataFile]:
        """Write (offset, item) pairs of `partition` (items: what the layout makes rows of,
        final minutes by default), in offset order; offsets already written are skipped.
        Returns the files written."""
        journal = self.recover(partition)
        if journal.through is not None:
            minutes = [(o, m) for o, m in minutes if o > journal.through]
        if not minutes:
            return []
        first, last = minutes[0][0], minutes[-1][0]
        tables = self.layout.tables_by_day(m for _, m in minutes)
        days = sorted(tables)
        self._save_journal(partition, Journal(journal.through, (first, last, days)))
        written = []
        for day in days:
            file = DataFile(day, partition, first, last)
            self._write(file, tables[day])
            written.append(file)
        self._save_journal(partition, Journal(last))
        return written

    def compact(self, day: date, partition: int) -> DataFile | None:
        """Merge the partition's live files of `day` into one (a minute given twice is kept
        once); None when there is nothing to merge. Files left inside another one's offsets
        (by a compaction cut short) are deleted."""
        everything = self._all_files(day)
        current = live(everything)
        for shadowed in set(everything) - set(current):
            if shadowed.partition == partition:
                self._delete(self.path(shadowed))
        files = [f for f in current if f.partition == partition]
        if len(files) < 2:
            return None
        merged = DataFile(day, partition, min(f.first for f in files), max(f.last for f in files))
        with connect() as con:
            self.register(con, files)
            deduplicated = con.sql(self.layout.distinct_rows())
            self._write(merged, iter(deduplicated.to_arrow_reader(self.layout.row_group_rows)))
        for file in files:
            self._delete(self.path(file))
        return merged

    def prune(self, before: date) -> list[date]:
        """Drop every day before `before`, whole directories; returns the days dropped."""
        dropped = [day for day in self.days() if day < before]
        for day in dropped:
            self.fs.delete_dir(self.day_dir(day))
        return dropped

    # -- reading --------------------------------------------------------------------------

    def stats(self) -> ArchiveStats:
        """Days, files, rows, bytes and oldest/newest minute, from Parquet footers only."""
        stats = ArchiveStats()
        for day in self.days():
            files = self.files(day)
            rows = size = 0
            oldest: int | None = None
            newest: int | None = None
            for file in files:
                with self.fs.open_input_file(self.path(file)) as handle:
                    size += handle.size()
                    metadata = pq.ParquetFile(handle).metadata
                rows += metadata.num_rows
                minute_column = self.layout.schema.get_field_index(self.layout.time_column)
                for group in range(metadata.num_row_groups):
                    column = metadata.row_group(group).column(minute_column).statistics
                    if column is not None and column.has_min_max:
                        oldest = column.min if oldest is None else min(oldest, column.min)
                        newest = column.max if newest is None else max(newest, column.max)
            stats.days.append(DayStats(day, len(files), rows, size, oldest, newest))
        return stats


def within(location: str, name: str) -> str:
    """The location of a directory `name` inside an archive's location (a path or a URI,
    whose query string stays at the end)."""
    base, mark, query = location.partition("?")
    return f"{base.rstrip('/')}/{name}{mark}{query}"


def prune_cutoff(wall_ms: int, keep_days: int) -> date:
    """Days before this are older than the retention."""
    return day_of(wall_ms - keep_days * DAY_MS)
