"""The worker hands what it freed back to the system (glibc's malloc_trim)."""

from __future__ import annotations

import asyncio
import os

import pytest

from tally.runtime.heap import TRIMS, find_malloc_trim, return_free_memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(find_malloc_trim() is None, reason="the C library is not glibc")
def test_memory_freed_below_the_heaps_top_goes_back_to_the_system() -> None:
    # 100 MB of 4 KB blocks (each its own malloc: CPython's allocator takes only small ones),
    # then one block above them, still held: glibc keeps the freed ones in its heap.
    blocks = [bytes(4096) + bytes([n % 256]) for n in range(25_000)]
    top = bytes(4096) + b"top"
    held = resident_bytes()
    del blocks
    kept = resident_bytes()
    before = TRIMS.collect()[0].samples
    asyncio.run(return_free_memory())
    returned = kept - resident_bytes()
    assert held - kept < 50 << 20, "glibc kept the freed blocks: nothing for the trim to prove"
    assert returned > 50 << 20, f"only {returned >> 20} MB went back to the system"
    count = next(s.value for s in TRIMS.collect()[0].samples if s.name.endswith("_count"))
    assert count == next(s.value for s in before if s.name.endswith("_count")) + 1
    assert top
