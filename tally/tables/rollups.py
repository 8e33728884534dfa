"""Minute rollups of metric samples and their exact merging into coarser steps. No Faust.

A rollup is {min, max, sum, count}; the average is derived (sum / count). Rollups merge
associatively (min of mins, max of maxes, sums and counts added), so a 5-minute, hourly or daily
point is the merge of its minute rollups, never an average of averages; and rollups of the same
minute from different batches, servers or workers merge the same way.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

MINUTE_MS = 60_000

#: Query steps and their length.
STEPS_MS = {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "1h": 60 * MINUTE_MS, "1d": 1440 * MINUTE_MS}


@dataclass(frozen=True, slots=True)
class Rollup:
    min: float
    max: float
    sum: float
    count: int

    @classmethod
    def of(cls, value: float) -> Rollup:
        return cls(value, value, value, 1)

    def merge(self, other: Rollup) -> Rollup:
        return Rollup(
            min(self.min, other.min),
            max(self.max, other.max),
            self.sum + other.sum,
            self.count + other.count,
        )

    @property
    def avg(self) -> float:
        return self.sum / self.count

    def to_list(self) -> list[float]:
        """Compact storage form: [min, max, sum, count]."""
        return [self.min, self.max, self.sum, self.count]

    @classmethod
    def from_list(cls, values: list[float]) -> Rollup:
        low, high, total, count = values
        return cls(float(low), float(high), float(total), int(count))

    def as_point(self, t: str) -> dict[str, object]:
        return {"t": t, "min": self.min, "max": self.max, "avg": self.avg, "count": self.count}


def merge_all(rollups: Iterable[Rollup]) -> Rollup | None:
    merged: Rollup | None = None
    for rollup in rollups:
        merged = rollup if merged is None else merged.merge(rollup)
    return merged


def fold(samples: Iterable[tuple[K, int, float]]) -> dict[tuple[K, int], Rollup]:
    """(key, ts_ms, value) samples → one rollup per (key, minute start ms).

    The hot loop of the metrics pipeline: it accumulates in place, one list per cell, and makes
    the immutable rollups at the end.
    """
    cells: dict[tuple[K, int], list[float]] = {}
    for key, ts_ms, value in samples:
        cell = (key, ts_ms - ts_ms % MINUTE_MS)
        acc = cells.get(cell)
        if acc is None:
            cells[cell] = [value, value, value, 1]
        else:
            if value < acc[0]:
                acc[0] = value
            if value > acc[1]:
                acc[1] = value
            acc[2] += value
            acc[3] += 1
    return {cell: Rollup(acc[0], acc[1], acc[2], int(acc[3])) for cell, acc in cells.items()}


def minute_of(ts_ms: int) -> int:
    return ts_ms - ts_ms % MINUTE_MS


def final_before(watermark_ms: int | None) -> int | None:
    """Minutes starting before this are final: the watermark (event clock minus grace) has
    passed their end. None: no minute is final yet."""
    if watermark_ms is None:
        return None
    return minute_of(watermark_ms - MINUTE_MS) + MINUTE_MS


def bucket_start(ts_ms: int, step_ms: int) -> int:
    return ts_ms - ts_ms % step_ms


def by_step(minutes: Iterable[tuple[int, Rollup]], step_ms: int) -> Iterator[tuple[int, Rollup]]:
    """Minute rollups in time order → one merged rollup per step bucket, in time order."""
    current_start: int | None = None
    current: Rollup | None = None
    for minute_ms, rollup in minutes:
        start = bucket_start(minute_ms, step_ms)
        if start != current_start:
            if current is not None and current_start is not None:
                yield current_start, current
            current_start, current = start, rollup
        else:
            current = rollup if current is None else current.merge(rollup)
    if current is not None and current_start is not None:
        yield current_start, current
