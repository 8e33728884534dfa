"""What every pipeline does with a batch of raw events before its own logic.

Decoding: whatever does not decode or validate becomes a dead letter. Partitions: a batch from
`take_events` mixes partitions, while Faust routes table writes by the *current event*'s
partition; `by_partition` + `writing_for` keep each write in its own partition.
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from faust import streams as faust_streams
from faust.types import TP, EventT, StreamT, TopicT

from tally.app import app
from tally.deadletters import DeadLetter
from tally.errors import DecodeError, SchemaError, TallyError, ValidationError
from tally.tables.applied import one_per_offset
from tally.telemetry import DEAD_LETTERS, EVENTS
from tally.topics import dead_letters

logger = logging.getLogger(__name__)

T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")


class Decoder(Protocol[T_co]):
    def loads(self, data: bytes) -> T_co: ...


async def decode(event: EventT, codec: Decoder[R]) -> R | None:
    """The event's decoded value, or None after sending it to dead-letters with the reason."""
    try:
        return codec.loads(event.value)
    except ValidationError as exc:
        await reject(event, exc, stage="validate")
    except (DecodeError, SchemaError) as exc:
        await reject(event, exc, stage="decode")
    return None


async def reject(
    event: EventT,
    exc: Exception,
    *,
    stage: str,
    value: bytes | None = None,
    key: bytes | None = None,
    to: TopicT = dead_letters,
) -> None:
    """Send the message (or `value`/`key`: one record cut out of an envelope) to `to` with why
    and where from; counted by topic and error class."""
    message = event.message
    letter = DeadLetter.of(
        exc, stage=stage, topic=message.topic, partition=message.partition, offset=message.offset
    )
    DEAD_LETTERS.labels(to.get_topic_name(), letter.rule).inc()
    EVENTS.labels(message.topic, "late" if stage == "late" else "rejected").inc()
    if stage != "late":
        logger.warning(
            "dead letter from %s[%s]@%s: %s", message.topic, message.partition, message.offset, exc
        )
    await to.send(
        key=message.key if key is None else key,
        value=message.value if value is None else value,
        headers=letter.headers(),
    )


def by_partition(events: Sequence[EventT]) -> dict[int, list[EventT]]:
    """The events of a batch grouped by source partition, in arrival order."""
    groups: dict[int, list[EventT]] = defaultdict(list)
    for event in events:
        groups[event.message.partition].append(event)
    return groups


@contextmanager
def writing_for(event: EventT) -> Iterator[None]:
    """Table reads and writes inside go to `event`'s partition, as Faust's routing expects.

    Faust reads the partition from a private context variable (faust-streaming 0.15.3, pinned).
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


#: Highest offset of each assigned partition a pipeline processed (or dead-lettered) here.
processed_offsets: dict[TP, int] = {}


def caught_up(topic: TopicT, partition: int, stored_offset: int | None) -> bool | None:
    """Whether `partition` of `topic` holds nothing after the last processed message: the
    partition is idle, and its event clock may follow the wall clock. The last processed
    message is the one this worker processed last, else `stored_offset` (kept with the
    pipeline's state). None while unknown."""
    tp = TP(topic.get_topic_name(), partition)
    offset = processed_offsets.get(tp, stored_offset)
    if offset is None:
        return None
    try:
        highwater = app.consumer.highwater(tp)
    except AssertionError:  # aiokafka asserts the partition is (still) assigned
        return None
    if highwater is None:
        return None
    return highwater <= offset + 1


BATCH_SIZE = 2000
BATCH_WITHIN_S = 0.1

PartitionWork = Callable[[Sequence[EventT]], Awaitable[None]]


async def each_partition(
    stream: StreamT,
    work: PartitionWork,
    state: dict[int, Any],
    within: float = BATCH_WITHIN_S,
    size: int = BATCH_SIZE,
) -> None:
    """The body of every pipeline agent: batches from `stream` (up to `size` events, or what
    came `within` seconds), each partition's share given to `work` on its own, one event per
    offset in offset order (`one_per_offset`); if it fails, that share is dead-lettered and
    `state[partition]` dropped (rebuilt from storage on next use), and the agent goes on."""
    async for batch in stream.take_events(size, within=within):
        for delivered in by_partition(batch).values():
            events = one_per_offset(delivered)
            last = events[-1].message
            tp = TP(last.topic, last.partition)
            if len(events) < len(delivered):
                EVENTS.labels(tp.topic, "duplicate").inc(len(delivered) - len(events))
                logger.info(
                    "%s[%s]: %d extra copies of messages in one batch, each processed once",
                    tp.topic,
                    tp.partition,
                    len(delivered) - len(events),
                )
            try:
                await work(events)
            except Exception as exc:  # one bad batch must not stop the worker
                await failed_batch(events, exc, forget=state)
            if tp in app.assignor.assigned_actives():  # not revoked while `work` ran
                processed_offsets[tp] = max(last.offset, processed_offsets.get(tp, -1))


def forget_when_revoked(topic: TopicT, *states: dict[int, Any]) -> None:
    """Drop this worker's in-memory state of `topic`'s partitions when they leave it."""
    name = topic.get_topic_name()

    async def forget(sender: object, revoked: set[TP], **kwargs: object) -> None:
        for tp in revoked:
            if tp.topic == name:
                for state in states:
                    state.pop(tp.partition, None)

    app.on_partitions_revoked.connect(forget)


@app.on_partitions_revoked.connect
async def forget_processed_offsets(sender: object, revoked: set[TP], **kwargs: object) -> None:
    """A partition that comes back starts from its committed offset, whoever processed it."""
    for tp in revoked:
        processed_offsets.pop(tp, None)


class ProcessingError(TallyError):
    """Carries an unexpected failure of a pipeline on a batch into its dead letters."""

    rule = "processing_failed"


async def failed_batch(events: Sequence[EventT], exc: Exception, forget: dict[int, Any]) -> None:
    """A batch a pipeline could not process: log it, dead-letter every message of it (nothing
    vanishes), and drop the partition's in-memory state so it is rebuilt from storage."""
    logger.exception(
        "processing failed on %s[%s]",
        events[0].message.topic,
        events[0].message.partition,
        exc_info=exc,
    )
    forget.pop(events[0].message.partition, None)
    failure = ProcessingError(f"{type(exc).__name__}: {exc}")
    for event in events:
        await reject(event, failure, stage="process")
