"""The C heap of a long-running worker: what it freed goes back to the system.

glibc's malloc keeps the memory a worker frees (a batch's decoded handovers, its buffers,
RocksDB's memtables) inside its heap, where it still counts in the worker's RSS, unless the
top of the heap is free: after the backlog of `python -m bench.fraud` (a million customers)
438 MB of the main heap's 735 MB were free and not returned, a third of the worker's RSS.
`malloc_trim` hands the free pages back from anywhere in the heap; the worker calls it every
TALLY_MALLOC_TRIM_SECONDS, in a thread (ctypes lets go of the GIL; the event loop still waits
whenever it needs the heap's lock meanwhile, so each call's time is on /metrics). Where the C
library is not glibc there is nothing to call.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import Callable

from prometheus_client import Histogram

from tally.app import settings
from tally.runtime.intake import timer

TRIMS = Histogram(
    "tally_malloc_trim_seconds",
    "How long returning the C heap's free pages to the system took (TALLY_MALLOC_TRIM_SECONDS).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim(pad)`, or None where the process's C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_trim = find_malloc_trim()


def timed(trim: Callable[[int], int]) -> None:
    started = time.perf_counter()
    trim(0)
    TRIMS.observe(time.perf_counter() - started)


async def return_free_memory() -> None:
    """Hand the heap's free pages back (timed in the thread: not its wait for one)."""
    if _trim is not None:
        await asyncio.to_thread(timed, _trim)


if settings.malloc_trim_seconds and _trim is not None:
    timer(interval=settings.malloc_trim_seconds)(return_free_memory)
