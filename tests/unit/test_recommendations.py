"""Co-views in panes and recommendations, against brute force over the same views."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations

from hypothesis import given
from hypothesis import strategies as st

from tally.core.recommendations import CO_VIEWS, recent, recommend, view, window_counts

HOUR = 3_600_000

#: (session, item, event time): views over 10 days, so some leave the 7-day window.
views = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from("abcdefg"), st.integers(0, 240 * HOUR)),
    max_size=80,
)


def brute_force_panes(seen: list[tuple[int, str, int]]) -> dict[tuple[str, str, int], int]:
    """Each session's pairs, counted in the pane of the later of the two first views."""
    first: dict[int, dict[str, int]] = defaultdict(dict)
    for session, item, at in seen:
        first[session][item] = min(at, first[session].get(item, at))
    counts: Counter[tuple[str, str, int]] = Counter()
    for items in first.values():
        for a, b in combinations(sorted(items), 2):
            pane = CO_VIEWS.pane_of(max(items[a], items[b]))
            counts[(a, b, pane)] += 1
            counts[(b, a, pane)] += 1
    return dict(counts)


def incremental_panes(arrivals: list[tuple[int, str, int]]) -> dict[tuple[str, str, int], int]:
    sessions: dict[int, dict[str, int]] = defaultdict(dict)
    counts: Counter[tuple[str, str, int]] = Counter()
    for session, item, at in arrivals:
        for change in view(sessions[session], item, at):
            counts[(change.row, change.other, change.pane)] += change.delta
    assert all(count >= 0 for count in counts.values()), "a pane went below zero"
    return {key: count for key, count in counts.items() if count}


@given(views, st.randoms(use_true_random=False))
def test_panes_equal_brute_force_whatever_the_order_and_repeats(
    seen: list[tuple[int, str, int]], rng: object
) -> None:
    arrivals = seen + seen[: len(seen) // 3]  # some views come twice
    rng.shuffle(arrivals)  # type: ignore[attr-defined]
    assert incremental_panes(arrivals) == brute_force_panes(seen)


@given(views, st.integers(0, 240 * HOUR), st.sampled_from("abcdefg"), st.integers(1, 5))
def test_recommendations_equal_brute_force_over_the_window(
    seen: list[tuple[int, str, int]], now: int, item: str, k: int
) -> None:
    panes = incremental_panes(seen)
    rows: dict[str, dict[int, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for (row, other, pane), count in panes.items():
        rows[row][pane][other] += count
    last = CO_VIEWS.pane_of(now)
    session_first = {}
    for s, i, at in sorted(seen, key=lambda one: one[2]):
        if s == 0:
            session_first.setdefault(i, at)
    session_items = sorted(session_first)
    sources = {item, *recent(session_first, 3)}
    totals = {row: window_counts(rows[row], last) for row in sources if row in rows}
    # Brute force: sessions that viewed both, completed within the window.
    first_pane = CO_VIEWS.first_pane(last)
    pairs = brute_force_panes(seen)
    score: Counter[str] = Counter()
    for source in sources:
        for (a, b, pane), count in pairs.items():
            if a == source and first_pane <= pane <= last:
                score[b] += count
    expected = sorted(
        ((other, n) for other, n in score.items() if other not in {item, *session_items}),
        key=lambda entry: (-entry[1], entry[0]),
    )[:k]
    assert recommend(totals, item, session_items, k) == expected


def test_a_late_earlier_view_moves_the_pair_to_its_pane() -> None:
    session: dict[str, int] = {}
    assert view(session, "a", 5 * HOUR) == []
    completed = view(session, "b", 6 * HOUR)
    assert sorted((c.row, c.other, c.pane, c.delta) for c in completed) == [
        ("a", "b", 6, 1),
        ("b", "a", 6, 1),
    ]
    moved = view(session, "b", 5 * HOUR + 1)
    assert sorted((c.row, c.pane, c.delta) for c in moved) == [
        ("a", 5, 1),
        ("a", 6, -1),
        ("b", 5, 1),
        ("b", 6, -1),
    ]
    assert view(session, "b", 7 * HOUR) == [], "a later view of a seen item changes nothing"


def test_the_window_holds_its_168_panes_and_no_other() -> None:
    last = 1_000
    first = last - 167
    panes = {first - 1: {"x": 1}, first: {"x": 2}, last: {"x": 4}, last + 1: {"x": 8}}
    assert window_counts(panes, last) == Counter({"x": 6})


def test_recent_items_are_the_latest_first_views() -> None:
    assert recent({"a": 5, "b": 9, "c": 9, "d": 1}, 3) == ["b", "c", "a"]
