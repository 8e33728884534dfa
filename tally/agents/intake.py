"""What every pipeline does with a batch of raw events before its own logic.

Decoding: whatever does not decode or validate becomes a dead letter. Partitions: a batch from
`take_events` mixes partitions, while Faust routes table writes by the *current event*'s
partition; `by_partition` + `writing_for` keep each write in its own partition.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from faust import streams as faust_streams
from faust.types import EventT, TopicT

from tally.codecs.avro import AvroCodec, Record
from tally.deadletters import DeadLetter
from tally.errors import DecodeError, SchemaError, ValidationError
from tally.topics import dead_letters

logger = logging.getLogger(__name__)

#: Rejections since start, by (destination topic, error class).
rejected: Counter[tuple[str, str]] = Counter()


async def decode_events(events: Sequence[EventT], codec: AvroCodec) -> list[Record]:
    """The records of `events` that decode and validate; the others go to dead-letters."""
    records: list[Record] = []
    for event in events:
        try:
            records.append(codec.loads(event.value))
        except ValidationError as exc:
            await reject(event, exc, stage="validate")
        except (DecodeError, SchemaError) as exc:
            await reject(event, exc, stage="decode")
    return records


async def reject(
    event: EventT,
    exc: Exception,
    *,
    stage: str,
    value: bytes | None = None,
    to: TopicT = dead_letters,
) -> None:
    """Send the message (or `value`, one record cut out of an envelope) to `to` with why and
    where from; counted by topic and error class."""
    message = event.message
    letter = DeadLetter.of(
        exc, stage=stage, topic=message.topic, partition=message.partition, offset=message.offset
    )
    rejected[(to.get_topic_name(), letter.error)] += 1
    if stage != "late":
        logger.warning(
            "dead letter from %s[%s]@%s: %s", message.topic, message.partition, message.offset, exc
        )
    await to.send(
        key=message.key,
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
