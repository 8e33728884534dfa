"""Time to live by event time: expiry, the index, bounded sweeps, stale messages."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.core.ttl import (
    TimeToLive,
    due_range,
    expiry_key,
    parse_expiry_key,
    retouch,
    sweep,
)

MINUTE = 60_000
SESSION = TimeToLive(30 * MINUTE)


def test_a_key_expires_exactly_at_its_newest_event_plus_the_ttl() -> None:
    assert not SESSION.expired(0, 30 * MINUTE - 1)
    assert SESSION.expired(0, 30 * MINUTE)


def test_a_message_is_stale_once_older_than_the_ttl_on_arrival() -> None:
    assert not SESSION.stale(0, 30 * MINUTE)
    assert SESSION.stale(0, 30 * MINUTE + 1)
    assert SESSION.stale_reason(0, 31 * MINUTE) == (
        "arrived 1860000 ms after its event time, past its time to live of 1800000 ms"
    )


def test_a_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TimeToLive(0)


@given(st.integers(0, 10**13 - 2), st.binary(max_size=20))
def test_index_entries_read_back_and_sort_by_time(at: int, key: bytes) -> None:
    assert parse_expiry_key(expiry_key(at, key)) == (at, key)
    start, stop = due_range(at)
    assert start <= expiry_key(at, key) < stop
    assert not expiry_key(at + 1, b"") < stop


def test_entries_that_are_not_index_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="not an expiry index entry"):
        parse_expiry_key(b"session-1")
    with pytest.raises(ValueError, match="out of range"):
        expiry_key(-1, b"k")


def test_an_older_event_does_not_move_the_expiry_back() -> None:
    touched = retouch(SESSION, b"s", 5 * MINUTE, 2 * MINUTE)
    assert (touched.last_ms, touched.drop, touched.write) == (5 * MINUTE, None, None)


def expiry_in(state: dict[bytes, int], ttl: TimeToLive) -> Callable[[bytes], int | None]:
    return lambda key: ttl.expires_at(state[key]) if key in state else None


#: A key and the event time of a touch, or a sweep of at most `budget` entries.
Operation = tuple[str, int, int]
operations = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["touch", "touch, its old entry left"]),
            st.integers(0, 5),
            st.integers(0, 120 * MINUTE),
        ),
        st.tuples(st.just("sweep"), st.integers(0, 4), st.just(0)),
    ),
    max_size=60,
)


@given(operations, st.integers(1, 60 * MINUTE))
def test_sweeps_remove_exactly_the_expired_keys_and_never_a_live_one(
    run: list[Operation], ttl_ms: int
) -> None:
    """Touches (late ones too: the clock is the newest event time seen; some leave their
    old index entry behind, as a crash between the two writes would) and sweeps of random
    budgets, against brute force over every touch so far."""
    ttl = TimeToLive(ttl_ms)
    state: dict[bytes, int] = {}  # key → its newest event time
    index: list[bytes] = []
    touches: dict[bytes, int] = {}  # brute force: key → newest event time ever
    clock = 0
    for kind, a, b in run:
        if kind != "sweep":
            key, at = str(a).encode(), b
            clock = max(clock, at)
            touches[key] = max(touches.get(key, at), at)
            previous = state.get(key)
            if previous is not None and ttl.expired(previous, clock):
                previous = None  # expired, not swept yet: read as gone (its entry is left)
            if ttl.expired(at, clock) and previous is None:
                continue  # stale on arrival: the runtime counts it, creates nothing
            touched = retouch(ttl, key, previous, at)
            state[key] = touched.last_ms
            if touched.drop is not None and kind == "touch":
                index.remove(touched.drop)
            if touched.write is not None and touched.write not in index:
                insort(index, touched.write)
        else:
            start, stop = due_range(clock)
            due = index[bisect_left(index, start) : bisect_left(index, stop)]
            found = sweep(due, expiry_in(state, ttl), clock, a)
            assert len(found.dropped) <= a
            assert found.more == (len(due) > a)
            for key in found.expired:
                assert ttl.expired(touches[key], clock), "a live key was swept"
                del state[key]
            for entry in found.dropped:
                index.remove(entry)
        assert {expiry_key(ttl.expires_at(t), k) for k, t in state.items()} <= set(index)
    start, stop = due_range(clock)
    rest = sweep(index[: bisect_left(index, stop)], expiry_in(state, ttl), clock, len(index))
    for key in rest.expired:
        del state[key]
    assert not rest.more
    live = {key for key, at in touches.items() if not ttl.expired(at, clock)}
    assert set(state) == live
