"""Offsets kept with state: a redelivered message changes nothing, a crash mid-batch neither."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core.applied import (
    apply_server_rollups,
    offset_of,
    one_per_offset,
    stamp,
    value_of,
)
from tally.core.rollups import Acc, Rollup, merge_all

#: A server's samples of one minute, in the order they arrive.
samples = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    ),
    min_size=1,
    max_size=30,
)


def upstream_messages(arrivals: list[tuple[str, float]], size: int) -> list[list[tuple[str, Acc]]]:
    """What the server stage sends: after each of its batches, each touched server's whole
    rollup of the minute so far."""
    sums: dict[str, Acc] = {}
    messages = []
    for start in range(0, len(arrivals), size):
        touched = set()
        for server, value in arrivals[start : start + size]:
            acc = sums.get(server)
            sums[server] = (
                [value, value, value, 1]
                if acc is None
                else [min(acc[0], value), max(acc[1], value), acc[2] + value, acc[3] + 1]
            )
            touched.add(server)
        messages.append([(s, list(sums[s])) for s in sorted(touched)])
    return messages


def brute(arrivals: list[tuple[str, float]]) -> Acc:
    values = [v for _, v in arrivals]
    return [min(values), max(values), sum(values), len(values)]


@settings(max_examples=300, deadline=None)
@given(
    arrivals=samples,
    size=st.integers(1, 5),
    batch=st.integers(1, 4),
    crash=st.data(),
)
def test_the_total_equals_brute_force_whatever_is_redelivered_or_lost_in_a_crash(
    arrivals: list[tuple[str, float]], size: int, batch: int, crash: st.DataObject
) -> None:
    """The index stage takes messages in batches; at a random point it crashes: its last
    batch's writes survive in any combination (two records, two changelog entries), and
    every message since a random earlier commit comes again, possibly re-sent upstream too.
    Values are floats: the total is merged from the servers, so it cannot drift."""
    messages = upstream_messages(arrivals, size)
    log = list(enumerate(messages))  # (offset, rollups)
    records: dict[str, Any] = {"servers": None, "total": None}

    def run(entries: list[tuple[int, list[tuple[str, Acc]]]], crash_at: int | None) -> None:
        for start in range(0, len(entries), batch):
            chunk = entries[start : start + batch]
            updates = [
                (offset, server, acc) for offset, rollups in chunk for server, acc in rollups
            ]
            # Each batch works on a copy of what was stored, as a table read gives.
            servers, total = apply_server_rollups(
                copy.deepcopy(records["servers"]), updates, chunk[-1][0]
            )
            if crash_at is not None and start // batch == crash_at:
                kept = crash.draw(st.sampled_from(["none", "servers", "total", "both"]))
                if kept in ("servers", "both"):
                    records["servers"] = servers
                if kept in ("total", "both"):
                    records["total"] = total
                return
            records["servers"], records["total"] = servers, total

    batches = (len(log) + batch - 1) // batch
    crash_at = crash.draw(st.integers(0, batches - 1))
    run(log, crash_at)
    committed = crash.draw(st.integers(0, crash_at * batch))
    resent = crash.draw(st.booleans())  # the server stage also re-sent its last message
    again = log[committed:] + ([(len(log), log[-1][1])] if resent else [])
    run(again, None)
    total = value_of(records["total"])
    want = brute(arrivals)
    assert total[:2] == want[:2] and total[3] == want[3]
    assert math.isclose(total[2], want[2], rel_tol=1e-9, abs_tol=1e-6)
    servers = [Rollup.from_list(acc) for acc in value_of(records["servers"]).values()]
    assert Rollup.from_list(total) == merge_all(servers)
    assert offset_of(records["servers"]) == offset_of(records["total"])


def test_an_older_rollup_arriving_late_does_not_replace_a_newer_one() -> None:
    servers, total = apply_server_rollups(None, [(5, "a", [1, 9, 20, 4])], 5)
    servers, total = apply_server_rollups(servers, [(6, "a", [1, 5, 6, 2])], 6)
    assert value_of(servers) == {"a": [1, 9, 20, 4]}
    assert value_of(total) == [1, 9, 20, 4]


def test_records_are_value_and_offset() -> None:
    assert value_of(None, 0) == 0 and offset_of(None) == -1
    assert (value_of(stamp(7, 3)), offset_of(stamp(7, 3))) == (7, 3)


@dataclass(frozen=True)
class Message:
    offset: int


@dataclass(frozen=True)
class Event:
    message: Message
    copy: int


@given(st.lists(st.integers(0, 40), max_size=60))
def test_a_batch_has_each_offset_once_in_order(offsets: list[int]) -> None:
    """Twins in a batch (a message handed over twice around a rebalance) collapse to one, and
    the last event carries the batch's highest offset, which its records are stamped with."""
    events = [Event(Message(offset), n) for n, offset in enumerate(offsets)]
    kept = one_per_offset(events)
    assert [e.message.offset for e in kept] == sorted(set(offsets))
    assert all(e in events for e in kept)
