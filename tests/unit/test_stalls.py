"""Partitions with messages waiting and nothing processed are named (core.stalls)."""

from __future__ import annotations

from tally.core.stalls import Readers, Stalls


def test_a_partition_is_stalled_once_its_next_offset_has_not_moved_for_the_limit() -> None:
    stalls = Stalls(after_s=30)
    stalls.observe("p", next_offset=5, waiting=3, now=0)
    stalls.observe("p", next_offset=5, waiting=7, now=20)  # more came; none processed
    assert stalls.stalled(now=29) == {}
    assert stalls.stalled(now=29, after_s=5) == {"p": 29}, "a shorter limit of its own"
    assert stalls.stalled(now=31) == {"p": 31}
    stalls.observe("p", next_offset=6, waiting=6, now=32)  # one processed: moving again
    assert stalls.stalled(now=40) == {}
    assert stalls.stalled(now=62) == {"p": 30}


def test_a_partition_with_nothing_waiting_is_idle_not_stalled() -> None:
    stalls = Stalls(after_s=30)
    stalls.observe("p", next_offset=5, waiting=2, now=0)
    stalls.observe("p", next_offset=5, waiting=0, now=10)  # caught up (or the lag went)
    stalls.observe("p", next_offset=5, waiting=1, now=20)  # a new message: a new watch
    assert stalls.stalled(now=45) == {}
    assert stalls.stalled(now=50) == {"p": 30}


def test_warnings_repeat_every_limit_while_stalled_and_left_partitions_are_dropped() -> None:
    stalls = Stalls(after_s=30)
    stalls.observe("p", next_offset=5, waiting=2, now=0)
    stalls.observe("q", next_offset=9, waiting=2, now=0)
    assert stalls.due(now=30) == {"p": 30, "q": 30}
    assert stalls.due(now=40) == {}
    stalls.keep_only(["p"])  # q was revoked
    assert stalls.due(now=61) == {"p": 61}
    assert stalls.stalled(now=61) == {"p": 61}


def test_a_partition_whose_agent_gathers_long_batches_is_given_that_long_more() -> None:
    stalls = Stalls(after_s=30)
    stalls.observe("archive", next_offset=5, waiting=3, now=0, allowance_s=60)
    assert stalls.stalled(now=89) == {}
    assert stalls.stalled(now=90) == {"archive": 90}


def test_a_stalled_partition_is_read_again_at_most_once_per_period_until_it_moves() -> None:
    stalls = Stalls(after_s=30)
    assert not stalls.reread_due("p", now=0, every_s=10), "not stalled: nothing to read"
    stalls.observe("p", next_offset=5, waiting=3, now=0)
    assert stalls.reread_due("p", now=11, every_s=10)
    assert not stalls.reread_due("p", now=15, every_s=10), "its reread is on its way"
    assert stalls.reread_due("p", now=21, every_s=10)
    stalls.observe("p", next_offset=5, waiting=2, now=22)  # the same watch: still stuck
    assert not stalls.reread_due("p", now=25, every_s=10)
    stalls.observe("p", next_offset=6, waiting=2, now=26)  # it moved: a new watch
    assert stalls.reread_due("p", now=27, every_s=10)


def test_no_agent_holds_a_partition_only_when_every_reader_waits_and_had_none_lately() -> None:
    readers = Readers(margin_s=1.0)
    assert not readers.hold_none_of("rollups", 0, now=100), "no reader known: unsure"
    readers.reads("sink", ["rollups"], window_s=2.0)
    readers.reads("index", ["rollups", "ticks"], window_s=0.1)
    assert readers.hold_none_of("rollups", 0, now=100)
    readers.took("sink", [("rollups", 0), ("rollups", 1)], now=100)
    assert not readers.hold_none_of("rollups", 0, now=200), "the sink works on a batch"
    readers.waits("sink")
    assert not readers.hold_none_of("rollups", 0, now=102.5), "a batch window + margin"
    assert readers.hold_none_of("rollups", 0, now=103)
    readers.took("index", [("rollups", 1)], now=103)
    readers.waits("index")
    assert readers.hold_none_of("rollups", 0, now=103), "another partition's batch"
    assert not readers.hold_none_of("rollups", 1, now=103.5)
    assert readers.hold_none_of("rollups", 1, now=104.2)
    assert not readers.hold_none_of("purchases", 0, now=500), "nobody reads it here"
