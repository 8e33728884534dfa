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
    stalls.observe("p", next_offset=5, waiting=3, now=0, allowance_s=2)
    assert stalls.reread_due("p", now=12, every_s=10)
    assert not stalls.reread_due("p", now=23, every_s=10), "its reread may wait in a batch"
    assert stalls.reread_due("p", now=24, every_s=10)
    stalls.observe("p", next_offset=5, waiting=2, now=25)  # the same watch: still stuck
    assert not stalls.reread_due("p", now=30, every_s=10)
    stalls.observe("p", next_offset=6, waiting=2, now=31)  # it moved: a new watch
    assert stalls.reread_due("p", now=32, every_s=10)


def test_no_agent_holds_a_topic_s_messages_once_each_reader_waited_a_window_for_them() -> None:
    readers = Readers(margin_s=1.0)
    assert not readers.all_idle("rollups", now=100), "no reader known: unsure"
    sink = readers.reads(["rollups"], window_s=2.0, now=100)
    index = readers.reads(["rollups", "ticks"], window_s=0.1, now=100)
    assert not readers.all_idle("rollups", now=102.5), "the sink's window + margin"
    assert readers.all_idle("rollups", now=103)
    sink.took()
    assert not readers.all_idle("rollups", now=200), "the sink works on a batch"
    sink.waits(now=200)
    # what was queued meanwhile is handed over within a window of its waiting
    assert not readers.all_idle("rollups", now=202)
    index.took()
    index.waits(now=202.5)
    assert readers.all_idle("ticks", now=203.7)
    assert not readers.all_idle("rollups", now=203.5)
    assert readers.all_idle("rollups", now=203.7)
    assert not readers.all_idle("purchases", now=500), "nobody reads it here"


def test_a_topic_s_window_is_its_readers_longest_and_a_reader_gone_holds_nothing() -> None:
    readers = Readers(margin_s=1.0)
    assert readers.window("rollups") == 0.0
    sink = readers.reads(["rollups"], window_s=60.0, now=0)
    readers.reads(["rollups"], window_s=0.1, now=0)
    assert readers.window("rollups") == 60.0
    assert not readers.all_idle("rollups", now=30), "the sink may hold a minute's batch"
    readers.gone(sink)
    assert readers.window("rollups") == 0.1
    assert readers.all_idle("rollups", now=30)
