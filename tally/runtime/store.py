"""Ordered reads and local deletes on one partition of a Faust RocksDB table.

Faust's table API has no range scans; the keys of Tally's tables are laid out so that a query is
one ordered scan of one partition. These helpers reach the partition's rocksdict database
through Faust's store (`faust_compat.partition_db`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faust.types import CollectionT
from faust.utils import json as faust_json

from tally.core.cells import overlay
from tally.runtime import cells
from tally.runtime.faust_compat import partition_db


def memory_bounded() -> dict[str, int]:
    """RocksDB options for a table that grows with what it holds (a million customers'
    histories): with Faust's defaults each partition's database may keep 3 x 64 MiB of
    memtables and a 2 GiB block cache; with these, 2 x 8 MiB and 16 MiB (a new dict each
    time: Faust's store takes keys out of the one it is given)."""
    return {
        "write_buffer_size": 8 << 20,
        "max_write_buffer_number": 2,
        "block_cache_size": 16 << 20,
    }


#: Faust keeps its own records (the partition's changelog offset) in the same database.
FAUST_PREFIX = b"__faust"


def partition_key(partition: int) -> bytes:
    """Key of a table's per-partition record (event clocks, watermarks)."""
    return str(partition).encode()


def stored_value(raw: bytes) -> Any:
    """A raw value from `scan`, decoded as Faust encoded it (its JSON codec, orjson)."""
    return faust_json.loads(raw)  # type: ignore[arg-type]  # its JSON (orjson) reads bytes


def scan(
    table: CollectionT, partition: int, start: bytes, stop: bytes
) -> Iterator[tuple[bytes, bytes]]:
    """Raw (key, value) pairs with start <= key < stop, in key order (Faust's own skipped):
    the table's, with the cells written since the last flush in their place (runtime.cells)."""
    written = cells.dirty.in_range(cells.place(table, partition), start, stop)
    return overlay(stored_range(table, partition, start, stop), written)


def stored_range(
    table: CollectionT, partition: int, start: bytes, stop: bytes
) -> Iterator[tuple[bytes, bytes]]:
    for key, value in partition_db(table, partition).items(from_key=start):
        if key >= stop:
            break
        if not key.startswith(FAUST_PREFIX):
            yield key, value


def tenant_values(table: CollectionT, partition: int, tenant: str) -> list[Any]:
    """Every value of a tenant's keys ("<tenant>|...") in its partition of `table`, decoded."""
    prefix = f"{tenant}|".encode()
    return [stored_value(value) for _, value in scan(table, partition, prefix, prefix[:-1] + b"}")]


def delete_below(table: CollectionT, partition: int, stop: bytes, start: bytes = b"") -> None:
    """Delete start <= key < stop locally only: no changelog tombstones (the changelog drops
    old records by retention, and restore skips them); cells not written out yet included."""
    cells.dirty.drop_range(cells.place(table, partition), start, stop)
    partition_db(table, partition).delete_range(start, stop)


def first_parts(
    table: CollectionT, partition: int, parts: int = 1, separator: bytes = b"|"
) -> list[str]:
    """The distinct key prefixes of `parts` parts (tenants; tenants' servers or metrics) of a
    partition, in order, one seek each: after a prefix is found, the scan jumps past all its
    keys instead of reading them. Cells not written out yet count too."""

    def prefix(key: bytes) -> bytes | None:
        split = key.split(separator, parts)
        return separator.join(split[:parts]) if len(split) > parts else None

    db = partition_db(table, partition)
    found_parts = {
        found
        for key in cells.dirty.keys(cells.place(table, partition))
        if (found := prefix(key)) is not None
    }
    start = b""
    while True:
        key = next(iter(db.keys(from_key=start)), None)
        if key is None:
            return sorted(part.decode() for part in found_parts)
        part = prefix(key)
        if part is None:  # Faust's own record: step over it
            start = key + b"\x00"
            continue
        found_parts.add(part)
        start = part + bytes([separator[0] + 1])
