"""The sliding-window and top-K core against brute force (hypothesis)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core.sliding import Arrival, SlidingTotals
from tally.core.tenancy import scoped
from tally.core.topk import (
    Candidates,
    GroupedTotals,
    RankedTotals,
    merge_candidates,
    merge_top,
    rank_key,
)
from tally.core.windowing import UNBOUNDED, EventClock, PaneSpec

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
    assert window.late_events == {"": 2}  # keys without a tenant: group ""
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
    assert window.last_pane == 6 and window.late_events == {}
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


class SmallIndex(RankedTotals):
    INDEXED_FROM = 4


@given(st.lists(st.tuples(st.sampled_from("abcdefghij"), st.integers(-3, 5)), max_size=80))
def test_ranked_totals_rank_as_brute_force_with_and_without_the_index(
    changes: list[tuple[str, int]],
) -> None:
    """Keys come and go across the index's thresholds (kept from 4 keys, dropped below 2),
    totals negative too; after every change the ranking is the sorted totals."""
    ranked, truth = SmallIndex(), Counter[str]()
    indexed = False
    for key, delta in changes:
        ranked.add(key, delta)
        truth[key] += delta
        held = {k: v for k, v in truth.items() if v}
        assert len(ranked) == len(held) and dict(ranked.items()) == held
        assert ranked.top(3) == sorted(held.items(), key=rank_key)[:3]
        assert ranked.top(20) == sorted(held.items(), key=rank_key)
        indexed = len(held) >= 4 or (indexed and len(held) >= 2)
        assert (ranked._order is not None) == indexed


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


TENANTS = ["acme", "globex", "initech"]


@given(
    st.dictionaries(
        st.tuples(st.sampled_from(TENANTS), st.text("abc", max_size=3)),
        st.integers(1, 20),
        max_size=40,
    ),
    st.integers(1, 4),
    st.integers(1, 6),
)
def test_tenants_candidates_merge_exactly_per_tenant_and_site_wide(
    totals: dict[tuple[str, str], int], partitions: int, k: int
) -> None:
    """Item ids repeat across tenants (two items, one partition: partitioned by the bare id);
    each partition publishes each tenant's top-k; merged, they give every tenant's top-k and
    the site-wide one."""
    by_partition: dict[int, GroupedTotals] = defaultdict(GroupedTotals)
    for (tenant, item), total in totals.items():
        by_partition[hash(item) % partitions].add(scoped(tenant, item), total)
    candidates = [Candidates(p, 1, grouped.top(k), 0, 0) for p, grouped in by_partition.items()]
    everything = {scoped(tenant, item): total for (tenant, item), total in totals.items()}

    def truth(keys: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(keys.items(), key=rank_key)[:k]

    site = merge_candidates(candidates, k)
    assert (site.top if site else []) == truth(everything)
    for tenant in TENANTS:
        mine = merge_candidates(candidates, k, tenant)
        theirs = {key: n for key, n in everything.items() if key.startswith(tenant + "|")}
        assert (mine.top if mine else []) == truth(theirs)


def test_merge_names_lagging_partitions() -> None:
    now = [
        Candidates(0, 11, [("t|a", 4)], 11_000, 5, {"t": 2}),
        Candidates(1, 10, [("u|b", 9)], 10_500, 6, {"t": 1, "u": 4}),
    ]
    merged = merge_candidates(now, 10)
    assert merged is not None
    assert merged.last_pane == 11 and merged.lagging == [1]
    assert merged.top == [("u|b", 9), ("t|a", 4)] and merged.late_events == 7
    of_t = merge_candidates(now, 10, "t")
    assert of_t is not None and of_t.top == [("t|a", 4)] and of_t.late_events == 3
    assert merge_candidates(now, 10, "v") is None  # nothing of the others' shows to v
    saved_before = {**now[0].to_json(), "late_events": 3}  # one count, before per-tenant ones
    assert Candidates.from_json(saved_before).late_events == {"": 3}
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


def test_a_partition_watermark_waits_for_the_slowest_other_partition() -> None:
    clock = EventClock(awaited=frozenset({1, 2, 3}))
    clock.observe(1_000, 5_000)
    clock.hear(2, 500)
    clock.hear(3, 700)
    assert clock.watermark(5_000, 10) is None  # partition 1 has not announced yet
    clock.hear(1, UNBOUNDED)  # it has no message of its own: it holds no one back
    assert (clock.own_watermark(5_000, 10), clock.watermark(5_000, 10)) == (990, 500)
    clock.hear(2, 400)  # a real announcement never goes back
    clock.hear(2, 2_000)
    assert clock.watermark(5_000, 10) == 700
    clock.hear(1, 600)  # partition 1's first message: now it counts
    assert clock.watermark(5_000, 10) == 600
    restored = EventClock.from_record(clock.record(), clock.awaited)
    assert restored == clock and restored.watermark(5_000, 10) == 600
    only_forwarded = EventClock(upstream={1: 300, 2: UNBOUNDED})
    assert only_forwarded.watermark(0, 10) == 300
    assert EventClock(upstream={1: UNBOUNDED}).watermark(0, 10) is None


def test_a_caught_up_partition_holds_no_one_back() -> None:
    """Its clock follows the wall clock as this one's does: waiting for its (timer-driven)
    announcements would only delay every window. Its mark stands in only when nothing else
    gives a watermark."""
    clock = EventClock(awaited=frozenset({1, 2}))
    clock.observe(1_000, 5_000)
    clock.hear(1, 200, resting=True)
    clock.hear(2, 700)
    assert clock.watermark(5_000, 10) == 700  # partition 2 is busy: it binds
    clock.hear(2, 800, resting=True)
    assert clock.watermark(5_000, 10) == 990  # both caught up: this partition's own
    clock.hear(2, 750)  # a backlog came: busy again, its real mark binds again
    assert clock.watermark(5_000, 10) == 800
    restored = EventClock.from_record(clock.record(), clock.awaited)
    assert restored == clock
    no_clock = EventClock(upstream={1: 200, 2: 600}, resting={1, 2})
    assert no_clock.watermark(0, 10) == 600  # only forwarded messages: the freshest resting


def test_before_every_partition_announced_arrivals_are_judged_by_the_own_clock() -> None:
    """No window yet (partition 1 is silent), but an event older than the window at the own
    watermark is late at once: taken into a pane no window will read, it would go nowhere."""
    spec = PaneSpec(pane_ms=100, window_panes=2, grace_ms=0)
    window = SlidingTotals(spec, EventClock(awaited=frozenset({1})))
    outcome = window.ingest([("a", 1, 1_000), ("b", 1, 500), ("c", 1, 950)], 1_000)
    assert window.watermark(1_000) is None and window.last_pane is None
    assert outcome.late == [1] and outcome.pane_deltas == {(10, "a"): 1, (9, "c"): 1}


def test_a_partition_with_no_clock_yet_judges_its_own_first_arrivals_by_nothing_else() -> None:
    """The others have read far ahead (busy or caught up): this partition's first own
    arrivals are not late by their marks; forwarded ones are, and after the first own
    arrival, its own clock is held back by theirs as always."""
    for resting in (False, True):
        clock = EventClock(awaited=frozenset({1, 2}))
        clock.hear(1, 5_000, resting)
        clock.hear(2, UNBOUNDED)
        wall = 100_000
        assert clock.watermark(wall, 10) == 5_000
        assert clock.judging(wall, 10, own=True) is None
        assert clock.judging(wall, 10, own=False) == 5_000
        clock.observe(1_000, wall)
        assert clock.judging(wall, 10, own=True) == 990
        clock.observe(9_000, wall)
        assert clock.judging(wall, 10, own=True) == (8_990 if resting else 5_000)


def test_a_watermark_that_steps_back_reopens_no_closed_pane() -> None:
    """When a caught-up partition it follows gets a backlog, a watermark can step back; a
    pane that has left the window stays closed (an arrival for it is late), so nothing is
    accepted that no window would count."""
    spec = PaneSpec(pane_ms=100, window_panes=2, grace_ms=0)
    window = SlidingTotals(spec, EventClock(awaited=frozenset({1})))
    store = PaneStore()
    window.clock.hear(1, 0, resting=True)
    store.write(window.ingest([("a", 1, 1_000)], 1_000).pane_deltas)
    window.advance(1_000, store.read, 3)
    assert window.last_pane == 10
    window.clock.hear(1, 750)  # busy now, behind: the watermark steps back to pane 7
    assert window.watermark(1_000) == 750
    outcome = window.ingest([("b", 1, 850)], 1_000, own=False)  # pane 8: left the window
    assert outcome.late == [0] and not outcome.pane_deltas
    outcome = window.ingest([("c", 1, 950)], 1_000, own=False)  # pane 9: still in it
    store.write(outcome.pane_deltas)
    assert not outcome.late and dict(window.totals.items()) == {"a": 1, "c": 1}


arrivals = st.lists(st.tuples(keys, st.integers(1, 3), st.integers(-300, 300)), max_size=5)
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["own", "forwarded"]), arrivals),
        # an announcement of partition 1 or 2: a mark (None: UNBOUNDED), resting or busy
        st.tuples(
            st.just("heard"),
            st.tuples(st.integers(1, 2), st.none() | st.integers(-300, 300), st.booleans()),
        ),
        st.tuples(st.just("tick"), st.tuples(st.integers(0, 200), st.booleans())),
        st.tuples(st.just("restart"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(steps, st.integers(1, 3), st.integers(0, 100))
def test_the_window_equals_storage_whatever_the_order_of_batches_announcements_and_restarts(
    steps: list[tuple[str, Any]], window_panes: int, grace_ms: int
) -> None:
    """Own and forwarded batches, announcements (busy, resting, none), idle and busy ticks
    and restarts in any order: after each step and its slide, the window's totals are its
    panes in storage (the invariant of core.sliding)."""
    spec = PaneSpec(pane_ms=100, window_panes=window_panes, grace_ms=grace_ms)
    awaited = frozenset({1, 2})
    window = SlidingTotals(spec, EventClock(awaited=awaited))
    store = PaneStore()
    wall = base = 10_000
    for kind, arg in steps:
        if kind in ("own", "forwarded"):
            batch = [(key, amount, base + jitter) for key, amount, jitter in arg]
            store.write(window.ingest(batch, wall, own=kind == "own").pane_deltas)
        elif kind == "heard":
            partition, mark, resting = arg
            window.clock.hear(partition, UNBOUNDED if mark is None else base + mark, resting)
        elif kind == "tick":
            elapsed, idle = arg
            wall, base = wall + elapsed, base + elapsed
            window.clock.settle(wall, idle)
        else:
            clock = EventClock.from_record(window.clock.record(), awaited)
            window = SlidingTotals.restore(spec, clock, wall, store.read)
        window.advance(wall, store.read, 3)
        if window.last_pane is not None:
            first = spec.first_pane(window.last_pane)
            expected: dict[str, int] = defaultdict(int)
            for (pane, key), amount in store.cells.items():
                if first <= pane <= window.last_pane and amount:
                    expected[key] += amount
            assert dict(window.totals.items()) == expected


@settings(max_examples=200, deadline=None)
@given(
    source=st.lists(st.integers(0, 400), min_size=1, max_size=40),
    own=st.lists(st.integers(0, 400), max_size=40),
    lag=st.integers(0, 40),
    batch=st.integers(1, 8),
)
def test_forwarded_events_are_late_only_if_late_where_they_were_written(
    source: list[int], own: list[int], lag: int, batch: int
) -> None:
    """A source partition's events (times in any order) reach the owner through the routed
    topic any number of batches after the owner read its own, faster stream (a backlog); the
    source announces its watermark after each batch it forwards. An event is late at the owner
    only if it was late at the source by the source's own clock (the owner
    judges a batch before the announcement that follows it, so it may take an event the
    source would have set aside, never the other way round)."""
    spec = PaneSpec(pane_ms=10, window_panes=3, grace_ms=5)
    wall = 10_000  # ahead of every event time, and still: a backlog, no idle credit
    at_source = SlidingTotals(spec)  # judges each event as if the source owned it
    late_at_source = []
    routed: list[tuple[str, object]] = []  # what the routed topic of the owner holds, in order
    for start in range(0, len(source), batch):
        chunk = [("k", 1, t) for t in source[start : start + batch]]
        outcome = at_source.ingest(chunk, wall)
        late_at_source += [start + i for i in outcome.late]
        routed += [("event", arrival) for arrival in chunk]
        routed.append(("mark", at_source.clock.own_watermark(wall, spec.grace_ms)))
    owner = SlidingTotals(spec, EventClock(awaited=frozenset({1})))
    store = PaneStore()
    own_batches = [[("o", 1, t) for t in own[i : i + batch]] for i in range(0, len(own), batch)]
    late_at_owner: list[int] = []
    seen = 0
    steps = max(len(own_batches), 1) + lag + len(routed)
    for step in range(steps):
        if step < len(own_batches):
            store.write(owner.ingest(own_batches[step], wall).pane_deltas)
        if step >= lag and routed:
            events = []
            while routed and routed[0][0] == "event":
                events.append(routed.pop(0)[1])
            outcome = owner.ingest(events, wall, own=False)  # type: ignore[arg-type]
            late_at_owner += [seen + i for i in outcome.late]
            seen += len(events)
            store.write(outcome.pane_deltas)
            if routed:  # the announcement after them
                owner.clock.hear(1, routed.pop(0)[1])  # type: ignore[arg-type]
        owner.advance(wall, store.read, 5)
    assert set(late_at_owner) <= set(late_at_source)
