"""Table cells written since the last flush: the write-behind cache's content.

A hot key (a best-selling item's pane, a server's current minute) is written by every batch
that touches it; each write is a RocksDB put and a changelog record. Kept here instead, a cell
is written once per flush however often it changed (Kafka Streams' record cache does the same
in front of its stores). The glue (runtime.cells) flushes before every commit of source
offsets, so what is committed is always in the tables; reads and scans look here first.

A deletion is a cell too (value None): it hides the table's value until the flush deletes it
and writes its tombstone, which standbys and restores apply (state expired by its time to live
is gone everywhere, runtime.expiry).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from enum import Enum

#: (table name, partition): one partition of one table.
Place = tuple[str, int]
#: A cell's encoded value; None: deleted.
Cell = bytes | None


class NotHeld(Enum):
    """What `DirtyCells.get` answers for a cell it does not hold: the table's value stands."""

    NOT_HELD = 0


NOT_HELD = NotHeld.NOT_HELD


class DirtyCells:
    """The newest value of every cell written since its partition was last taken, encoded as
    the table stores it (encoded once when written, so its size is checked then; a read
    decodes its own copy, which the reader may change)."""

    def __init__(self) -> None:
        self._places: dict[Place, dict[bytes, Cell]] = {}
        self._count = 0
        self._changes: Counter[Place] = Counter()
        #: Places whose cells a flush took and has not settled → the key ranges dropped since
        #: (deleted from the table meanwhile): a cell put back in one would revive its key.
        self._dropped_while_out: dict[Place, list[tuple[bytes, bytes]]] = {}

    def __len__(self) -> int:
        return self._count

    def changes(self, place: Place) -> int:
        """How often the place's cells were written or deleted so far (not flushes): what an
        answer built from them is current for."""
        return self._changes[place]

    def put(self, place: Place, key: bytes, value: Cell) -> None:
        """Set a cell (None: delete it)."""
        self._changes[place] += 1
        cells = self._places.get(place)
        if cells is None:
            cells = self._places[place] = {}
        if key not in cells:
            self._count += 1
        cells[key] = value

    def put_back(self, place: Place, key: bytes, value: Cell) -> None:
        """A cell a flush took and could not write out, unless it was written again since
        (the newer value wins; the table's content is unchanged either way) or its key was
        in a range dropped since (deleted from the table: putting it back would revive it)."""
        dropped = self._dropped_while_out.get(place, ())
        if any(start <= key < stop for start, stop in dropped):
            return
        cells = self._places.setdefault(place, {})
        if key not in cells:
            cells[key] = value
            self._count += 1

    def get(self, place: Place, key: bytes) -> Cell | NotHeld:
        """The cell's value (None: deleted), or NOT_HELD: what the table holds stands."""
        cells = self._places.get(place)
        return NOT_HELD if cells is None else cells.get(key, NOT_HELD)

    def in_range(self, place: Place, start: bytes, stop: bytes) -> list[tuple[bytes, Cell]]:
        """The cells with start <= key < stop, in key order, deletions included (a scan of the
        place's cells: they are few next to the table, being only what changed since the last
        flush)."""
        cells = self._places.get(place, {})
        return sorted((key, value) for key, value in cells.items() if start <= key < stop)

    def keys(self, place: Place) -> list[bytes]:
        """The keys of the place's cells that hold a value (deletions left out)."""
        return [key for key, value in self._places.get(place, {}).items() if value is not None]

    def places(self) -> list[Place]:
        return list(self._places)

    def drop_range(self, place: Place, start: bytes, stop: bytes) -> None:
        """Forget the cells with start <= key < stop (deleted from the table meanwhile); while
        a flush has the place's cells out, the range is kept so none of them is put back."""
        self._changes[place] += 1
        if place in self._dropped_while_out:
            self._dropped_while_out[place].append((start, stop))
        cells = self._places.get(place, {})
        for key in [key for key in cells if start <= key < stop]:
            del cells[key]
            self._count -= 1

    def take(self, places: Iterable[Place] | None = None) -> list[tuple[Place, dict[bytes, Cell]]]:
        """Remove and return the cells of `places` (all when None), to be dropped (a
        flush takes its places one by one: `take_place`)."""
        taken = []
        for place in list(self._places) if places is None else places:
            cells = self._remove(place)
            if cells:
                taken.append((place, cells))
        return taken

    def take_place(self, place: Place) -> dict[bytes, Cell]:
        """Remove and return one place's cells (none: empty) to be written out: until
        `settle`, the ranges dropped from the place are kept for `put_back`."""
        cells = self._remove(place)
        if cells:
            self._dropped_while_out[place] = []
        return cells

    def settle(self, place: Place) -> None:
        """The cells taken from `place` are written out or put back."""
        self._dropped_while_out.pop(place, None)

    def _remove(self, place: Place) -> dict[bytes, Cell]:
        cells = self._places.pop(place, None) or {}
        self._count -= len(cells)
        return cells


def overlay(
    stored: Iterable[tuple[bytes, bytes]], written: Iterable[tuple[bytes, Cell]]
) -> Iterator[tuple[bytes, bytes]]:
    """Two key-ordered streams of (key, value) merged in key order, `written` replacing
    `stored` where both have a key and hiding it where `written` deleted it: a table's range
    read with the cells not flushed yet."""
    merged = _merge(stored, written)
    return ((key, value) for key, value in merged if value is not None)


def _merge(
    stored: Iterable[tuple[bytes, bytes]], written: Iterable[tuple[bytes, Cell]]
) -> Iterator[tuple[bytes, Cell]]:
    pending = iter(written)
    mine = next(pending, None)
    for key, value in stored:
        while mine is not None and mine[0] < key:
            yield mine
            mine = next(pending, None)
        if mine is not None and mine[0] == key:
            yield mine
            mine = next(pending, None)
        else:
            yield key, value
    if mine is not None:
        yield mine
        yield from pending
