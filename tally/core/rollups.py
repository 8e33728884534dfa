"""Minute rollups of metric samples and their exact merging into coarser steps. No Faust.

A rollup is {min, max, sum, count}; the average is derived (sum / count). Rollups merge
associatively (min of mins, max of maxes, sums and counts added), so a 5-minute, hourly or daily
point is the merge of its minute rollups, never an average of averages; and rollups of the same
minute from different batches, servers or workers merge the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tally.core.limits import usable_id

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

    def fields(self) -> dict[str, float]:
        return {"min": self.min, "max": self.max, "sum": self.sum, "count": self.count}

    def as_point(self, t: str) -> dict[str, object]:
        return {"t": t, "min": self.min, "max": self.max, "avg": self.avg, "count": self.count}


def merge_all(rollups: Iterable[Rollup]) -> Rollup | None:
    merged: Rollup | None = None
    for rollup in rollups:
        merged = rollup if merged is None else merged.merge(rollup)
    return merged


#: A rollup as stored and accumulated in place: [min, max, sum, count].
Acc = list[float]
#: Rollups of one minute by a second key (a server's metrics, a metric's servers).
Cells = dict[str, Acc]


@dataclass(frozen=True)
class IndexUpdate:
    """What the metrics stage sends the by-metric index (`metric-rollups-by-metric`): servers'
    whole rollups of a minute so far, as (metric, minute, server, [min, max, sum, count]), and
    the upstream partition's watermark (an update may carry only that)."""

    upstream: int
    watermark_ms: int | None
    cells: list[tuple[str, int, str, Acc]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "watermark_ms": self.watermark_ms,
            "cells": [[metric, minute, server, *acc] for metric, minute, server, acc in self.cells],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IndexUpdate:
        """An update as `to_json` wrote it (JSON: a field of a wrong type raises)."""
        watermark = data["watermark_ms"]
        return cls(
            upstream=int(data["upstream"]),
            watermark_ms=None if watermark is None else int(watermark),
            cells=[
                (
                    str(metric),
                    int(minute),
                    str(server),
                    [float(low), float(high), float(sum_), count],
                )
                for metric, minute, server, low, high, sum_, count in data["cells"]
            ],
        )


def merge_acc(into: Acc, delta: Acc) -> None:
    """Merge `delta` into `into`, in place."""
    if delta[0] < into[0]:
        into[0] = delta[0]
    if delta[1] > into[1]:
        into[1] = delta[1]
    into[2] += delta[2]
    into[3] += delta[3]


def merge_cells(into: Cells, delta: Cells) -> Cells:
    """Merge every rollup of `delta` into `into` (in place; `into` is returned)."""
    for key, acc in delta.items():
        old = into.get(key)
        if old is None:
            into[key] = list(acc)
        else:
            merge_acc(old, acc)
    return into


@dataclass
class Judged:
    """What `fold_samples` made of one envelope's samples."""

    #: Indexes of samples that failed validation (explained by the caller's validators).
    invalid: list[int] = field(default_factory=list)
    #: Indexes of samples of minutes already final.
    late: list[int] = field(default_factory=list)
    #: Indexes of samples of a metric their minute had no room for (`admits` said no).
    crowded: list[int] = field(default_factory=list)
    counted: int = 0
    newest_ts: int | None = None
    oldest_minute: int | None = None


#: Whether a minute's cells may take one more metric: (minute, metric, the minute's cells).
Admits = Callable[[int, str, Cells], bool]


def room_for_metrics(held: Callable[[int], Mapping[str, Any]], cap: int) -> Admits:
    """`Admits` for one server: a minute's record may hold at most `cap` metrics, those it
    holds already (`held(minute)`) and the batch's new ones together."""

    def admits(minute: int, metric: str, cells: Cells) -> bool:
        known = held(minute)
        if metric in known or len(known) + len(cells) < cap:
            return True
        return len(known.keys() | cells.keys()) < cap

    return admits


def room_for_all(known: Mapping[str, Any], cells: Cells, more: Cells, cap: int) -> bool:
    """Whether a minute's record may take every metric of `more` (`room_for_metrics`'s rule
    for a whole envelope): it holds `known` and the batch's `cells` so far."""
    if len(known) + len(cells) + len(more) <= cap:
        return True
    present = known.keys() | cells.keys()
    new = more.keys() - present
    return not new or len(present) + len(new) <= cap


def fold_samples(
    samples: Iterable[Mapping[str, Any]],
    into: dict[int, Cells],
    closed_before: int | None,
    max_ts_ms: int,
    admits: Admits | None = None,
) -> Judged:
    """Fold one server's samples into `into` (minute → metric → rollup), in place.

    The hot loop of the metrics pipeline, one pass: a sample with a non-finite value, an
    unusable metric id or a time outside (0, max_ts_ms] is invalid; one of a minute before
    `closed_before` is late; one of a metric new to its minute that `admits` refuses is
    crowded; every other one is accumulated.
    """
    judged = Judged()
    invalid, late = judged.invalid, judged.late
    closed = -1 if closed_before is None else closed_before
    minute_ms = MINUTE_MS
    usable: set[str] = set()  # metric ids checked once per call, not once per sample
    newest, oldest, counted = -1, 1 << 62, 0
    cells_minute = -1
    cells: Cells = {}
    for index, sample in enumerate(samples):
        metric, ts, value = sample["metric_id"], sample["ts_ms"], sample["value"]
        # value - value is 0.0 for every finite float and NaN for NaN and the infinities.
        if value - value != 0.0 or not 0 < ts <= max_ts_ms:
            invalid.append(index)
            continue
        if metric not in usable:
            if not usable_id(metric):
                invalid.append(index)
                continue
            usable.add(metric)
        minute = ts - ts % minute_ms
        if minute < closed:
            late.append(index)
            continue
        if minute != cells_minute:  # samples of an envelope mostly share a minute
            cells_minute = minute
            found = into.get(minute)
            if found is None:
                found = into[minute] = {}
            cells = found
        acc = cells.get(metric)
        if acc is None:
            if admits is not None and not admits(minute, metric, cells):
                judged.crowded.append(index)
                continue
            cells[metric] = [value, value, value, 1]
        else:
            if value < acc[0]:
                acc[0] = value
            elif value > acc[1]:
                acc[1] = value
            acc[2] += value
            acc[3] += 1
        if ts > newest:
            newest = ts
        if minute < oldest:
            oldest = minute
        counted += 1
    judged.counted = counted
    if counted:
        judged.newest_ts, judged.oldest_minute = newest, oldest
    return judged


def minute_of(ts_ms: int) -> int:
    return ts_ms - ts_ms % MINUTE_MS


def final_before(watermark_ms: int | None) -> int | None:
    """Minutes starting before this are final: the watermark (event clock minus grace) has
    passed their end. None: no minute is final yet."""
    if watermark_ms is None:
        return None
    return minute_of(watermark_ms - MINUTE_MS) + MINUTE_MS


def hot_horizon(watermark_ms: int, retention_ms: int) -> int:
    """The oldest minute the hot tables keep: retention runs by event time, from the watermark.
    Pruning deletes below it; queries read the archive below it."""
    return minute_of(watermark_ms) - retention_ms


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


def merge_series(
    *parts: Mapping[str, Iterable[tuple[int, Rollup]]],
) -> dict[str, list[tuple[int, Rollup]]]:
    """Series of bucketed rollups from several sources (the archive and the hot tables) → one
    set of series, buckets in time order; a bucket found in both (a step that straddles the
    tiers' boundary) is merged, exactly."""
    merged: dict[str, dict[int, Rollup]] = {}
    for part in parts:
        for name, points in part.items():
            buckets = merged.setdefault(name, {})
            for start, rollup in points:
                seen = buckets.get(start)
                buckets[start] = rollup if seen is None else seen.merge(rollup)
    return {name: sorted(buckets.items()) for name, buckets in sorted(merged.items())}
