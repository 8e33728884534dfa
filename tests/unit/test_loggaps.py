"""Gaps in the log judged from what was fetched, not from what was delivered (core.loggaps)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core.loggaps import LogGaps


def test_a_jump_within_a_fetch_or_between_two_is_a_gap_and_a_step_back_is_not() -> None:
    gaps = LogGaps()
    gaps.fetched("p", [3, 4, 6])  # 5: a transaction marker
    gaps.fetched("p", [8, 9])  # 7: one at the end of the last fetch
    gaps.fetched("p", [4, 6])  # a seek back (a reread): 5 still known
    lacks = gaps.lacks("p")
    assert [o for o in range(0, 12) if lacks(o)] == [5, 7]
    assert not gaps.lacks("other")(5)


def test_a_message_fetched_and_then_dropped_is_not_a_gap() -> None:
    """Faust delivering 10, 11, 14 (it dropped 12 and 13) took 12-13 for a gap; the fetch
    had them."""
    gaps = LogGaps()
    gaps.fetched("p", [10, 11, 12, 13])
    gaps.fetched("p", [14, 15])
    assert not any(gaps.lacks("p")(o) for o in (12, 13))


def test_only_offsets_between_gaps_still_kept_are_known_to_be_held() -> None:
    gaps = LogGaps(kept=2)
    gaps.fetched("p", [1, 3, 5, 7])  # gaps 2, 4, 6: the first no longer kept, 1 unknown
    held = gaps.holds("p")
    assert [o for o in range(0, 9) if held(o, o + 1)] == [3, 5, 7]


def test_rereads_take_no_room_and_what_is_known_never_shrinks_to_an_absent_offset() -> None:
    """Markers at 10, 20, 30, 40; read through, then twice again from 5: the gaps crossed
    again are not kept twice, so none of the four is taken for a message."""
    log = [o for o in range(46) if o % 10 or o == 0]
    gaps = LogGaps(kept=4)
    gaps.fetched("p", log)
    gaps.fetched("p", [o for o in log if 5 <= o <= 25])
    gaps.fetched("p", [o for o in log if o >= 5])
    held = gaps.holds("p")
    assert [o for o in range(50) if held(o, o + 1)] == log


def test_a_seek_back_before_the_first_offset_fetched_finds_the_gaps_there() -> None:
    gaps = LogGaps()
    gaps.fetched("p", [10, 11, 12])
    gaps.fetched("p", [3, 4, 7, 8, 9, 10, 13])  # 5-6 and nothing else is missing
    held = gaps.holds("p")
    assert [o for o in range(0, 15) if held(o, o + 1)] == [3, 4, 7, 8, 9, 10, 11, 12, 13]
    assert [o for o in range(0, 15) if gaps.lacks("p")(o)] == [5, 6]


def test_a_partition_that_comes_back_starts_over() -> None:
    gaps = LogGaps()
    gaps.fetched("p", [1, 3])
    gaps.forget("p")
    gaps.fetched("p", [10])  # assigned again, from its committed offset: 4-9 not a gap
    assert [o for o in range(0, 12) if gaps.lacks("p")(o)] == []


def test_reading_began_at_the_first_offset_fetched_since_the_partition_came() -> None:
    gaps = LogGaps()
    assert gaps.first("p") is None
    gaps.fetched("p", [0, 1, 2])  # Faust then dropped 0: delivered from 1
    gaps.fetched("p", [3])
    assert gaps.first("p") == 0
    gaps.fetched("p", [1, 2])  # a reread within the stretch
    assert gaps.first("p") == 0
    gaps.forget("p")
    gaps.fetched("p", [7, 8])
    gaps.fetched("p", [5])  # a seek back before it: unknown until it joins the stretch
    assert gaps.first("p") is None
    gaps.fetched("p", [6, 7])
    assert gaps.first("p") == 5


@settings(max_examples=200, deadline=None)
@given(
    present=st.lists(st.booleans(), min_size=1, max_size=60),
    cuts=st.lists(st.integers(1, 8), min_size=1, max_size=30),
    seeks=st.lists(st.integers(0, 59), max_size=4),
    kept=st.integers(1, 6),
)
def test_what_is_lacking_is_exactly_what_the_log_lacks_between_fetched_offsets(
    present: list[bool], cuts: list[int], seeks: list[int], kept: int
) -> None:
    """A log with markers (absent offsets) read forward in fetches of any size, with seeks
    back now and then: every offset between the first and last fetched is lacking exactly
    when the log has no message there."""
    records = [offset for offset, here in enumerate(present) if here]
    gaps, few = LogGaps(), LogGaps(kept=kept)
    position, fetched_any = 0, []
    for size in cuts * 3:
        fetch = [o for o in records if position <= o < position + size]
        gaps.fetched("p", fetch)
        few.fetched("p", fetch)
        fetched_any += fetch
        position += size
        if seeks and position > seeks[0]:
            position = seeks.pop(0)  # read again from an earlier offset
        if position >= len(present):
            break
    if not fetched_any:
        return
    lacks, holds = gaps.lacks("p"), gaps.holds("p")
    for offset in range(min(fetched_any), max(fetched_any) + 1):
        assert lacks(offset) == (not present[offset]), offset
        assert holds(offset, offset + 1) == present[offset], offset
    low, high = min(fetched_any), max(fetched_any)
    assert not holds(low - 1, low) and not holds(high + 1, high + 2), "unknown"
    for start in range(low, high + 1):  # a stretch holds a message if any offset in it is one
        for stop in range(start + 1, min(start + 6, high + 2)):
            assert holds(start, stop) == any(present[start:stop]), (start, stop)
    some_held = few.holds("p")  # some gaps dropped for room: less is known, nothing wrong
    assert all(present[o] for o in range(len(present)) if some_held(o, o + 1))


@settings(max_examples=300, deadline=None)
@given(
    present=st.lists(st.booleans(), min_size=1, max_size=60),
    start=st.integers(0, 59),
    cuts=st.lists(st.integers(1, 8), min_size=1, max_size=30),
    seeks=st.lists(st.integers(0, 59), max_size=6),
    kept=st.integers(1, 8),
)
def test_whatever_the_seeks_nothing_is_taken_for_a_message_or_a_gap_wrongly(
    present: list[bool], start: int, cuts: list[int], seeks: list[int], kept: int
) -> None:
    """Reading from anywhere, seeking back now and then (before the first offset fetched too):
    an offset said to be lacking is absent from the log, and a stretch said to hold a
    message holds one."""
    records = [offset for offset, here in enumerate(present) if here]
    gaps = LogGaps(kept=kept)
    position = start
    for size in cuts:
        gaps.fetched("p", [o for o in records if position <= o < position + size])
        position += size
        if seeks:  # a seek back (a reread), never forward: a jump forward is a gap
            position = min(seeks.pop(0), position)
    lacks, holds = gaps.lacks("p"), gaps.holds("p")
    for offset in range(len(present) + 2):
        assert not (lacks(offset) and offset < len(present) and present[offset]), offset
        for stop in range(offset + 1, offset + 5):
            assert not holds(offset, stop) or any(present[offset:stop]), (offset, stop)
