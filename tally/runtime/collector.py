"""CPython's cyclic garbage collector in a worker: how long it pauses, and how often.

While it collects, the worker does nothing else: no event, no answer. A full collection
traverses every container object the process holds, and CPython starts one whenever objects
that outlived two young collections reach a quarter of the old ones. A worker's batches keep
thousands of events alive for a while, so at CPython's default of a young collection per 700
new objects they outlive two of them and pile up, and full collections come every few
seconds (`python -m bench.merchants` counts them). Collecting the young generation per
`young_objects` new objects instead (allocated less freed) lets a batch's objects die of
their reference counts first. What is loaded by the time the worker starts (code, settings,
registries) is frozen out of every collection, for good: should any of it become cyclic
garbage later, it is not reclaimed.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

GC_PAUSES = Histogram(
    "tally_gc_pause_seconds",
    "Pauses of CPython's cyclic garbage collector, by generation (2: a full collection, "
    "which traverses every container object of the worker). TALLY_GC_YOUNG_OBJECTS sets "
    "how often they come.",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_by_generation = [GC_PAUSES.labels(str(generation)) for generation in range(3)]
_started: float | None = None


def _timed(phase: str, info: dict[str, Any]) -> None:
    """(CPython runs one collection at a time, whichever thread starts it.)"""
    global _started
    if phase == "start":
        _started = time.perf_counter()
    elif _started is not None:  # (None: timing began during a collection)
        _by_generation[info["generation"]].observe(time.perf_counter() - _started)


def tune_collector(young_objects: int) -> None:
    """Time every collection; unless `young_objects` is 0 (CPython's defaults), collect the
    young generation per `young_objects` new container objects and freeze what exists now.
    Called once, when the worker has loaded everything it runs."""
    if _timed not in gc.callbacks:
        gc.callbacks.append(_timed)
    if young_objects:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_objects, middle, old)
        gc.collect()
        gc.freeze()
