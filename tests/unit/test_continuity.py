"""The offset a table partition records never passes changelog records it skipped, whatever a
restore drops; holes the log itself has are passed after a reread shows them again."""

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
    batches from the recorded offset; a restore now and then drops records fetched right after
    its seek (Faust's race; never the same count twice from one place, which would look like
    a hole in the log), or restarts. Every offset at or below the recorded one is applied or
    absent; with drops ending, the recorded offset reaches the log's last record."""
    log = [offset for offset in range(size) if offset not in absent]
    continuity = ChangelogContinuity()
    recorded: int | None = None
    applied: set[int] = set()
    drops: set[tuple[int, int]] = set()
    for _ in range(200):
        start = -1 if recorded is None else recorded  # a restore reads on from there
        ahead = [offset for offset in log if offset > start]
        if len(drops) < 4 and ahead and events.draw(st.booleans()):
            count = events.draw(st.integers(1, len(ahead)))
            if (start, count) not in drops:
                drops.add((start, count))
                ahead = ahead[count:]  # fetched after the seek, then dropped
        while ahead:
            taken, ahead = ahead[:batch], ahead[batch:]
            applied.update(taken)
            recorded = continuity.applied("p", taken, recorded)
            assert all(o in applied or o in absent for o in range(recorded + 1))
            if events.draw(st.integers(0, 9)) == 0:
                break  # a rebalance: the next restore starts from the recorded offset
        if log and recorded == log[-1]:
            break
    assert not log or recorded == log[-1], "caught up once the drops stopped"


def test_a_fresh_standby_that_missed_the_start_records_nothing_until_a_reread() -> None:
    """Seen in the soak: a standby with nothing recorded got offsets from 992 on."""
    continuity = ChangelogContinuity()
    assert continuity.applied("p", [992, 993], None) == -1
    assert continuity.applied("p", [994], -1) == -1
    assert continuity.holes() == {"p": 0}
    assert continuity.applied("p", [0, 1, 2], -1) == 2, "the reread from the start mends it"
    assert continuity.applied("p", [3], 2) == 3 and continuity.holes() == {}


def test_a_hole_a_reread_shows_again_is_in_the_log_and_passed() -> None:
    continuity = ChangelogContinuity()
    assert continuity.applied("p", [10, 13, 14], 9) == 10
    assert continuity.applied("p", [13, 14, 15], 10) == 15, "11-12 are not in the log"


def test_own_writes_move_the_last_applied_offset() -> None:
    """An active's acknowledged writes: a standby reading on from there has no hole."""
    continuity = ChangelogContinuity()
    assert continuity.wrote("p", 40) == 40
    assert continuity.applied("p", [41, 42], 40) == 42
    assert continuity.applied("p", [45], 42) == 42
    assert continuity.wrote("p", 46) == 42, "its writes do not mend a hole before them"
