"""The write-behind cache's content (core.cells): newest value per cell, range reads merged
over the table's, flushes that take whole partitions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tally.core.cells import NOT_HELD, Cell, DirtyCells, overlay


def cell(value: int) -> bytes:
    return str(value).encode()


def test_a_cell_written_again_keeps_its_newest_value_and_counts_once() -> None:
    dirty = DirtyCells()
    for value in range(5):
        dirty.put(("panes", 0), b"a", cell(value))
    dirty.put(("panes", 1), b"a", cell(9))
    assert len(dirty) == 2
    assert dirty.get(("panes", 0), b"a") == cell(4)
    assert dirty.get(("panes", 2), b"a") is NOT_HELD


def test_a_deleted_cell_hides_the_tables_value_until_it_is_written_out() -> None:
    """A deletion is held as a cell: reads see no value (not the table's), key listings
    leave it out, and the flush takes it (to delete it and write its tombstone)."""
    dirty = DirtyCells()
    dirty.put(("t", 0), b"a", cell(1))
    dirty.put(("t", 0), b"a", None)
    dirty.put(("t", 0), b"b", None)
    assert dirty.get(("t", 0), b"a") is None and dirty.get(("t", 0), b"c") is NOT_HELD
    assert dirty.keys(("t", 0)) == [] and len(dirty) == 2
    assert dirty.in_range(("t", 0), b"a", b"z") == [(b"a", None), (b"b", None)]
    stored = [(b"a", cell(7)), (b"b", cell(8)), (b"c", cell(9))]
    assert list(overlay(stored, dirty.in_range(("t", 0), b"a", b"z"))) == [(b"c", cell(9))]
    assert dirty.take() == [(("t", 0), {b"a": None, b"b": None})]


def test_a_place_changes_with_every_write_and_drop_but_not_when_taken() -> None:
    """An answer kept at a place's change count is current exactly while the count holds."""
    dirty = DirtyCells()
    assert dirty.changes(("t", 0)) == 0
    dirty.put(("t", 0), b"a", cell(1))
    dirty.put(("t", 0), b"a", cell(1))  # the same value written again is still a write
    assert dirty.changes(("t", 0)) == 2
    dirty.take()
    assert dirty.changes(("t", 0)) == 2  # written out: the content is the same
    dirty.drop_range(("t", 0), b"", b"z")  # the table's range is deleted with it
    assert dirty.changes(("t", 0)) == 3
    assert dirty.changes(("t", 1)) == dirty.changes(("u", 0)) == 0


def test_a_cell_put_back_after_a_failed_flush_never_replaces_a_newer_write() -> None:
    dirty = DirtyCells()
    dirty.put(("t", 0), b"a", cell(1))
    dirty.put(("t", 0), b"b", cell(1))
    taken = dirty.take_place(("t", 0))
    dirty.put(("t", 0), b"a", cell(2))  # written again while the flush ran
    for key, value in taken.items():
        dirty.put_back(("t", 0), key, value)
    dirty.settle(("t", 0))
    assert dirty.get(("t", 0), b"a") == cell(2)
    assert dirty.get(("t", 0), b"b") == cell(1)
    assert len(dirty) == 2


def test_a_cell_put_back_never_revives_a_key_dropped_while_its_flush_ran() -> None:
    """Retention deletes a range (runtime.store.delete_below) while a flush that took one of
    its cells is sending it; the send fails: putting the cell back would write the deleted
    key again at the next flush. A range dropped before the next take does not count."""
    dirty = DirtyCells()
    dirty.put(("t", 0), b"a", cell(1))
    dirty.put(("t", 0), b"m", cell(1))
    taken = dirty.take_place(("t", 0))
    dirty.drop_range(("t", 0), b"a", b"c")
    for key, value in taken.items():
        dirty.put_back(("t", 0), key, value)
    dirty.settle(("t", 0))
    assert dirty.get(("t", 0), b"a") is NOT_HELD and dirty.get(("t", 0), b"m") == cell(1)
    dirty.put(("t", 0), b"b", cell(2))
    again = dirty.take_place(("t", 0))
    dirty.put_back(("t", 0), b"b", again[b"b"])
    assert dirty.get(("t", 0), b"b") == cell(2)


def test_range_reads_drops_and_takes() -> None:
    dirty = DirtyCells()
    for key in (b"b", b"d", b"a", b"c"):
        dirty.put(("t", 0), key, cell(ord(key)))
    dirty.put(("u", 0), b"z", cell(0))
    assert [k for k, _ in dirty.in_range(("t", 0), b"b", b"d")] == [b"b", b"c"]
    dirty.drop_range(("t", 0), b"a", b"c")  # deleted from the table meanwhile
    assert sorted(dirty.keys(("t", 0))) == [b"c", b"d"] and len(dirty) == 3
    assert [(place, sorted(cells)) for place, cells in dirty.take([("t", 0), ("v", 0)])] == [
        (("t", 0), [b"c", b"d"])
    ]
    assert len(dirty) == 1 and dirty.places() == [("u", 0)]
    assert [place for place, _ in dirty.take()] == [("u", 0)]
    assert len(dirty) == 0 and dirty.take() == []


keys = st.binary(min_size=1, max_size=3)


@given(
    st.dictionaries(keys, st.binary(max_size=2)),
    st.dictionaries(keys, st.none() | st.binary(max_size=2)),
)
def test_overlay_equals_the_table_updated_with_the_cells(
    stored: dict[bytes, bytes], written: dict[bytes, Cell]
) -> None:
    merged = list(overlay(sorted(stored.items()), sorted(written.items())))
    updated = {**stored, **written}
    assert merged == sorted((key, value) for key, value in updated.items() if value is not None)
