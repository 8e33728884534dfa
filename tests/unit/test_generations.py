"""Generations: the serving topic's records read back, and the binary search a replay starts
from (against brute force over random stamps with gaps)."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from tally.core.generations import (
    FAILED,
    REPLAYING,
    SERVING,
    Attempt,
    Generations,
    Serving,
    encode,
    first_offset_at,
)


def records(*entries: Attempt | Serving) -> list[tuple[bytes | None, bytes | None]]:
    return [(entry.key, encode(entry)) for entry in entries]


def test_nothing_recorded_means_generation_1_serves_and_nothing_is_forwarded() -> None:
    generations = Generations()
    assert generations.serving_generation("sales") == 1
    assert generations.next_generation() == 2
    assert generations.forward_to("sales", 1) is None


def test_a_cutover_forwards_older_generations_only() -> None:
    generations = Generations().absorb_all(
        records(
            Attempt(2, "sales", 0, REPLAYING, 10),
            Attempt(2, "sales", 0, SERVING, 20),
            Serving("sales", 2, ("http://w2:6067",), 20),
        )
    )
    assert generations.serving_generation("sales") == 2
    assert generations.serving_generation("metrics") == 1
    forwarded = generations.forward_to("sales", 1)
    assert forwarded is not None and forwarded.urls == ("http://w2:6067",)
    assert generations.forward_to("sales", 2) is None  # the serving generation answers itself
    assert generations.forward_to("sales", 3) is None  # a newer replay never forwards back
    assert generations.forward_to("metrics", 1) is None
    assert generations.describe()["attempts"][0]["state"] == SERVING


def test_failed_attempts_are_never_reused() -> None:
    generations = Generations().absorb_all(
        records(
            Attempt(2, "sales", 0, FAILED, 10, "its worker exited"),
            Attempt(3, "metrics", 0, REPLAYING, 20),
        )
    )
    assert generations.next_generation() == 4
    assert generations.serving_generation("sales") == 1


def test_unreadable_or_unknown_records_are_skipped() -> None:
    generations = Generations().absorb_all(
        [
            (None, b"{}"),
            (b"serving:sales", None),
            (b"serving:sales", b"not json"),
            (b"serving:sales", b'{"pipeline": "sales"}'),
            (b"owner:sales", b'{"x": 1}'),
        ]
    )
    assert generations.serving == {} and generations.attempts == {}


@given(
    stamps=st.lists(st.integers(0, 50), max_size=40).map(sorted),
    gaps=st.sets(st.integers(0, 39)),
    from_ms=st.integers(-1, 52),
)
def test_the_search_starts_at_the_first_record_stamped_from_then(
    stamps: list[int], gaps: set[int], from_ms: int
) -> None:
    """Offsets in `gaps` hold no record (compacted, or transaction markers)."""
    log = {offset: stamp for offset, stamp in enumerate(stamps) if offset not in gaps}
    probes = []

    async def stamp_at(offset: int) -> tuple[int, int] | None:
        probes.append(offset)
        found = [o for o in sorted(log) if o >= offset]
        return (found[0], log[found[0]]) if found else None

    start = asyncio.run(first_offset_at(stamp_at, 0, len(stamps), from_ms))
    wanted = [o for o in sorted(log) if log[o] >= from_ms]
    # Reading from `start` yields exactly the records stamped at or after from_ms.
    assert [o for o in sorted(log) if o >= start] == wanted
    assert len(probes) <= max(len(stamps), 1).bit_length() + 1
