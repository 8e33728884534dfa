"""Item-to-item recommendations: which items sessions view together, and what a session is
shown next. No Faust.

Two parts, as the source document has them: a slow, product-based one (how many sessions of
the last 7 days viewed both of two items, kept in hourly panes so the window slides exactly)
and a dynamic one (the session's own items, state with a time to live, core.ttl). A session
viewing an item is recommended the union of both, ranked, without what it has seen.

A pair counts once per session, in the pane of the moment the session had viewed both: the
later of the two items' first views. A view arriving late, earlier than the first view known
so far, moves the pairs it changes from one pane to another; a repeated view changes nothing.
So the panes are the same whatever order or repetition the views come in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tally.core.windowing import PaneSpec

#: 7 days of hourly panes.
CO_VIEWS = PaneSpec(pane_ms=3_600_000, window_panes=168)
#: Items a session remembers: a bot viewing thousands of items pairs no more than these.
SESSION_ITEMS = 200
#: The session's items whose co-views rank what it is shown (its latest first views): the
#: dynamic part follows where the session is now, and a query reads a bounded number of rows.
RECENT_ITEMS = 10


@dataclass(frozen=True)
class PaneDelta:
    """A change to `row`'s count of `other` in `pane` (each pair has two rows, one per item)."""

    row: str
    other: str
    pane: int
    delta: int


def view(
    first_views: dict[str, int], item: str, at_ms: int, spec: PaneSpec = CO_VIEWS
) -> list[PaneDelta]:
    """Take a view of `item` at `at_ms` into a session's first view times (changed in
    place); return the pane changes of the pairs it completes or moves."""
    before = first_views.get(item)
    if before is not None and before <= at_ms:
        return []  # seen already, no earlier
    if before is None and len(first_views) >= SESSION_ITEMS:
        return []
    first_views[item] = at_ms
    deltas = []
    for other, other_ms in first_views.items():
        if other == item:
            continue
        pane = spec.pane_of(max(at_ms, other_ms))
        old = None if before is None else spec.pane_of(max(before, other_ms))
        if pane == old:
            continue
        for row, co in ((item, other), (other, item)):
            if old is not None:
                deltas.append(PaneDelta(row, co, old, -1))
            deltas.append(PaneDelta(row, co, pane, 1))
    return deltas


def add_counts(row: dict[str, int], changes: Mapping[str, int], sign: int = 1) -> None:
    """`changes` (times `sign`) added to a row in place, counts that reach zero dropped (a row
    keeps only items some session in the window viewed with it)."""
    for other, change in changes.items():
        count = row.get(other, 0) + sign * change
        if count:
            row[other] = count
        else:
            row.pop(other, None)


def window_counts(
    panes: Mapping[int, Mapping[str, int]], last_pane: int, spec: PaneSpec = CO_VIEWS
) -> Counter[str]:
    """One row's counts over the window ending with `last_pane`, from its panes."""
    first = spec.first_pane(last_pane)
    found: Counter[str] = Counter()
    for pane, counts in panes.items():
        if first <= pane <= last_pane:
            found.update(counts)
    return +found  # (counts moved out of a pane leave zeros)


def recent(first_views: Mapping[str, int], n: int = RECENT_ITEMS) -> list[str]:
    """The session's `n` items viewed first most recently (ties by item)."""
    return sorted(first_views, key=lambda item: (-first_views[item], item))[:n]


def recommend(
    rows: Mapping[str, Mapping[str, int]],
    item: str | None,
    seen: Iterable[str],
    k: int,
) -> list[tuple[str, int]]:
    """The top `k` (item, score) for a session that has `seen` items and views `item` now:
    an item's score is how many sessions viewed it with each item of `rows` (item → its
    window counts: `item`'s and the session's `recent` ones), ties by item; neither `item`
    nor anything seen is recommended."""
    asked = set(seen) | ({item} if item is not None else set())
    scores: Counter[str] = Counter()
    for counts in rows.values():
        scores.update(counts)
    ranked = sorted(
        ((other, score) for other, score in scores.items() if other not in asked and score > 0),
        key=lambda entry: (-entry[1], entry[0]),
    )
    return ranked[:k]
