"""Rollup arithmetic and step merging against brute force over the raw samples."""

from __future__ import annotations

import math
from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from tally.codecs.avro import check_event_time, validate_metric_sample
from tally.core.errors import ValidationError
from tally.core.rollups import (
    MINUTE_MS,
    STEPS_MS,
    Cells,
    IndexUpdate,
    Rollup,
    by_step,
    fold_samples,
    merge_all,
    merge_cells,
    merge_series,
    room_for_metrics,
)

values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
samples = st.lists(
    st.tuples(st.sampled_from(["cpu", "mem", "disk"]), st.integers(1, 3 * 86_400_000), values),
    min_size=1,
    max_size=200,
)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def fold(raw: list[tuple[str, int, float]]) -> dict[tuple[str, int], Rollup]:
    """`fold_samples` over (metric, ts, value) triples, as (metric, minute) → rollup."""
    into: dict[int, Cells] = {}
    samples = [{"metric_id": m, "ts_ms": ts, "value": v} for m, ts, v in raw]
    judged = fold_samples(samples, into, None, 10 * 86_400_000)
    assert judged.counted == len(raw) and not judged.invalid and not judged.late
    return {
        (metric, minute): Rollup.from_list(acc)
        for minute, cells in into.items()
        for metric, acc in cells.items()
    }


@given(samples, st.sampled_from(sorted(STEPS_MS)))
def test_steps_merge_minutes_exactly(raw: list[tuple[str, int, float]], step: str) -> None:
    step_ms = STEPS_MS[step]
    minutes = fold(raw)
    for key in {k for k, _, _ in raw}:
        series = sorted((minute, r) for (k, minute), r in minutes.items() if k == key)
        merged = dict(by_step(series, step_ms))
        truth: dict[int, list[float]] = defaultdict(list)
        for k, ts, value in raw:
            if k == key:
                truth[ts - ts % step_ms].append(value)
        assert sorted(merged) == sorted(truth)
        for start, vals in truth.items():
            rollup = merged[start]
            assert rollup.min == min(vals) and rollup.max == max(vals)
            assert rollup.count == len(vals)
            assert close(rollup.sum, math.fsum(vals))
            assert close(rollup.avg, math.fsum(vals) / len(vals))


@given(st.lists(values, min_size=1, max_size=50), st.integers(1, 49))
def test_merge_is_associative_across_splits(vals: list[float], cut: int) -> None:
    whole = merge_all(Rollup.of(v) for v in vals)
    left = merge_all(Rollup.of(v) for v in vals[:cut])
    right = merge_all(Rollup.of(v) for v in vals[cut:])
    parts = [p for p in (left, right) if p is not None]
    joined = merge_all(parts)
    assert whole is not None and joined is not None
    assert (whole.min, whole.max, whole.count) == (joined.min, joined.max, joined.count)
    assert close(whole.sum, joined.sum)


def test_negative_values_and_storage_form() -> None:
    rollup = merge_all([Rollup.of(-5.0), Rollup.of(2.5), Rollup.of(-0.5)])
    assert rollup == Rollup(-5.0, 2.5, -3.0, 3)
    assert rollup.avg == -1.0
    assert Rollup.from_list(rollup.to_list()) == rollup
    assert fold([("cpu", MINUTE_MS + 59_999, 1.0)]) == {("cpu", MINUTE_MS): Rollup.of(1.0)}
    assert merge_all([]) is None


WALL = 1_800_000_000_000
MAX_FUTURE = 300_000
any_samples = st.lists(
    st.fixed_dictionaries(
        {
            "metric_id": st.sampled_from(["cpu", "mem", "", "a|b"]),
            "ts_ms": st.one_of(
                st.integers(WALL - 10 * MINUTE_MS, WALL + 2 * MAX_FUTURE),
                st.sampled_from([0, -1, 1, WALL + MAX_FUTURE, WALL + MAX_FUTURE + 1]),
            ),
            "value": st.one_of(values, st.sampled_from([math.nan, math.inf, -math.inf, -0.0])),
        }
    ),
    max_size=60,
)


def explained(sample: dict[str, object]) -> bool:
    """Whether the validators (which give the reasons) reject `sample`."""
    try:
        validate_metric_sample(sample)
        check_event_time("ts_ms", sample["ts_ms"], WALL, MAX_FUTURE)  # type: ignore[arg-type]
    except ValidationError:
        return True
    return False


@given(any_samples, st.integers(WALL - 12 * MINUTE_MS, WALL), st.data())
def test_fold_samples_judges_like_brute_force(
    samples: list[dict[str, object]], watermark: int, data: st.DataObject
) -> None:
    """Invalid exactly where the validators object, late exactly before the closed minute,
    every other sample folded; a second fold into the same cells merges exactly."""
    closed = watermark - watermark % MINUTE_MS
    cut = data.draw(st.integers(0, len(samples)))
    into: dict[int, Cells] = {}
    first = fold_samples(samples[:cut], into, closed, WALL + MAX_FUTURE)
    second = fold_samples(samples[cut:], into, closed, WALL + MAX_FUTURE)
    invalid = first.invalid + [cut + i for i in second.invalid]
    late = first.late + [cut + i for i in second.late]
    assert invalid == [i for i, s in enumerate(samples) if explained(s)]
    kept = [(i, s) for i, s in enumerate(samples) if not explained(s)]
    minute = lambda s: s["ts_ms"] - s["ts_ms"] % MINUTE_MS  # noqa: E731
    assert late == [i for i, s in kept if minute(s) < closed]
    accepted = [s for _, s in kept if minute(s) >= closed]
    assert first.counted + second.counted == len(accepted)
    truth: dict[tuple[int, str], list[float]] = defaultdict(list)
    for s in accepted:
        truth[(minute(s), s["metric_id"])].append(s["value"])
    got = {(m, metric): acc for m, cells in into.items() for metric, acc in cells.items()}
    assert sorted(got) == sorted(truth)
    for cell, vals in truth.items():
        low, high, total, count = got[cell]
        assert (low, high, count) == (min(vals), max(vals), len(vals))
        assert close(total, math.fsum(vals))
    newest = [s["ts_ms"] for s in accepted[: first.counted]]
    assert first.newest_ts == (max(newest) if newest else None)


@given(st.lists(st.tuples(st.sampled_from("abc"), values), max_size=30), st.integers(0, 30))
def test_merge_cells_equals_folding_everything_at_once(
    cells: list[tuple[str, float]], cut: int
) -> None:
    def folded(part: list[tuple[str, float]]) -> Cells:
        into: dict[int, Cells] = {}
        fold_samples([{"metric_id": k, "ts_ms": 1, "value": v} for k, v in part], into, None, WALL)
        return into.get(0, {})

    merged, whole = merge_cells(folded(cells[:cut]), folded(cells[cut:])), folded(cells)
    assert merged.keys() == whole.keys()
    for key, (low, high, total, count) in whole.items():
        assert (merged[key][0], merged[key][1], merged[key][3]) == (low, high, count)
        assert close(merged[key][2], total)


@given(samples, st.sampled_from(sorted(STEPS_MS)), st.integers(0, 3 * 86_400_000))
def test_tiers_split_anywhere_merge_to_the_same_steps(
    raw: list[tuple[str, int, float]], step: str, boundary: int
) -> None:
    """Minutes split at any minute between two tiers, each stepped on its own, then merged by
    `merge_series` == stepping all minutes at once (a step across the boundary is merged)."""
    step_ms = STEPS_MS[step]
    boundary -= boundary % MINUTE_MS
    minutes = fold(raw)
    tiers: list[dict[str, list[tuple[int, Rollup]]]] = [{}, {}]
    whole: dict[str, list[tuple[int, Rollup]]] = {}
    for key in sorted({k for k, _, _ in raw}):
        series = sorted((minute, r) for (k, minute), r in minutes.items() if k == key)
        whole[key] = list(by_step(series, step_ms))
        for tier, part in enumerate(
            ([m for m in series if m[0] < boundary], [m for m in series if m[0] >= boundary])
        ):
            if part:
                tiers[tier][key] = list(by_step(part, step_ms))
    merged = merge_series(*tiers)
    assert sorted(merged) == sorted(whole)
    for key, points in whole.items():
        assert [t for t, _ in merged[key]] == [t for t, _ in points]
        for (_, got), (_, want) in zip(merged[key], points, strict=True):
            assert (got.min, got.max, got.count) == (want.min, want.max, want.count)
            assert close(got.sum, want.sum)


@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2)), max_size=80),
    st.dictionaries(st.integers(0, 2), st.sets(st.integers(0, 9), max_size=6), max_size=3),
    st.integers(1, 6),
)
def test_a_minute_never_holds_more_metrics_than_its_room(
    raw: list[tuple[int, int]], stored: dict[int, set[int]], cap: int
) -> None:
    """A sample is crowded exactly when its metric is new to its minute (stored or folded so
    far) and the minute is full; the minute never passes the cap unless it was over already."""
    held = {m * MINUTE_MS: {f"m{n}": [0.0, 0.0, 0.0, 1] for n in ns} for m, ns in stored.items()}
    samples = [{"metric_id": f"m{n}", "ts_ms": m * MINUTE_MS + 1, "value": 1.0} for n, m in raw]
    into: dict[int, Cells] = {}
    judged = fold_samples(
        samples, into, None, 10 * MINUTE_MS, room_for_metrics(lambda m: held.get(m, {}), cap)
    )
    seen: dict[int, set[str]] = {m: set(cells) for m, cells in held.items()}
    crowded = []
    for index, sample in enumerate(samples):
        minute, metric = sample["ts_ms"] - 1, sample["metric_id"]
        known = seen.setdefault(minute, set())
        if metric not in known and len(known) >= cap:
            crowded.append(index)
        else:
            known.add(metric)
    assert judged.crowded == crowded
    assert judged.counted == len(samples) - len(crowded)
    for minute, cells in into.items():
        assert len(set(cells) | set(held.get(minute, {}))) <= max(cap, len(held.get(minute, {})))


@given(
    st.integers(0, 64),
    st.one_of(st.none(), st.integers(0, 2**45)),
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8),
            st.integers(0, 2**45),
            st.text(min_size=1, max_size=8),
            st.tuples(values, values, values, st.integers(1, 2**31)).map(list),
        ),
        max_size=5,
    ),
)
def test_an_index_update_reads_back_as_written(
    upstream: int, watermark: int | None, cells: list[tuple[str, int, str, list[float]]]
) -> None:
    import json

    update = IndexUpdate(upstream, watermark, cells)
    assert IndexUpdate.from_json(json.loads(json.dumps(update.to_json()))) == update
