"""The offset a table partition records never passes changelog records it skipped, whatever a
restore drops, however often; only a read that cannot drop passes what the log lacks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core.continuity import ChangelogContinuity


@settings(max_examples=400, deadline=None)
@given(
    size=st.integers(1, 60),
    absent=st.sets(st.integers(0, 59), max_size=8),
    batch=st.integers(1, 8),
    events=st.data(),
)
def test_the_recorded_offset_never_passes_a_skipped_record_and_reaches_the_end(
    size: int, absent: set[int], batch: int, events: st.DataObject
) -> None:
    """A changelog of `size` offsets, some `absent` from the log (compacted, markers), read in
    batches from the recorded offset, by Faust's recovery (which now and then drops records
    fetched right after its seek, the same ones again or others) or by the bulk reader (which
    drops nothing); a restore may stop midway (a rebalance). Every offset at or below the
    recorded one is applied or absent, and a bulk read brings the recorded offset to the
    log's last record."""
    log = [offset for offset in range(size) if offset not in absent]
    continuity = ChangelogContinuity()
    recorded: int | None = None
    applied: set[int] = set()
    for restore in range(30):
        start = -1 if recorded is None else recorded  # a restore reads on from there
        ahead = [offset for offset in log if offset > start]
        bulk = restore == 29 or events.draw(st.integers(0, 4)) == 0
        if not bulk and ahead and events.draw(st.booleans()):
            ahead = ahead[events.draw(st.integers(1, len(ahead))) :]  # fetched, then dropped
        while ahead:
            taken, ahead = ahead[:batch], ahead[batch:]
            applied.update(taken)
            if bulk:
                recorded = continuity.read_through("p", taken[-1])
            else:
                recorded = continuity.applied("p", taken, recorded)
            assert all(o in applied or o in absent for o in range(recorded + 1))
            if continuity.whole("p"):  # fit to answer from: nothing skipped up to the newest
                assert all(o in applied or o in absent for o in range(max(applied) + 1))
            if not bulk and events.draw(st.integers(0, 9)) == 0:
                break  # a rebalance: the next restore starts from the recorded offset
        if bulk and log:
            assert recorded == log[-1], "a read that drops nothing reaches the end"


def test_a_fresh_standby_that_missed_the_start_records_nothing_until_a_reread() -> None:
    """Seen in the soak: a standby with nothing recorded got offsets from 992 on; the same
    drop again on the next restore passes nothing."""
    continuity = ChangelogContinuity()
    assert continuity.applied("p", [992, 993], None) == -1
    assert continuity.applied("p", [994], -1) == -1
    assert continuity.applied("p", [992, 993], -1) == -1, "the same drop again"
    assert continuity.applied("p", [0, 1, 2], -1) == 2, "the reread from the start mends it"
    assert continuity.applied("p", [3], 2) == 3


def test_a_standby_read_again_from_its_hole_mends_it() -> None:
    """runtime.restore seeks a standby with a hole back to it; records fetched before the seek
    may still come first."""
    continuity = ChangelogContinuity()
    assert continuity.applied("p", [10, 11], 9) == 11
    assert continuity.applied("p", [15, 16], 11) == 11
    assert continuity.hole("p") == 12
    assert continuity.applied("p", [17], 11) == 11, "fetched before the seek"
    assert continuity.applied("p", [12, 13, 14], 11) == 14
    assert continuity.hole("p") is None
    assert not continuity.whole("p"), "17 was applied before: 15-17 are older until read again"
    assert continuity.applied("p", [15, 16, 17, 18], 14) == 18
    assert continuity.whole("p")


def test_the_bulk_reader_passes_what_the_log_lacks() -> None:
    continuity = ChangelogContinuity()
    assert continuity.applied("p", [10, 13, 14], 9) == 10
    assert continuity.applied("p", [13, 14], 10) == 10, "Faust's reread passes no hole"
    assert continuity.read_through("p", 15) == 15, "11-12 are not in the log"
    assert continuity.applied("p", [16], 15) == 16


def test_own_writes_move_the_last_applied_offset() -> None:
    """An active's acknowledged writes: a standby reading on from there has no hole."""
    continuity = ChangelogContinuity()
    assert continuity.wrote("p", 40) == 40
    assert continuity.applied("p", [41, 42], 40) == 42
    assert continuity.applied("p", [45], 42) == 42
    assert continuity.wrote("p", 46) == 42, "its writes do not mend a hole before them"
