"""Offsets kept with state: a redelivered message changes nothing, a crash mid-batch neither."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core.applied import (
    Hole,
    Source,
    Stamped,
    Unread,
    apply_server_rollups,
    holds,
    offset_of,
    one_per_offset,
    one_per_origin,
    reach,
    stamp,
    value_of,
)
from tally.core.loggaps import LogGaps
from tally.core.partitioning import parse_partition_tag, partition_tag
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


def test_a_record_keeps_the_marks_of_every_source_it_includes() -> None:
    """Its own partition's offset, and per source partition forwarded from, the highest origin
    offset: a batch from one source keeps the marks of the others."""
    own = stamp(10, 7)
    assert own == [10, 7]  # the format of records written before forwarding existed
    forwarded = stamp(12, {3: 40, 1: 5}, own)
    assert (offset_of(forwarded), offset_of(forwarded, 3), offset_of(forwarded, 1)) == (7, 40, 5)
    again = stamp(13, 9, forwarded)
    assert (offset_of(again), offset_of(again, 3), offset_of(again, 2)) == (9, 40, -1)
    assert holds(again, 40, 3) and not holds(again, 41, 3) and not holds(again, 0, 2)
    assert holds(again, 9) and not holds(again, 10)


def test_a_partition_tag_reads_back() -> None:
    assert parse_partition_tag(partition_tag(3, 1_234_567)) == (3, 1_234_567)


@dataclass(frozen=True)
class Forwarded:
    """A message on the owner's partition: its own (source None) or forwarded (its origin)."""

    message: Message
    source: Source
    origin: int
    key: str
    amount: int


def forwarded_log(
    messages: dict[int, list[tuple[str, int]]], data: st.DataObject
) -> list[tuple[Source, int, str, int]]:
    """What the routed topic of the owner holds: each source partition's messages forwarded in
    order by forwarders that die at random points and whose successor starts again from the
    last commit (re-forwarding what was sent since); sources interleave at random."""
    per_source: dict[int, list[tuple[Source, int, str, int]]] = {}
    for source, entries in messages.items():
        sent: list[tuple[Source, int, str, int]] = []
        committed = -1
        position = 0
        while position < len(entries):
            stop = data.draw(st.integers(position + 1, len(entries)))
            sent += [(source, o, *entries[o]) for o in range(position, stop)]
            if stop < len(entries) and data.draw(st.booleans()):  # dies; the successor resumes
                committed = data.draw(st.integers(committed, stop - 1))
                position = committed + 1
            else:
                committed = position = stop
        per_source[source] = sent
    merged: list[tuple[Source, int, str, int]] = []
    while any(per_source.values()):
        source = data.draw(st.sampled_from(sorted(s for s, left in per_source.items() if left)))
        merged.append(per_source[source].pop(0))
    return merged


@settings(max_examples=200, deadline=None)
@given(
    own=st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 9)), max_size=15),
    others=st.dictionaries(
        st.integers(1, 3),
        st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 9)), min_size=1, max_size=15),
        max_size=3,
    ),
    batch=st.integers(1, 6),
    data=st.data(),
)
def test_forwarded_and_own_messages_count_once_through_both_hops_and_crashes(
    own: list[tuple[str, int]],
    others: dict[int, list[tuple[str, int]]],
    batch: int,
    data: st.DataObject,
) -> None:
    """The owner reads its own partition and the routed topic, each in batches, taking turns;
    it crashes at random mid-batch (any subset of the batch's writes survives) and takes each
    input again from its last commit. Every cell ends with the sum of each message counted
    once, whatever the forwarders and the owner re-sent."""
    inputs = {
        "own": [Forwarded(Message(o), None, o, key, n) for o, (key, n) in enumerate(own)],
        "routed": [
            Forwarded(Message(o), source, origin, key, n)
            for o, (source, origin, key, n) in enumerate(forwarded_log(others, data))
        ],
    }
    cells: dict[str, Stamped] = {}
    committed = {name: 0 for name in inputs}

    def run_batch(events: list[Forwarded], crash: bool) -> None:
        kept = one_per_origin(events, lambda e: (e.source, e.origin))
        deltas: dict[str, int] = {}
        for event in kept:
            if not holds(cells.get(event.key), event.origin, event.source):
                deltas[event.key] = deltas.get(event.key, 0) + event.amount
        through = reach((e.source, e.origin) for e in kept)
        for key, delta in deltas.items():
            if crash and not data.draw(st.booleans()):
                continue  # this write was lost with the process
            before = cells.get(key)
            cells[key] = stamp(value_of(before, 0) + delta, through, before)

    while any(committed[name] < len(log) for name, log in inputs.items()):
        name = data.draw(
            st.sampled_from([n for n, log in inputs.items() if committed[n] < len(log)])
        )
        start = committed[name]
        events = inputs[name][start : start + batch]
        events = events + data.draw(st.lists(st.sampled_from(events), max_size=2))  # twins
        crash = data.draw(st.booleans()) and data.draw(st.booleans())
        run_batch(events, crash)
        if not crash:
            committed[name] = start + len(inputs[name][start : start + batch])

    expected: dict[str, int] = {}
    for key, n in own:
        expected[key] = expected.get(key, 0) + n
    for entries in others.values():
        for key, n in entries:
            expected[key] = expected.get(key, 0) + n
    assert {key: value_of(cell) for key, cell in cells.items()} == expected


@dataclass
class FaustConsumer:
    """What of Faust's consumer decides what is lost. The log has messages and transaction
    markers (offsets with no message). A fetch may drop a message before the stream sees it
    (as Faust does around a rebalance); the stream then takes the jump in offsets for a gap in
    the log (Faust's `_gap`: its commits pass it) unless told otherwise
    (runtime.faust_compat.refuse_missing), and skips offsets below the last it took (unless a
    seek reset that). Fetched messages wait in the stream's buffer (a seek does not empty it),
    applied messages are acked (held-back ones are left unacked), and a commit takes the run
    of acks, and of gaps below the highest ack, from the lowest ack, which may start one past
    the committed offset (Faust's room for a transaction marker) or anywhere when nothing was
    committed yet. What the client fetched, drops included, feeds `fetched`
    (runtime.faust_compat.record_fetched_offsets)."""

    log: list[int | None]  # None: a transaction marker
    position: int = 0
    committed: int = 0
    read: int | None = None  # the last offset the stream took
    buffered: list[int] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    gap: set[int] = field(default_factory=set)  # what Faust commits past without an ack
    fetched: LogGaps = field(default_factory=LogGaps)

    def fetch(self, count: int, drop: int | None) -> None:
        offsets = range(self.position, min(self.position + count, len(self.log)))
        self.position += len(offsets)
        records = [offset for offset in offsets if self.log[offset] is not None]
        self.fetched.fetched("p", records)
        for offset in records:
            if offset == drop or (self.read is not None and offset < self.read):
                continue
            if self.read is not None and offset > self.read + 1:  # through `offset`, as Faust
                self.gap |= set(range(self.read + 1, offset + 1))
            self.buffered.append(offset)
            self.read = offset

    def deliver(self, count: int) -> list[int]:
        """A batch as the stream hands it over: a reread's copies beside earlier fetches'."""
        batch, self.buffered = self.buffered[:count], self.buffered[count:]
        return batch

    def seek(self, offset: int) -> None:
        """As runtime.faust_compat.read_again: the read offset is cleared, not set."""
        self.position, self.read = offset, None

    def ack(self, offsets: list[int]) -> None:
        self.acked |= {offset for offset in offsets if offset >= self.committed}

    def commit(self) -> None:
        if not self.acked:
            return
        acks = self.acked | {o for o in self.gap if self.committed <= o < max(self.acked)}
        run = min(acks)
        if self.committed and run - self.committed > 1:
            return
        while run + 1 in acks:
            run += 1
        self.committed = run + 1
        self.acked = {offset for offset in self.acked if offset > run}

    def restart(self) -> None:
        """A rebalance or a crash: reading starts again from the committed offset."""
        self.position, self.buffered, self.acked = self.committed, [], set()
        self.read = self.committed or None
        self.fetched.forget("p")


@settings(max_examples=400, deadline=None)
@given(
    log=st.lists(st.one_of(st.integers(1, 9), st.none()), min_size=1, max_size=40).map(
        lambda log: [*log, 1]  # the last offset a message: the loop ends at its commit
    ),
    batch=st.integers(1, 6),
    events=st.data(),
)
def test_a_message_dropped_from_a_delivery_is_read_again_not_skipped_for_good(
    log: list[int | None], batch: int, events: st.DataObject
) -> None:
    """A partition with transaction markers is fetched and delivered in batches; now and
    then a fetched message is dropped (as Faust's stream drops one fetched before a
    rebalance), more is fetched before the agent takes a batch, or the worker restarts from
    the committed offset. With `Unread` guarding each batch, what it holds back left unacked,
    the gaps judged from what was fetched (`LogGaps`) and a drop refused as a gap, the stamped
    total equals the sum, and only markers are ever passed as missing."""
    unread = Unread(tries=3, patience_s=1000.0)
    faust = FaustConsumer(log)
    record: Stamped | None = None
    done: int | None = None  # the last offset applied since the (re)start
    passed: set[int] = set()  # holes given up
    drops = restarts = steps = 0
    while faust.committed < len(log):
        steps += 1
        assert steps < 5_000, "stuck"
        if restarts < 3 and events.draw(st.integers(0, 19)) == 0:
            restarts += 1
            faust.restart()
            unread.forget("p")
            done = None
            continue
        if not faust.buffered or events.draw(st.booleans()):
            if faust.position == len(log) and not faust.buffered:
                faust.restart()  # all read, not all committed: the next rebalance rereads
                unread.forget("p")
                done = None
                continue
            drop = None
            if drops < unread.tries - 1 and events.draw(st.booleans()):
                drops += 1
                drop = faust.position + events.draw(st.integers(0, batch - 1))
            faust.fetch(batch, drop)
            continue
        copies = faust.deliver(events.draw(st.integers(1, batch)))
        delivered = sorted(set(copies))  # one_per_offset
        # With nothing applied since the (re)start: the committed offset, or the log's start.
        expected = faust.committed if done is None else max(done + 1, faust.committed)
        applicable, hole = unread.applicable(
            "p",
            expected,
            delivered,
            float(steps),
            faust.fetched.lacks("p"),
            faust.fetched.holds("p"),
        )
        # From the first held back on, every copy is left unacked (runtime.intake).
        held_from = delivered[applicable] if applicable < len(delivered) else len(log)
        faust.ack([offset for offset in copies if offset < held_from])
        if hole is not None and hole.given_up:  # faust_compat.accept_missing
            assert hole.until is not None
            passed |= set(range(hole.start, hole.until))
            faust.gap |= set(range(hole.start, hole.until))
        elif hole is not None and hole.reread:  # faust_compat.refuse_missing, then the seek
            faust.gap -= set(range(hole.start, delivered[applicable] + 1))
            faust.seek(hole.start)
        applied = delivered[:applicable]
        if applied:
            fresh = [offset for offset in applied if not holds(record, offset, None)]
            total = value_of(record) if record is not None else 0
            record = stamp(total + sum(log[o] or 0 for o in fresh), applied[-1], record)
            done = applied[-1]
        faust.commit()
    assert all(log[offset] is None for offset in passed), "only markers passed as missing"
    assert record is not None and value_of(record) == sum(v for v in log if v is not None)


def test_a_partitions_open_hole_is_known_until_a_batch_fills_it() -> None:
    """The stall watch reads a stalled partition again from its open hole."""
    unread = Unread()
    assert unread.hole("p") is None
    unread.applicable("p", 4, [5, 6], 0.0)
    assert unread.hole("p") == 4
    unread.applicable("p", 4, [4, 5, 6], 1.0)
    assert unread.hole("p") is None


def test_a_reread_that_never_comes_back_is_given_up_after_its_patience() -> None:
    """Offsets 5 and 6 are delivered, 4 never is, and no reread brings anything again (a gap
    the fetches did not show): each reread gets `patience_s`, then the hole is passed."""
    unread = Unread(tries=2, patience_s=10.0)
    assert unread.applicable("p", 4, [5, 6], 0.0) == (0, Hole(4, reread=True, given_up=False))
    assert unread.applicable("p", 4, [7], 5.0) == (0, Hole(4, reread=False, given_up=False))
    assert unread.applicable("p", 4, [8], 11.0) == (0, Hole(4, reread=True, given_up=False))
    assert unread.applicable("p", 4, [9], 22.0) == (
        0,  # 5 to 8 came in earlier batches, held back: 5 is the next hole, not passed
        Hole(4, reread=False, given_up=True, until=5),
    )


def test_a_message_the_fetches_saw_is_read_again_for_as_long_as_it_takes() -> None:
    """Offset 4 was fetched (then dropped), and the rereads are slow to come back: it is
    read again and again, never passed."""
    unread = Unread(tries=2, patience_s=10.0)

    def fetched(start: int, stop: int) -> bool:
        return any(o in {3, 4, 5, 6} for o in range(start, stop))

    for at in (0.0, 11.0, 22.0, 33.0):
        assert unread.applicable("p", 4, [5, 6], at, in_log=fetched)[1] == Hole(
            4, reread=True, given_up=False
        )
    assert unread.applicable("p", 4, [4, 5, 6], 40.0, in_log=fetched) == (3, None)


def test_a_gap_before_a_fetched_message_is_not_passed_with_it() -> None:
    """4 is a marker the fetches never crossed (the committed offset), 5 a message fetched and
    dropped: the stretch from 4 holds 5, so nothing is passed."""
    unread = Unread(tries=1, patience_s=10.0)

    def fetched(start: int, stop: int) -> bool:
        return any(o in {5, 6, 7} for o in range(start, stop))

    assert unread.applicable("p", 4, [6, 7], 0.0, in_log=fetched)[1] == Hole(
        4, reread=True, given_up=False
    )
    assert unread.applicable("p", 4, [6, 7], 11.0, in_log=fetched)[1] == Hole(
        4, reread=True, given_up=False
    )


def test_a_reread_with_no_batch_since_is_due_again_after_its_patience() -> None:
    """The stall watch asks: each reread gets its patience, counted from when it began."""
    unread = Unread(tries=3, patience_s=10.0)
    assert unread.overdue("p", 100.0) is None, "no hole"
    unread.applicable("p", 4, [5, 6], 0.0)
    assert unread.overdue("p", 9.0) is None
    assert unread.overdue("p", 10.0) == 4
    assert unread.overdue("p", 15.0) is None, "the reread just begun has its patience"
    assert unread.overdue("p", 20.0) == 4


def test_a_gap_in_the_log_is_passed_after_its_rereads_come_back_without_it() -> None:
    """A transaction marker at the committed offset 4: every reread brings 5 again, never 4."""
    unread = Unread(tries=3, patience_s=1000.0)
    assert unread.applicable("p", 4, [5, 6], 0.0)[1] == Hole(4, reread=True, given_up=False)
    assert unread.applicable("p", 4, [7, 8], 0.1)[1] == Hole(4, reread=False, given_up=False)
    assert unread.applicable("p", 4, [5, 6], 0.2)[1] == Hole(4, reread=True, given_up=False)
    assert unread.applicable("p", 4, [5], 0.3)[1] == Hole(4, reread=True, given_up=False)
    assert unread.describe("p") == (
        "offset 4 missing, 2 rereads came back without it, the highest delivered since is 8"
    )
    assert unread.applicable("p", 4, [5, 6, 7], 0.4) == (
        3,
        Hole(4, reread=False, given_up=True, until=5),
    )
    assert unread.applicable("p", 9, [9], 0.5) == (1, None)
    assert unread.describe("p") == "passed 4-4 as absent"
    assert unread.describe("other") == "no hole"


def test_a_hole_after_a_passed_one_is_not_passed_with_it() -> None:
    """Offset 4 is passed after its rereads; 8 is missing too: the batch applies up to 8, and
    the next batch rereads from there."""
    unread = Unread(tries=1, patience_s=1000.0)
    assert unread.applicable("p", 4, [5, 6], 0.0)[1] == Hole(4, reread=True, given_up=False)
    passed = unread.applicable("p", 4, [5, 6, 7, 9], 0.1)
    assert passed == (3, Hole(4, reread=False, given_up=True, until=5))
    assert unread.applicable("p", 8, [9, 10], 0.2) == (0, Hole(8, reread=True, given_up=False))


def test_a_passed_hole_ends_where_a_batch_since_it_opened_delivered_the_next_offset() -> None:
    """A marker at 0; the rereads bring 1, then a batch brings only 2 and the patience runs
    out: giving 0 up passes only 0, and 1 (a message, held back before) is a hole of its own."""
    unread = Unread(tries=2, patience_s=10.0)
    assert unread.applicable("p", 0, [1], 0.0) == (0, Hole(0, reread=True, given_up=False))
    assert unread.applicable("p", 0, [1], 1.0) == (0, Hole(0, reread=True, given_up=False))
    assert unread.applicable("p", 0, [2], 12.0) == (
        0,
        Hole(0, reread=False, given_up=True, until=1),
    )
    assert unread.applicable("p", 1, [2], 13.0) == (0, Hole(1, reread=True, given_up=False))


def test_a_passed_hole_stays_passed_when_its_batch_could_not_be_applied() -> None:
    """4 is given up while the batch holds only 9 (5 came before, held back): nothing is
    applied, and the next batch from 4 does not open 4 again but rereads from 5."""
    unread = Unread(tries=1, patience_s=10.0)
    assert unread.applicable("p", 4, [5, 6], 0.0)[1] == Hole(4, reread=True, given_up=False)
    assert unread.applicable("p", 4, [9], 11.0) == (
        0,
        Hole(4, reread=False, given_up=True, until=5),
    )
    assert unread.applicable("p", 4, [9], 12.0) == (0, Hole(5, reread=True, given_up=False))
    assert unread.applicable("p", 4, [5, 6, 7], 12.5) == (3, None)
    unread.forget("p")
    assert unread.applicable("p", 4, [5], 13.0) == (0, Hole(4, reread=True, given_up=False))
