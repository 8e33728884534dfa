"""What every pipeline does with a batch of raw events before its own logic, and what keeps
one event from stopping a pipeline.

Decoding: whatever does not decode or validate becomes a dead letter. Partitions: a batch from
`take_events` mixes partitions, while Faust routes table writes by the *current event*'s
partition; `by_partition` + `writing_for` keep each write in its own partition. Failures: a
batch that raises is processed again one event at a time, and only the events that fail alone
are dead-lettered; an event that kills the process is quarantined (`runtime.quarantine`).
Timers survive their own errors (`timer`): in Faust an exception in a timer stops the worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar, cast

from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata
from faust import Stream
from faust.exceptions import ProducerSendError
from faust.types import TP, EventT, StreamT, TopicT
from mode.utils.times import Seconds

from tally.app import app, settings
from tally.core.applied import Unread, one_per_origin
from tally.core.deadletters import DeadLetter, producer_headers
from tally.core.errors import DecodeError, SchemaError, TallyError, ValidationError
from tally.core.limits import MAX_RECORD_BYTES
from tally.core.quarantine import DEATHS_ALONE, IN_FLIGHT_DIR, InFlight, InFlightRecords
from tally.core.stalls import Readers
from tally.core.tenancy import letter_tenant
from tally.runtime.cells import batch_done, flush_if_quiet
from tally.runtime.faust_compat import (
    accept_missing,
    committed_offset,
    current_event,
    fetching,
    leave_unacked,
    log_gaps,
    read_again,
    refuse_missing,
    stream_buffer_full,
)
from tally.runtime.logs import SUMMARY, RejectionSummary
from tally.runtime.routing import origin_of, source_of
from tally.runtime.state import PartitionStates
from tally.runtime.topics import dead_letters
from tally.telemetry import DEAD_LETTERS_SENT, EVENTS, TASK_FAILURES

logger = logging.getLogger(__name__)

T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")


class Decoder(Protocol[T_co]):
    def loads(self, data: bytes) -> T_co: ...


async def decode(event: EventT, codec: Decoder[R], letters: bool = True) -> R | None:
    """The event's decoded value, or None after sending it to dead-letters with the reason
    (not `letters`: another pipeline reading the same message letters it)."""
    try:
        return codec.loads(event.value)
    except ValidationError as exc:
        record = exc.record
        whose = "" if record is None else letter_tenant(record, settings.default_tenant)
        if letters:
            await reject(event, exc, stage="validate", tenant=whose)
    except (DecodeError, SchemaError) as exc:
        if letters:
            await reject(event, exc, stage="decode")
    return None


#: Dead letters counted between two summary lines in the log (`log_rejections`).
rejections = RejectionSummary()
#: Room kept in a dead letter for its key and reason headers.
LETTER_OVERHEAD_BYTES = 16 * 1024
#: The longest pause between two attempts to write a dead letter the producer refused.
LETTER_RETRY_MAX_S = 30.0


async def reject(
    event: EventT,
    exc: Exception,
    *,
    stage: str,
    value: bytes | None = None,
    key: bytes | None = None,
    to: TopicT = dead_letters,
    tenant: str = "",
    origin: tuple[str, int, int] | None = None,
) -> Awaitable[RecordMetadata]:
    """Send the message (or `value`/`key`: one record cut out of an envelope) to `to` with why,
    where from (`origin`: a record's own, when the message carried several sources' records)
    and whose (`tenant`, when the record says); counted by topic and error class. Returns the
    letter's delivery (awaited: acknowledged by the broker).

    A value too large for a record keeps its head (the reason says so). A letter the producer
    refuses (the broker is gone) is tried again until it is taken: the partition waits rather
    than lose the event.
    """
    message = event.message
    key = message.key if key is None else key
    value = message.value if value is None else value
    topic, partition, offset = origin or origin_of(event)
    letter = DeadLetter.of(
        exc, stage=stage, topic=topic, partition=partition, offset=offset, tenant=tenant
    )
    room = MAX_RECORD_BYTES - LETTER_OVERHEAD_BYTES - len(key or b"")
    if value is not None and len(value) > room:
        letter = letter.noted(f"the first {room:,} of {len(value):,} bytes are kept here")
        value = value[:room]
    DEAD_LETTERS_SENT.labels(to.get_topic_name(), letter.rule).inc()
    set_aside = stage in ("late", "stale")  # counted as what they are, not as wrong input
    EVENTS.labels(topic, stage if set_aside else "rejected").inc()
    if not set_aside:
        rejections.note(topic, letter.rule, f"{letter.origin}: {letter.reason[:200]}")
    kept = producer_headers(message.headers)
    delay = 0.5
    while True:
        try:
            return await to.send(key=key, value=value, headers=kept + letter.headers())
        except ProducerSendError as error:
            if isinstance(error.__cause__, MessageSizeTooLargeError) and value:
                letter = letter.noted(
                    f"its {len(value):,} bytes were too large to keep: read it at its origin"
                )
                value = b""
                continue
            logger.error(
                "cannot write a dead letter to %s (%s); trying again in %.0f s",
                to.get_topic_name(),
                error,
                delay,
            )
            await app.sleep(delay)
            delay = min(delay * 2, LETTER_RETRY_MAX_S)


def by_partition(events: Sequence[EventT]) -> dict[TP, list[EventT]]:
    """The events of a batch grouped by topic and partition (a pipeline reads its source and
    what was forwarded to it), in arrival order."""
    groups: dict[TP, list[EventT]] = defaultdict(list)
    for event in events:
        groups[TP(event.message.topic, event.message.partition)].append(event)
    return groups


def writing_for(event: EventT) -> AbstractContextManager[None]:
    """Table reads and writes inside go to `event`'s partition, as Faust's routing expects."""
    return current_event(event)


#: (topic, reader) → the highest offset of each assigned partition the reader (an agent's
#: work, `reader_of`) processed (or dead-lettered) here. Agents of two pipelines may read one
#: topic (sales and merchants read purchases): each keeps its own progress, holes and
#: in-flight records.
_processed: dict[tuple[str, str], PartitionStates[int]] = {}


def reader_of(work: PartitionWork) -> str:
    """The name an agent's work is known by in the bookkeeping of what it processed."""
    return f"{work.__module__}.{work.__qualname__}"


def processed_offsets(topic: str, reader: str) -> PartitionStates[int]:
    """The highest offset of each assigned partition of `topic` processed here by `reader`."""
    states = _processed.get((topic, reader))
    if states is None:
        states = _processed[(topic, reader)] = PartitionStates(topic)
    return states


def slowest_processed(topic: str, partition: int) -> int | None:
    """The highest offset of the partition processed by every reader of `topic` here (None:
    none has processed any)."""
    done = [
        offset
        for (name, _), states in _processed.items()
        if name == topic and (offset := states.get(partition)) is not None
    ]
    return min(done) if done else None


def unread_keys(tp: TP) -> list[Hashable]:
    """The keys of `tp`'s hole bookkeeping (`unread`), one per reader of its topic here."""
    return [(tp.topic, tp.partition, reader) for topic, reader in _processed if topic == tp.topic]


def track(tp: TP, work: PartitionWork) -> str:
    """The name a reader's in-flight records of a topic go by."""
    return f"{tp.topic}~{reader_of(work)}"


def caught_up(
    topic: TopicT, partition: int, stored_offset: int | None, reader: PartitionWork
) -> bool | None:
    """Whether `partition` of `topic` holds nothing after the last processed message: the
    partition is idle, and its event clock may follow the wall clock. The last processed
    message is the one this worker processed last, else `stored_offset` (kept with the
    pipeline's state). None while unknown, and while the partition is paused (a rebalance):
    its client high watermark is as old as its last fetch, and an event clock running ahead
    meanwhile would make what waits unfetched late. False while its stream's buffer is full
    (Faust stops fetching it then: messages wait). Processed: by `reader` (an agent's work)."""
    tp = TP(topic.get_topic_name(), partition)
    if stream_buffer_full(app.consumer, tp):
        return False
    if not fetching(app.consumer, tp):
        return None
    offset = processed_offsets(tp.topic, reader_of(reader)).get(partition)
    offset = stored_offset if offset is None else offset
    try:
        highwater = app.consumer.highwater(tp)
    except AssertionError:  # aiokafka asserts the partition is (still) assigned
        return None
    if highwater is None:
        return None
    if offset is None and highwater > 0:
        # Nothing processed here yet: idle only if reading starts at the end (a replay
        # positioned after the partition's last message); else what waits is a backlog.
        start = committed_offset(app.consumer, tp)
        return start is not None and start >= highwater
    return highwater <= (-1 if offset is None else offset) + 1


BATCH_SIZE = 2000
BATCH_WITHIN_S = 0.1

PartitionWork = Callable[[Sequence[EventT]], Awaitable[None]]
States = Sequence[PartitionStates[Any]]

#: Offsets in flight per source partition, on disk (tally.core.quarantine).
in_flight = InFlightRecords(settings.data_dir / IN_FLIGHT_DIR)


class ProcessingError(TallyError):
    """Carries an unexpected failure of a pipeline on an event into its dead letters."""

    rule = "processing_failed"


class Quarantined(TallyError):
    """An event in flight each time the worker died, twice: set aside without processing."""

    rule = "quarantined"


async def each_partition(
    stream: StreamT,
    work: PartitionWork,
    *states: PartitionStates[Any],
    within: float = BATCH_WITHIN_S,
    size: int = BATCH_SIZE,
    ahead: Callable[[Sequence[EventT]], None] | None = None,
) -> None:
    """The body of every pipeline agent: batches from `stream` (up to `size` events, or what
    came `within` seconds; at most a quarter of what the topic buffers ahead when it bounds
    that, as a handover topic does: each of its messages carries a whole batch of the stage
    before, so 2,000 of them would be millions of records decoded at once), each partition's
    share given to `work` on its own (`apply_in_order`); `ahead` is given each whole batch
    first (runtime.offload). If `work` raises, the partition's `states` are dropped (rebuilt
    from storage on next use) and the share is processed again one event at a time: only
    events that fail alone are dead-lettered, and the agent goes on. Whether the agent works
    or waits goes to `readers` (the stall watch tells a dropped tail by it)."""
    reader = reader_of(work)
    channel = stream.channel
    topics = channel.topics if isinstance(channel, TopicT) else ()
    if isinstance(channel, TopicT) and channel.maxsize:
        size = min(size, max(1, channel.maxsize // 4))
    reading = readers.reads(topics, within, time.monotonic())
    try:
        async for batch in cast(Stream, stream).take_events(size, within=within):
            reading.took()
            try:
                if ahead is not None:
                    try:
                        ahead(batch)
                    except Exception:  # it only saves the work time: `work` does it all
                        logger.exception("preparing a batch of %s ahead failed", channel)
                for tp, delivered in by_partition(batch).items():
                    await apply_in_order(tp, delivered, work, states, reader)
            finally:
                reading.waits(time.monotonic())
    finally:
        readers.gone(reading)


async def apply_in_order(
    tp: TP, delivered: list[EventT], work: PartitionWork, states: States, reader: str
) -> None:
    """One partition's share of a batch: each origin once (`one_per_origin`), in offset order,
    up to any offset not delivered (`without_holes`; the rest held back unacked), then
    `reader`'s progress recorded."""
    unique = one_per_origin(delivered, source_of)
    if len(unique) < len(delivered):
        EVENTS.labels(tp.topic, "duplicate").inc(len(delivered) - len(unique))
        logger.info(
            "%s[%s]: %d extra copies of messages in one batch, each processed once",
            tp.topic,
            tp.partition,
            len(delivered) - len(unique),
        )
    events = await without_holes(tp, unique, reader)
    if len(events) < len(unique):  # held back from the hole on: every copy (a twin, a
        # message forwarded twice) stays unacked, or Faust's commit could pass the hole (it
        # folds its gaps below the highest ack into the acks)
        hole = unique[len(events)].message.offset
        for event in delivered:
            if event.message.offset >= hole:
                leave_unacked(event.message)
    if not events:
        return
    last = events[-1].message
    await process_share(tp, events, work, states)
    await batch_done()
    if tp in app.assignor.assigned_actives():  # not revoked while `work` ran
        done = processed_offsets(tp.topic, reader)
        done[tp.partition] = max(last.offset, done.get(tp.partition) or -1)


#: What each agent does and how long it gathers a batch (it holds messages that long on
#: purpose), for the stall watch (core.stalls.Readers).
readers = Readers()

#: Holes in what a partition delivered (core.applied.Unread).
unread = Unread()


def note_passed_gaps(tp: TP, expected: int | None, applied: list[int]) -> None:
    """Say when offsets were passed as absent from the log (transaction markers, compaction,
    a hole given up): on a topic without them this never logs, and when a partition comes up
    short, the log tells whether something was passed."""
    if expected is None:
        return
    new = [offset for offset in applied if offset >= expected]
    passed = (new[-1] - expected + 1 - len(new)) if new else 0
    if passed > 0:
        logger.info(
            "%s[%s]: %d offsets from %s to %s passed as absent from the log",
            tp.topic,
            tp.partition,
            passed,
            expected,
            new[-1],
        )


async def without_holes(tp: TP, events: list[EventT], reader: str) -> list[EventT]:
    """The events of a batch of `tp` (in offset order) up to the first offset not delivered
    to `reader` (core.applied.Unread): the rest are not applied (nor acked, by the caller),
    and the partition is read again from the hole."""
    key = (tp.topic, tp.partition, reader)
    done = processed_offsets(tp.topic, reader).get(tp.partition)
    settled = committed_offset(app.consumer, tp)
    after_done = None if done is None else done + 1
    known = [offset for offset in (after_done, settled) if offset is not None]
    fetched = (tp.topic, tp.partition)
    # Nothing processed or committed (Faust knows a commit at 0 as none): reading began at
    # the first offset the client fetched, which Faust may have dropped too.
    expected = max(known) if known else log_gaps.first(fetched)
    offsets = [event.message.offset for event in events]
    applicable, hole = unread.applicable(
        key, expected, offsets, time.monotonic(), log_gaps.lacks(fetched), log_gaps.holds(fetched)
    )
    note_passed_gaps(tp, expected, offsets[:applicable])
    if hole is not None and hole.given_up:
        assert hole.until is not None
        accept_missing(app.consumer, tp, hole.start, hole.until)
        logger.error(
            "%s[%s]: offsets from %s up to %s (excluded) were never delivered after %s "
            "rereads; going on without them",
            tp.topic,
            tp.partition,
            hole.start,
            hole.until,
            unread.tries,
        )
    elif hole is not None and hole.reread:
        # Faust's gap runs through the first offset delivered after the jump: that one too
        refuse_missing(app.consumer, tp, hole.start, offsets[applicable] + 1)
        logger.warning(
            "%s[%s]: offset %s was not delivered, %s after it were (dropped around a "
            "rebalance); reading the partition again from %s",
            tp.topic,
            tp.partition,
            hole.start,
            len(events) - applicable,
            hole.start,
        )
        await read_again(app.consumer, tp, hole.start)
    return events[:applicable]


def forget(states: States, partition: int) -> None:
    for kind in states:
        kind.forget(partition)


async def process_share(
    tp: TP, events: Sequence[EventT], work: PartitionWork, states: States
) -> None:
    """One partition's share of a batch; events that a dead process had in flight go one at a
    time (the one it died on alone is quarantined)."""
    left = in_flight.left_behind(track(tp, work), tp.partition, events[0].message.offset)
    suspects = [] if left is None else [e for e in events if left.holds(e.message.offset)]
    if left is None or not suspects:
        await in_batch(tp, events, work, states)
        return
    logger.warning(
        "%s[%s]: the worker stopped with offsets %s-%s in flight; processing them one at a time",
        tp.topic,
        tp.partition,
        left.first,
        left.last,
    )
    before = [e for e in events if e.message.offset < left.first]
    after = [e for e in events if e.message.offset > left.last]
    if before:
        await in_batch(tp, before, work, states)
    await one_at_a_time(tp, suspects, work, states, left)
    if after:
        await in_batch(tp, after, work, states)


async def in_batch(tp: TP, events: Sequence[EventT], work: PartitionWork, states: States) -> None:
    first, last = events[0].message.offset, events[-1].message.offset
    in_flight.record(track(tp, work), tp.partition, InFlight(first, last))
    crash_if_injected(events)
    try:
        await work(events)
    except Exception as exc:  # one bad event must not stop the worker
        logger.exception(
            "%s[%s]: processing offsets %s-%s failed; trying them one at a time",
            tp.topic,
            tp.partition,
            first,
            last,
            exc_info=exc,
        )
        forget(states, tp.partition)
        if len(events) == 1:
            await reject(events[0], failure(exc), stage="process")
        else:
            await one_at_a_time(tp, events, work, states, None)


#: One event alone in flight in the whole worker at a time: a death is then charged to it,
#: never to the event another agent had alone in flight at the same moment.
alone_in_flight = asyncio.Lock()


async def one_at_a_time(
    tp: TP,
    events: Sequence[EventT],
    work: PartitionWork,
    states: States,
    left: InFlight | None,
) -> None:
    """Each event on its own: one a dead process's record (`left`) quarantines is set aside;
    one that raises is dead-lettered. While an event runs alone its record names it; after a
    death its sends are flushed before it counts as done, so a send that kills the process is
    charged to it."""
    first, last = events[0].message.offset, events[-1].message.offset
    for event in events:
        offset = event.message.offset
        if left is not None and left.quarantines(offset):
            in_flight.set_aside(track(tp, work), tp.partition)
            logger.error("%s[%s]@%s: quarantined to dead letters", tp.topic, tp.partition, offset)
            await reject(
                event,
                Quarantined(
                    f"the worker died {DEATHS_ALONE} times while processing this message alone "
                    f"({left.deaths + 1} deaths with it in flight): set aside unprocessed; fix "
                    "the cause, then `tally dlq replay` sends it again"
                ),
                stage="process",
            )
            continue
        running = (
            InFlight(first, last, single=offset)  # after an exception: no death yet
            if left is None
            else left.alone(offset, first, last)
        )
        async with alone_in_flight:
            in_flight.record(track(tp, work), tp.partition, running)
            crash_if_injected([event])
            try:
                await work([event])
                if left is not None:
                    await app.producer.flush()
            except Exception as exc:
                forget(states, tp.partition)
                logger.warning("%s[%s]@%s failed alone: %r", tp.topic, tp.partition, offset, exc)
                await reject(event, failure(exc), stage="process")
            in_flight.record(track(tp, work), tp.partition, running.done())


def failure(exc: Exception) -> TallyError:
    """What a dead letter says of an event that failed: Tally's own error as it is (its rule
    says what was wrong: too_large, ...), anything else as `processing_failed`."""
    if isinstance(exc, TallyError):
        return exc
    return ProcessingError(f"{type(exc).__name__}: {exc}")


#: Exit code of a worker stopped by TALLY_FAULT_CRASH_ON (what `os._exit` gives a crash).
INJECTED_CRASH_EXIT = 70


def crash_if_injected(events: Sequence[EventT]) -> None:
    """Fault injection (TALLY_FAULT_CRASH_ON, for tests and drills): die at once, as a
    native crash would, when an event's bytes hold the configured marker."""
    marker = settings.fault_crash_on.encode()
    if marker and any(marker in (event.message.value or b"") for event in events):
        first = events[0].message
        logger.critical(
            "TALLY_FAULT_CRASH_ON matched in %s[%s]@%s..: exiting",
            first.topic,
            first.partition,
            first.offset,
        )
        logging.shutdown()
        os._exit(INJECTED_CRASH_EXIT)


async def forget_revoked(sender: object, revoked: set[TP], **kwargs: object) -> None:
    """Every pipeline's in-memory state of the partitions this worker no longer holds goes:
    a partition that comes back starts from its tables and committed offset."""
    PartitionStates.revoked(revoked)
    for tp in revoked:
        for key in unread_keys(tp):
            unread.forget(key)
        log_gaps.forget((tp.topic, tp.partition))


# mode's annotation of a receiver admits no positional argument; Faust sends `revoked` as one.
app.on_partitions_revoked.connect(forget_revoked)  # type: ignore[arg-type]


#: Records a partition's work takes between two yields to the event loop: a batch of
#: handed-over messages may hold thousands of records, and queries wait while it runs. At 64
#: a step of the co-view stage took ~10 ms and a recommendation query's p99 under load was
#: 18-23 ms; at 16 (and flushes yielding between partitions) 8-11 ms, views/s the same
#: (docs/performance.md#recommendations).
RECORDS_PER_STEP = 16


async def let_others_run(done: int) -> None:
    """Yield to the event loop after every RECORDS_PER_STEP records (`done`: so far)."""
    if done % RECORDS_PER_STEP == 0:
        await asyncio.sleep(0)


Timer = Callable[[], Awaitable[None]]


def timer(interval: Seconds, **options: Any) -> Callable[[Timer], Timer]:
    """`app.timer` whose errors are logged and counted, not fatal: in Faust an exception in
    a timer stops the worker, and the next start would meet the same state and stop again."""

    def decorate(fun: Timer) -> Timer:
        @functools.wraps(fun)
        async def survives() -> None:
            try:
                await fun()
            except Exception:
                TASK_FAILURES.labels(fun.__name__).inc()
                logger.exception("timer %s failed; it runs again in %s s", fun.__name__, interval)

        app.timer(interval, **options)(survives)
        return survives

    return decorate


@timer(interval=app.conf.broker_commit_interval)
async def flush_quiet_cells() -> None:
    """Cells no commit wrote out within two commit intervals (runtime.cells.flush_if_quiet)."""
    if app.ready:
        await flush_if_quiet()


@timer(interval=1.0)
async def log_rejections() -> None:
    """One log line per interval for all dead letters, not one per letter."""
    if rejections.due():
        logger.warning("dead letters: %s", rejections.take(), extra={SUMMARY: True})
