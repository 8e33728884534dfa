"""The sliding-window and top-K core against brute force (hypothesis)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core.sliding import Arrival, SlidingTotals
from tally.core.topk import Candidates, RankedTotals, merge_candidates, merge_top, rank_key
from tally.core.windowing import EventClock, PaneSpec

PANE = 100  # ms: small numbers keep the search space dense with rollovers and ties


class PaneStore:
    """Storage as the glue keeps it: (pane, key) -> amount."""

    def __init__(self) -> None:
        self.cells: dict[tuple[int, str], int] = defaultdict(int)

    def read(self, pane: int) -> list[tuple[str, int]]:
        return [(k, v) for (p, k), v in self.cells.items() if p == pane]

    def write(self, deltas: dict[tuple[int, str], int]) -> None:
        for cell, amount in deltas.items():
            self.cells[cell] += amount


def brute_force(
    steps: list[tuple[int, list[Arrival]]], spec: PaneSpec
) -> tuple[list[Arrival], list[int], int | None]:
    """Replay every event one by one with the documented rules: the accepted events, the late
    ones' indexes, and the window's last pane at the end (None before any event)."""
    clock, clock_wall = None, 0  # event time at wall time clock_wall; + wall speed after
    accepted: list[Arrival] = []
    late: list[int] = []
    n = 0
    for wall, batch in steps:
        for key, amount, ts in batch:
            advanced = None if clock is None else clock + max(0, wall - clock_wall)
            capped = min(ts, wall)  # never ahead of the wall clock
            clock = capped if advanced is None else max(advanced, capped)
            clock_wall = max(clock_wall, wall)
            watermark = clock - spec.grace_ms
            first_allowed = watermark // spec.pane_ms - spec.window_panes + 1
            if ts // spec.pane_ms < first_allowed:
                late.append(n)
            else:
                accepted.append((key, amount, ts))
            n += 1
    if clock is None:
        return accepted, late, None
    wall = steps[-1][0]
    return accepted, late, (clock + max(0, wall - clock_wall) - spec.grace_ms) // spec.pane_ms


def window_totals(accepted: list[Arrival], spec: PaneSpec, last: int) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for key, amount, ts in accepted:
        if last - spec.window_panes + 1 <= ts // spec.pane_ms <= last:
            totals[key] += amount
    return {k: v for k, v in totals.items() if v}


keys = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])
batches = st.lists(
    st.tuples(
        st.integers(0, 400),  # wall-clock step
        st.lists(
            st.tuples(keys, st.integers(1, 5), st.integers(-300, 300)), max_size=12
        ),  # ts jitter
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    batches,
    st.integers(1, 4),
    st.integers(0, 250),
    st.integers(1, 5),
)
def test_sliding_totals_equal_brute_force(
    raw: list, window_panes: int, grace_ms: int, k: int
) -> None:
    spec = PaneSpec(pane_ms=PANE, window_panes=window_panes, grace_ms=grace_ms)
    window = SlidingTotals(spec)
    store = PaneStore()
    steps: list[tuple[int, list[Arrival]]] = []
    wall = 10_000
    base = 10_000
    late_seen: list[int] = []
    offset = 0
    for wall_step, events in raw:
        wall += wall_step
        base += (
            wall_step  # event time moves with the wall clock, plus jitter: out-of-order, late, ties
        )
        batch = [(key, amount, base + jitter) for key, amount, jitter in events]
        steps.append((wall, batch))
        outcome = window.ingest(batch, wall)
        store.write(outcome.pane_deltas)
        late_seen += [offset + i for i in outcome.late]
        offset += len(batch)
        closing = window.advance(wall, store.read, k)
        accepted, expected_late, last = brute_force(steps, spec)
        if closing is not None:  # the window that slid away had everything it should
            expected_closing = window_totals(accepted, spec, closing.last_pane)
            assert closing.top == sorted(expected_closing.items(), key=rank_key)[:k]
        assert late_seen == expected_late
        assert window.last_pane == last
        expected = window_totals(accepted, spec, last) if last is not None else {}
        assert dict(window.totals.items()) == expected
        assert window.top(k) == sorted(expected.items(), key=rank_key)[:k]
    # A restart rebuilds the same window from storage alone.
    restored = SlidingTotals.restore(
        spec, EventClock(window.clock.event_ms, window.clock.wall_ms), wall, store.read
    )
    assert dict(restored.totals.items()) == dict(window.totals.items())


def test_idle_partition_slides_with_the_wall_clock() -> None:
    spec = PaneSpec(pane_ms=1000, window_panes=2, grace_ms=0)
    window = SlidingTotals(spec)
    store = PaneStore()
    for batch in ([("old", 5, 10_100)], [("new", 1, 11_100)]):
        store.write(window.ingest(batch, wall_ms=50_000).pane_deltas)
        window.advance(50_000, store.read, 5)
    assert window.top(5) == [("old", 5), ("new", 1)]
    assert window.advance(50_500, store.read, 5) is None  # still pane 11
    closing = window.advance(51_000, store.read, 5)  # pane 12: pane 10 leaves
    assert closing is not None and closing.last_pane == 11
    assert closing.top == [("old", 5), ("new", 1)]
    assert window.top(5) == [("new", 1)]
    assert window.advance(53_000, store.read, 5) is not None
    assert window.top(5) == []


def test_late_events_are_counted_and_not_added() -> None:
    spec = PaneSpec(pane_ms=1000, window_panes=2, grace_ms=500)
    window = SlidingTotals(spec)
    store = PaneStore()
    wall = 100_000  # the wall clock is ahead of these event times and does not move
    outcome = window.ingest([("x", 1, 20_000), ("y", 1, 18_999), ("z", 1, 19_000)], wall)
    store.write(outcome.pane_deltas)
    window.advance(wall, store.read, 5)
    # watermark 19_500 -> window [18, 19]: y (pane 18) and z count; x (pane 20) waits ahead
    assert outcome.late == []
    assert dict(window.totals.items()) == {"y": 1, "z": 1}
    outcome = window.ingest([("x", 1, 21_600), ("y", 5, 19_999), ("z", 5, 18_500)], wall)
    store.write(outcome.pane_deltas)
    closing = window.advance(wall, store.read, 5)
    # watermark 21_100 -> window [20, 21]: pane 19 and 18 are late; x entered from storage
    assert outcome.late == [1, 2]
    assert window.late_events == 2
    assert dict(window.totals.items()) == {"x": 2}
    assert (19, "y") not in outcome.pane_deltas and (18, "z") not in outcome.pane_deltas
    assert closing is not None and closing.last_pane == 19 and closing.top == [("y", 1), ("z", 1)]


def test_an_arrival_within_the_grace_after_a_boundary_still_counts() -> None:
    """The window follows the watermark, so nothing accepted falls between two windows."""
    spec = PaneSpec(pane_ms=1000, window_panes=1, grace_ms=300)
    window = SlidingTotals(spec)
    store = PaneStore()
    for batch in ([("a", 1, 5_900)], [("b", 1, 6_100)], [("a", 1, 5_950)], [("b", 1, 6_400)]):
        store.write(window.ingest(batch, 100_000).pane_deltas)
        window.advance(100_000, store.read, 5)
    assert window.last_pane == 6 and window.late_events == 0
    assert dict(window.totals.items()) == {"b": 2}
    assert sum(v for (p, k), v in store.cells.items() if p == 5) == 2  # both a's in pane 5


def test_ranked_totals_order_and_removal() -> None:
    ranked = RankedTotals()
    for key, amount in [("b", 3), ("a", 3), ("c", 5), ("d", 1)]:
        ranked.add(key, amount)
    assert ranked.top(3) == [("c", 5), ("a", 3), ("b", 3)]
    ranked.add("c", -5)
    assert ranked.total("c") == 0 and len(ranked) == 3
    assert ranked.top(10) == [("a", 3), ("b", 3), ("d", 1)]


@given(
    st.dictionaries(st.text(max_size=4), st.integers(1, 20), max_size=40),
    st.integers(1, 5),
    st.integers(1, 8),
)
def test_merging_partition_top_ks_is_exact(totals: dict[str, int], partitions: int, k: int) -> None:
    by_partition: dict[int, dict[str, int]] = defaultdict(dict)
    for key, total in totals.items():
        by_partition[hash(key) % partitions][key] = total
    local = [sorted(p.items(), key=rank_key)[:k] for p in by_partition.values()]
    assert merge_top(local, k) == sorted(totals.items(), key=rank_key)[:k]


def test_merge_names_lagging_partitions() -> None:
    now = [Candidates(0, 11, [("a", 4)], 11_000, 5), Candidates(1, 10, [("b", 9)], 10_500, 6)]
    merged = merge_candidates(now, 10)
    assert merged is not None
    assert merged.last_pane == 11 and merged.lagging == [1]
    assert merged.top == [("b", 9), ("a", 4)]
    assert merged.watermark_ms == 10_500 and merged.as_of_ms == 5
    assert merge_candidates([], 10) is None
    assert Candidates.from_json(now[0].to_json()) == now[0]


def test_an_event_from_the_future_moves_the_clock_only_to_now() -> None:
    clock = EventClock()
    clock.observe(1_000, wall_ms=1_000)
    clock.observe(500_000, wall_ms=2_000)  # a server whose clock is 8 minutes fast
    assert clock.now(2_000) == 2_000 and clock.now(3_000) == 3_000


def test_pane_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        PaneSpec(pane_ms=0, window_panes=24)
    with pytest.raises(ValueError):
        PaneSpec(pane_ms=1, window_panes=24, grace_ms=-1)


clock_steps = st.lists(
    st.tuples(
        st.sampled_from(["observe", "idle", "backlog"]),
        st.integers(0, 5_000),  # wall time passing before the step
        st.integers(-20_000, 20_000),  # the event's time relative to the wall clock
    ),
    max_size=40,
)


@given(clock_steps)
def test_event_clock_follows_the_wall_only_while_caught_up(
    steps: list[tuple[str, int, int]],
) -> None:
    """Never back, never past the wall clock; time spent with a backlog is not credited (only
    events move the clock then), time spent idle is."""
    clock, wall, last = EventClock(), 1_000_000, None
    for kind, elapsed, offset in steps:
        wall += elapsed
        before, since = clock.now(clock.wall_ms), clock.wall_ms
        if kind == "observe":
            clock.settle(wall, idle=False)
            clock.observe(wall + offset, wall)
        else:
            clock.settle(wall, idle=kind == "idle")
            if before is not None:
                assert clock.now(wall) - before == (wall - since if kind == "idle" else 0)
        now = clock.now(wall)
        assert now is None or now <= wall
        assert last is None or (now is not None and now >= last)
        last = now
