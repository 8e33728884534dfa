"""Rollup arithmetic and step merging against brute force over the raw samples."""

from __future__ import annotations

import math
from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from tally.tables.rollups import MINUTE_MS, STEPS_MS, Rollup, by_step, fold, merge_all

values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
samples = st.lists(
    st.tuples(st.sampled_from(["cpu", "mem", "disk"]), st.integers(0, 3 * 86_400_000), values),
    min_size=1,
    max_size=200,
)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


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
