"""Exact top-K: a ranked index of totals per partition, and the merge of partitions' top-Ks.

Order everywhere: larger total first, ties by smaller key. Every key lives in exactly one
partition, so a key in the global top-K has fewer than K keys before it in its own partition:
the union of the partitions' top-Ks contains the global top-K, and merging them is exact.

Keys are grouped by tenant (a key `<tenant>|<item>`, core.tenancy; a key without a separator is
in group ""): a partition's candidates are each group's top-K, so the top-K of one tenant and
the top-K over every tenant (within the union of the tenants' top-Ks) both merge exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

from tally.core.tenancy import unscoped

Ranked = tuple[str, int]  # (key, total)


def group_of(key: str) -> str:
    """A key's group: its tenant (`<tenant>|<item>`, core.tenancy), or "" for a key without
    one."""
    return unscoped(key)[0]


def rank_key(entry: Ranked) -> tuple[int, str]:
    return (-entry[1], entry[0])


class RankedTotals:
    """Totals per key, top-K on demand. A few keys are ranked when asked (a sort of fewer than
    INDEXED_FROM); more keep a rank index (O(log n) per update, top-K in O(K)). Most tenants'
    windows hold a few items: without an index each is one object the garbage collector
    traverses instead of six, and a full collection pauses the worker for all of them
    (python -m bench.ranked_totals)."""

    __slots__ = ("_order", "_totals")

    #: Keys from which the rank index is kept; it is dropped again below half of it.
    INDEXED_FROM = 64

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}
        self._order: SortedList | None = None

    def add(self, key: str, delta: int) -> None:
        if delta == 0:
            return
        totals, order = self._totals, self._order
        old = totals.get(key, 0)
        new = old + delta
        if new:
            totals[key] = new
        else:
            del totals[key]
        if order is not None:
            if old:
                order.remove((-old, key))
            if new:
                order.add((-new, key))
            if len(totals) < self.INDEXED_FROM // 2:
                self._order = None
        elif len(totals) >= self.INDEXED_FROM:
            self._order = SortedList((-total, k) for k, total in totals.items())

    def total(self, key: str) -> int:
        return self._totals.get(key, 0)

    def top(self, k: int) -> list[Ranked]:
        if self._order is None:
            return heapq.nsmallest(k, self._totals.items(), key=rank_key)
        return [(key, -negative) for negative, key in self._order.islice(0, k)]

    def __len__(self) -> int:
        return len(self._totals)

    def items(self) -> Iterable[Ranked]:
        return self._totals.items()


class GroupedTotals:
    """RankedTotals per group (`group_of`): `top(k)` is every group's top-k."""

    def __init__(self) -> None:
        self._groups: dict[str, RankedTotals] = {}

    def add(self, key: str, delta: int) -> None:
        group = group_of(key)
        ranked = self._groups.get(group)
        if ranked is None:
            ranked = self._groups[group] = RankedTotals()
        ranked.add(key, delta)
        if not ranked:
            del self._groups[group]

    def total(self, key: str) -> int:
        ranked = self._groups.get(group_of(key))
        return 0 if ranked is None else ranked.total(key)

    def top(self, k: int) -> list[Ranked]:
        """Each group's top-k, in rank order over all groups."""
        return sorted((e for g in self._groups.values() for e in g.top(k)), key=rank_key)

    def group_top(self, group: str, k: int) -> list[Ranked]:
        """One group's top-k."""
        ranked = self._groups.get(group)
        return [] if ranked is None else ranked.top(k)

    def __len__(self) -> int:
        return sum(len(ranked) for ranked in self._groups.values())

    def items(self) -> Iterable[Ranked]:
        return (entry for ranked in self._groups.values() for entry in ranked.items())


@dataclass(frozen=True)
class Candidates:
    """One partition's top-K of each group (tenant) for the window ending with pane
    `last_pane`; its late events by group."""

    partition: int
    last_pane: int
    top: list[Ranked]
    watermark_ms: int
    as_of_ms: int
    late_events: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "last_pane": self.last_pane,
            "top": [list(entry) for entry in self.top],
            "watermark_ms": self.watermark_ms,
            "as_of_ms": self.as_of_ms,
            "late_events": dict(self.late_events),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidates:
        """Candidates as `to_json` wrote them (JSON: any field may be of a wrong type, and
        raises then)."""
        return cls(
            partition=int(data["partition"]),
            last_pane=int(data["last_pane"]),
            top=[(str(k), int(v)) for k, v in data["top"]],
            watermark_ms=int(data["watermark_ms"]),
            as_of_ms=int(data["as_of_ms"]),
            late_events=late_by_group(data.get("late_events", {})),
        )


def late_by_group(saved: Any) -> dict[str, int]:
    """Late counts by group as saved; a count saved before they were kept per group (one
    number) is no group's ("": it counts in the answers over every group only)."""
    if isinstance(saved, int | float):
        return {"": int(saved)} if saved else {}
    return {str(group): int(count) for group, count in saved.items()}


@dataclass(frozen=True)
class GlobalTopK:
    """The merged answer, with what it is made of."""

    last_pane: int
    top: list[Ranked]
    watermark_ms: int
    as_of_ms: int
    late_events: int
    #: Partitions whose latest candidates are for an older window than `last_pane`.
    lagging: list[int] = field(default_factory=list)


def merge_top(lists: Iterable[list[Ranked]], k: int) -> list[Ranked]:
    """The best `k` of several disjoint ranked lists."""
    return heapq.nsmallest(k, (entry for top in lists for entry in top), key=rank_key)


def merge_candidates(
    candidates: Iterable[Candidates], k: int, group: str | None = None
) -> GlobalTopK | None:
    """The global top-K of the newest window any partition has reached, of one `group`'s keys
    (None: of every group's).

    A partition still on an older window contributes what it has and is named in `lagging`,
    so the answer can say it may be stale; `as_of` is the oldest partition's, so one silent
    partition (a dead worker) makes the answer old. None if no partition has data yet, or the
    group has none (nothing of other groups' activity shows then).
    """
    latest = list(candidates)

    def of_group(top: list[Ranked]) -> list[Ranked]:
        return top if group is None else [e for e in top if group_of(e[0]) == group]

    top = merge_top((of_group(c.top) for c in latest), k)
    late = sum(
        sum(c.late_events.values()) if group is None else c.late_events.get(group, 0)
        for c in latest
    )
    if not latest or (group is not None and not top and not late):
        return None
    last_pane = max(c.last_pane for c in latest)
    return GlobalTopK(
        last_pane=last_pane,
        top=top,
        watermark_ms=min(c.watermark_ms for c in latest),
        as_of_ms=min(c.as_of_ms for c in latest),
        late_events=late,
        lagging=sorted(c.partition for c in latest if c.last_pane < last_pane),
    )
