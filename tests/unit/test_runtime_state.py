"""Per-partition in-memory state dropped on revoke, for every instance at once; the pinned
versions whose internals the compat module reaches into, and what its patches of them must
hold (tally.runtime)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from types import SimpleNamespace
from typing import Any, NamedTuple, cast

import pytest
from faust.transport.producer import ProducerBuffer
from faust.types import TP as FaustTP
from faust.types import Message

from tally.core.errors import ConfigurationError
from tally.core.windowing import EventClock
from tally.runtime.faust_compat import (
    PINNED,
    accept_missing,
    check_pinned_versions,
    delivery_state,
    fetching,
    leave_unacked,
    read_again,
)
from tally.runtime.state import PartitionStates, StoredClocks


class TP(NamedTuple):
    topic: str
    partition: int


def test_a_revoked_partition_is_dropped_from_every_state_of_its_topic_only() -> None:
    windows: PartitionStates[str] = PartitionStates("t-purchases")
    published: PartitionStates[int] = PartitionStates("t-purchases")
    merged: PartitionStates[dict[int, str]] = PartitionStates("t-candidates")
    for partition in range(4):
        windows[partition] = f"window {partition}"
        published[partition] = partition
    merged[0] = {1: "candidates of 1"}
    PartitionStates.revoked([TP("t-purchases", 1), TP("t-purchases", 3), TP("t-candidates", 0)])
    assert sorted(windows) == [0, 2] and sorted(published) == [0, 2]
    assert merged.get(0) is None, "the merge stage's state goes with its partition too"
    PartitionStates.revoked([TP("other", 0)])
    assert sorted(windows) == [0, 2]
    windows.forget(0)
    assert 0 not in windows and windows[2] == "window 2"


def test_a_stored_clock_is_read_once_then_kept_until_its_partition_is_revoked() -> None:
    stored = {0: {"event_ms": 5_000, "wall_ms": 100, "upstream": {"1": 4_000}}}
    reads: list[int] = []

    def read(partition: int) -> dict[str, object] | None:
        reads.append(partition)
        return stored.get(partition)

    clocks = StoredClocks("t-views", read, lambda partition: frozenset({1 - partition}))
    clock = clocks.clock(0)
    assert clock.record() == EventClock.from_record(stored[0]).record()
    assert clock.watermark(100, 0) == 4_000, "it waits for partition 1's announcements"
    clock.observe(9_000, 200)
    assert clocks.clock(0) is clock and reads == [0], "kept in memory, read once"
    assert clocks.clock(1).record()["event_ms"] is None, "no record: a new clock"
    PartitionStates.revoked([TP("t-views", 0)])
    assert clocks.clock(0).record()["event_ms"] == 5_000 and reads == [0, 1, 0]


def test_the_pinned_versions_pass_and_any_other_is_refused_by_name() -> None:
    check_pinned_versions()  # what is installed here
    check_pinned_versions(dict(PINNED))
    with pytest.raises(ConfigurationError, match=r"faust-streaming 0\.16\.0 \(needs 0\.15\.3\)"):
        check_pinned_versions({**PINNED, "faust-streaming": "0.16.0"})
    with pytest.raises(ConfigurationError, match=r"aiokafka None"):
        check_pinned_versions({k: v for k, v in PINNED.items() if k != "aiokafka"})


def test_a_message_no_stream_took_in_never_reaches_the_committed_offset() -> None:
    """Faust acks the messages its streams skip during a rebalance; the commit must stop
    before them (the partition is read again from there), and go on past processed ones."""
    from tally.app import app  # the worker's app: its consumer, with the compat patch

    consumer = app.consumer
    consumer.app.topics._acking_topics.add("purchases")  # as an agent's subscription does
    tp = FaustTP("purchases", 0)
    taken = [message(tp, offset, tracked=True) for offset in (10, 11)]
    skipped, after = message(tp, 12, tracked=False), message(tp, 13, tracked=True)
    for one in [*taken, skipped, after]:
        consumer.ack(one)
    assert skipped.acked, "acked for Faust's flow (nothing waits for it)"
    assert consumer._new_offset(tp) == 12, "committed up to the skipped message, not past it"


def test_held_back_messages_are_not_committed_and_a_missing_offset_is_passed() -> None:
    """Messages held back behind a hole are done for Faust but never committed (the reread
    brings them again); an offset taken as missing from the log is committed past."""
    from tally.app import app

    consumer = app.consumer
    consumer.app.topics._acking_topics.add("purchases")
    held, passed = FaustTP("purchases", 1), FaustTP("purchases", 2)
    consumer._committed_offset[held] = 8
    consumer._committed_offset[passed] = 10
    applied = [message(held, offset, tracked=True) for offset in (8, 9)]
    held_back = [message(held, offset, tracked=True) for offset in (11, 12)]
    for one in held_back:
        leave_unacked(one)
    for one in [*applied, *held_back]:
        consumer.ack(one)
    assert consumer._new_offset(held) == 10, "up to the hole at 10, not past what was held"
    for offset in (11, 12):
        consumer.ack(message(passed, offset, tracked=True))
    accept_missing(consumer, passed, 10, 11)
    assert consumer._new_offset(passed) == 13


def test_a_partition_paused_or_with_a_full_stream_buffer_is_not_fetched() -> None:
    """Whether the consumer fetches a partition decides whether its client's high watermark
    is current (runtime.intake.caught_up); the real consumer's own pause and buffer calls."""
    from tally.app import app

    consumer = app.consumer
    paused, buffered, fetched = (FaustTP("purchases", p) for p in (0, 1, 2))
    consumer._set_active_tps({paused, buffered, fetched})
    consumer.pause_partitions([paused])
    consumer.on_buffer_full(buffered)
    try:
        assert [fetching(consumer, tp) for tp in (paused, buffered, fetched)] == [
            False,
            False,
            True,
        ]
        assert "not fetching, paused" in delivery_state(consumer, paused)
        assert "not fetching, stream buffer full" in delivery_state(consumer, buffered)
        consumer.resume_partitions([paused])
        consumer.on_buffer_drop(buffered)
        assert all(fetching(consumer, tp) for tp in (paused, buffered, fetched))
    finally:
        consumer._reset_state()


def test_a_flush_returns_once_every_buffered_message_is_handed_to_the_client() -> None:
    """Faust commits right after flushing its producer: a flush that returned with table
    changes still in the buffer would let a crash lose them behind a commit. Faust's own
    flush gives up after 0.1 s without a send; a client that takes 0.25 s a message must
    still get all three before the flush returns."""
    from tally.app import app  # the worker's app: its settings, and the compat patch

    handed: list[int] = []

    class SlowClient:
        async def publish_message(self, fut: SimpleNamespace, wait: bool) -> None:
            await asyncio.sleep(0.25)
            handed.append(fut.message.number)

    async def flush_three() -> float:
        buffer = ProducerBuffer(loop=asyncio.get_running_loop())  # as Faust's producer has
        buffer.app = app
        await buffer.start()
        try:
            client = SlowClient()
            for number in range(3):
                buffer.put(SimpleNamespace(message=SimpleNamespace(channel=client, number=number)))
            started = time.monotonic()
            await buffer.flush()
            return time.monotonic() - started
        finally:
            await buffer.stop()

    took = asyncio.run(flush_three())
    assert handed == [0, 1, 2], f"the flush returned after {took:.2f} s with {handed} handed"


def test_the_buffer_ebbs_by_its_counts_and_waits_as_faust_does_when_over_its_limit() -> None:
    """The fetch loop asks for every message whether the producer's buffer is over its limit;
    the buffer's counts answer, and over the limit Faust's own wait runs (here it says the
    buffer cannot flush: it was never started, so nothing was sent)."""
    from tally.app import app

    class SettingsRead(Exception):
        pass

    class Settings:
        @property
        def producer_threaded(self) -> bool:
            raise SettingsRead  # what Faust's own check reads for every message

    async def ebb(puts: int) -> None:
        buffer = ProducerBuffer(loop=asyncio.get_running_loop())
        buffer.app = app
        buffer.max_messages = 2
        for number in range(puts):
            buffer.put(SimpleNamespace(message=SimpleNamespace(number=number)))
        assert buffer.size == puts
        if puts <= buffer.max_messages:  # the counts answer: no setting is read
            buffer.app = cast(Any, SimpleNamespace(conf=Settings()))
        await buffer.wait_until_ebb()

    asyncio.run(ebb(2))  # at the limit: goes on at once
    with pytest.raises(RuntimeError, match="Cannot flush"):
        asyncio.run(ebb(3))


def message(tp: FaustTP, offset: int, tracked: bool) -> Message:
    one = Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, None, tp=tp)
    one.tracked = tracked
    return one


def written_out_seconds() -> Counter[str]:
    """tally_write_out_seconds's sums so far, by kind."""
    from tally.telemetry import WRITE_OUT_SECONDS

    [family] = WRITE_OUT_SECONDS.collect()
    return Counter({s.labels["kind"]: s.value for s in family.samples if s.name.endswith("_sum")})


def test_a_cell_write_out_is_timed_once_on_its_own_or_within_its_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cells written out by a commit's flush (its hook) are timed as `commit`, cells written
    out on their own (full, quiet, after every batch) as `cells`, each once: the benches add
    the write-outs after a run's last event to its time."""
    from tally.app import app
    from tally.runtime import cells

    async def slow_write_out(places: list[object]) -> list[object]:
        await asyncio.sleep(0.2)
        return []

    monkeypatch.setattr(cells, "write_out", slow_write_out)

    async def flushes() -> Counter[str]:
        before = written_out_seconds()
        await cells.flush()  # on its own
        buffer = ProducerBuffer(loop=asyncio.get_running_loop())
        buffer.app = app
        await buffer.start()
        try:
            await buffer.flush()  # a commit's: its hook writes the cells out
            grown = written_out_seconds()
        finally:
            await buffer.stop()  # flushes once more
        grown.subtract(before)
        return grown

    grown = asyncio.run(flushes())
    assert 0.2 <= grown["cells"] < 0.4 and 0.2 <= grown["commit"] < 0.4, grown


def test_cells_a_flush_could_not_write_stay_in_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that fails once it took a place's cells (here: RocksDB refuses the write)
    puts them back, so no commit passes changes the tables lack; the next flush writes them.
    A table this app does not have fails before anything is taken."""
    from tally.runtime import cells
    from tally.sales.tables import sales_clocks

    def refused(table: object, partition: int) -> object:
        raise OSError("no space left on device")

    monkeypatch.setattr(cells, "partition_db", refused)
    places = [(sales_clocks.name, 0), ("no-such-table", 0)]
    for place in places:
        cells.dirty.put(place, b"k1", b"1")
        cells.dirty.put(place, b"k2", b"2")
    try:
        with pytest.raises(OSError, match="no space"):
            asyncio.run(cells.flush(places[:1]))
        with pytest.raises(KeyError):
            asyncio.run(cells.flush(places[1:]))
        for place in places:
            assert sorted(cells.dirty.keys(place)) == [b"k1", b"k2"]
    finally:
        cells.dirty.take(places)


def test_a_failed_send_puts_back_no_cell_retention_deleted_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retention deletes a range (store.delete_below) while a flush sends the place's cells
    to the changelog; the send fails: the cell in the range is not put back (it would be
    written again at the next flush), the other is, and the place is settled."""
    from tally.runtime import cells, store
    from tally.sales.tables import sales_clocks

    class Partition:
        def write(self, batch: object) -> None:
            pass

        def delete_range(self, start: bytes, stop: bytes) -> None:
            pass

    monkeypatch.setattr(cells, "partition_db", lambda table, partition: Partition())
    monkeypatch.setattr(store, "partition_db", lambda table, partition: Partition())
    monkeypatch.setattr(cells, "WRITE_BEHIND", True)
    sending = asyncio.Event()

    async def send_fails(*args: object) -> list[object]:
        sending.set()
        await asyncio.sleep(0.05)
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(cells, "send_records", send_fails)
    place = (sales_clocks.name, 0)
    cells.dirty.put(place, b"2026-01-01|old", b"1")
    cells.dirty.put(place, b"2026-01-09|new", b"2")

    async def flush_while_retention_deletes() -> None:
        flushing = asyncio.create_task(cells.flush([place]))
        await sending.wait()
        store.delete_below(sales_clocks, 0, b"2026-01-05")
        with pytest.raises(ConnectionError):
            await flushing

    try:
        asyncio.run(flush_while_retention_deletes())
        assert cells.dirty.keys(place) == [b"2026-01-09|new"]
        assert place not in cells.dirty._dropped_while_out
    finally:
        cells.dirty.take([place])


def test_a_rebalance_moves_every_table_version_on() -> None:
    """Restores and a standby's changelog change tables outside the cache: answers kept at a
    version from before a rebalance are not current after it."""
    from tally.runtime import cells

    table = SimpleNamespace(name="server-rollups")
    before = cells.version(table, 0)  # type: ignore[arg-type]
    asyncio.run(cells.count_rebalance(None, set()))
    assert cells.version(table, 0) != before  # type: ignore[arg-type]


def test_a_reread_clears_the_streams_read_offset_with_the_seek() -> None:
    """Faust's stream drops every fetched message below the last it took (`_read_offset`,
    `Consumer._drain_messages`): a seek alone brought nothing before it again, and a partition
    with a hole stalled (seen in a failover test with a CPU hog: 2,050 messages waited).
    Cleared rather than set to the hole: a message fetched before the seek would otherwise be a
    jump Faust records as a gap in the log, and commits past."""
    tp = FaustTP("purchases", 2)
    seeks: list[dict[FaustTP, int]] = []

    async def seek_wait(partitions: dict[FaustTP, int]) -> None:
        seeks.append(dict(partitions))

    consumer = SimpleNamespace(seek_wait=seek_wait, _read_offset={tp: 2642})
    asyncio.run(read_again(consumer, tp, 593))
    assert seeks == [{tp: 593}]
    assert consumer._read_offset[tp] is None  # any offset passes; no jump is taken for a gap


def test_table_cells_encode_and_decode_as_faust_s_own_store_does() -> None:
    """Tally's tables keep plain JSON: read and written with orjson directly, to the same
    bytes and values as through Faust's serializer registry."""
    from tally.app import app
    from tally.runtime.faust_compat import decode_value, encode_value

    table = app.Table(f"plain-{uuid.uuid4().hex}", key_type=bytes)
    store = table.data
    for value in ({"a": [1, 2], "b": "x", "c": None}, [3, {"1": 4.5}], 5, "s", [], {}):
        encoded = encode_value(table, value)
        assert encoded == store._encode_value(value)
        assert decode_value(table, encoded) == store._decode_value(encoded) == value


def test_a_handover_topic_buffers_its_own_few_messages_ahead_of_its_agent() -> None:
    """Faust drops a topic's maxsize; kept, a stream over the topic (a clone, as an agent
    iterates) buffers that many messages, and a source topic Faust's default."""
    from tally.runtime.topics import HANDOVER_BUFFER, handover_topic, purchases

    handover = handover_topic(f"test-handover-{uuid.uuid4().hex[:6]}")
    assert handover.clone(is_iterator=True).queue.maxsize == HANDOVER_BUFFER
    assert handover.clone(is_iterator=True).maxsize == HANDOVER_BUFFER  # its batches' bound
    assert purchases.clone(is_iterator=True).queue.maxsize == 4096
