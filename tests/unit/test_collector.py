"""The worker's collector tuning: thresholds, freezing, and the pause histogram."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tally.runtime.collector import GC_PAUSES, tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks


def count(generation: int) -> float:
    samples = GC_PAUSES.collect()[0].samples
    return next(
        s.value
        for s in samples
        if s.name.endswith("_count") and s.labels["generation"] == str(generation)
    )


def test_tuning_sets_the_young_threshold_freezes_and_times_pauses(
    restored_collector: None,
) -> None:
    gc.set_threshold(700, 10, 10)
    tune_collector(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)
    assert gc.get_freeze_count() > 0, "what was loaded is out of every collection"
    before = count(0), count(2)
    gc.collect(0)
    gc.collect()
    assert count(0) == before[0] + 1 and count(2) == before[1] + 1
    tune_collector(50_000)  # once more (it collects before freezing): still one callback
    gc.collect()
    assert count(2) == before[1] + 3


def test_zero_keeps_cpython_defaults_but_still_times(restored_collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_collector(0)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
    before = count(1)
    gc.collect(1)
    assert count(1) == before + 1
