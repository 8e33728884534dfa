"""Reading the dead-letters topic: letters with their reasons, counts by rule, replay.

Readers use a plain aiokafka consumer with no group (nothing is committed, any number of them
can read): `read_letters` reads from the start to the end as it was when called, for
`tally dlq`; `DeadLetterWatch` follows the topic for `/api/dead-letters/stats`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from fastavro import parse_schema, schemaless_reader
from mode import Service

from tally.access.tokens import OPERATOR
from tally.broker.admin import read_topic, topic_partitions
from tally.codecs.avro import HEADER, schema_id_of
from tally.codecs.registry import SchemaRegistry
from tally.core.clock import now_ms
from tally.core.deadletters import DeadLetter, producer_headers
from tally.core.errors import DecodeError
from tally.topics import DEAD_LETTERS

logger = logging.getLogger(__name__)

#: Characters of a payload shown in a listing.
PREVIEW_CHARS = 72
#: The newest letters `/api/dead-letters/stats` shows.
LATEST = 10


@dataclass(frozen=True)
class Letter:
    """One record of the dead-letters topic; `meta` is None when it carries no Tally headers."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    meta: DeadLetter | None
    #: The headers the message came with from its producer: a replay sends them back.
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def id(self) -> str:
        """How `tally dlq show|replay` name a letter: partition:offset."""
        return f"{self.partition}:{self.offset}"

    @property
    def rule(self) -> str:
        return self.meta.rule if self.meta else "unknown"

    @property
    def tenant(self) -> str:
        """Whose data it was; "" when not known (an operator's to see)."""
        return self.meta.tenant if self.meta else ""

    @property
    def origin(self) -> str:
        return self.meta.origin if self.meta else "?"

    @property
    def reason(self) -> str:
        return self.meta.reason if self.meta else "(no tally.dlq.* headers: not written by Tally)"

    def preview(self, width: int = PREVIEW_CHARS) -> str:
        text = describe_payload(self.value)
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 3] + "..."

    def summary(self) -> dict[str, Any]:
        """What a letter is, without its payload: rejected rows may carry secrets, so only
        `tally dlq` (with access to the topic) shows payloads."""
        return {
            "id": self.id,
            "time_ms": self.timestamp_ms,
            "rule": self.rule,
            "stage": self.meta.stage if self.meta else "",
            "origin": self.origin,
            "reason": self.reason,
            "tenant": self.tenant,
        }


def framed_schema_id(value: bytes) -> int | None:
    """The schema id of a Confluent-framed payload, None for anything else."""
    try:
        return schema_id_of(value)
    except DecodeError:
        return None


def describe_payload(value: bytes) -> str:
    """A payload for people: Confluent-framed Avro is named as such, text as text, else hex."""
    schema_id = framed_schema_id(value)
    if schema_id is not None:
        return f"<Avro, schema id {schema_id}, {len(value)} bytes> {value[HEADER.size :].hex()}"
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(value)} bytes> {value.hex()}"


def letter_of(record: Any) -> Letter:
    try:
        meta: DeadLetter | None = DeadLetter.from_headers(record.headers or ())
    except (KeyError, TypeError, ValueError, UnicodeDecodeError):
        meta = None
    return Letter(
        record.partition,
        record.offset,
        record.timestamp,
        record.key,
        record.value or b"",
        meta,
        tuple(producer_headers(record.headers)),
    )


def parse_id(text: str) -> str:
    """A letter id as `Letter.id` spells it; ValueError with the expected form otherwise."""
    partition, sep, offset = text.partition(":")
    if not (sep and partition.isdecimal() and offset.isdecimal()):
        raise ValueError(f"{text!r} is not a letter id; ids look like 2:17 (partition:offset)")
    return f"{int(partition)}:{int(offset)}"


async def read_letters(
    bootstrap_servers: list[str], topic: str = DEAD_LETTERS
) -> AsyncIterator[Letter]:
    """Every letter from the start of the topic to its end as of this call."""
    async for record in read_topic(bootstrap_servers, topic):
        yield letter_of(record)


@dataclass
class LetterCounts:
    """Counts of letters by rule, stage and origin, and the newest few."""

    total: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    by_stage: Counter[str] = field(default_factory=Counter)
    by_origin: Counter[str] = field(default_factory=Counter)
    latest: deque[Letter] = field(default_factory=lambda: deque(maxlen=LATEST))

    def add(self, letter: Letter) -> None:
        self.total += 1
        self.by_rule[letter.rule] += 1
        self.by_stage[letter.meta.stage if letter.meta else "unknown"] += 1
        self.by_origin[origin_kind(letter)] += 1
        self.latest.append(letter)

    def body(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_rule": dict(self.by_rule.most_common()),
            "by_stage": dict(self.by_stage.most_common()),
            "by_origin": dict(self.by_origin.most_common()),
            "latest": [letter.summary() for letter in sorted(self.latest, key=newest_first)],
        }


def newest_first(letter: Letter) -> tuple[int, int, int]:
    return (-letter.timestamp_ms, -letter.partition, -letter.offset)


def origin_kind(letter: Letter) -> str:
    """The origin without the per-message part: a topic, or an ingest endpoint."""
    if letter.meta is None:
        return "unknown"
    if letter.meta.topic:
        return letter.meta.topic
    return letter.meta.request_path or "unknown"


class DeadLetterWatch(Service):
    """Follows dead-letters from the beginning and keeps `LetterCounts` of the whole topic,
    so any worker (or ingest process) answers the stats without asking others."""

    def __init__(
        self, bootstrap_servers: list[str], clock: Callable[[], int] = now_ms, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.bootstrap_servers = bootstrap_servers
        self.clock = clock
        self.counts = LetterCounts()
        #: The same counts per tenant (letters whose payload named one).
        self.by_tenant: dict[str, LetterCounts] = {}
        self.read_at_ms: int | None = None

    @Service.task
    async def _follow(self) -> None:
        while not self.should_stop:
            try:
                await self._follow_once()
            except (KafkaError, OSError) as exc:
                logger.warning("dead-letter watch: %r; retrying in 5 s", exc)
            await self.sleep(5.0)

    async def _follow_once(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            assigned: list[TopicPartition] = []
            while not self.should_stop:
                tps = await topic_partitions(consumer, DEAD_LETTERS)
                if tps != assigned:  # first time, or the topic grew: count it all again
                    self.counts, self.by_tenant = LetterCounts(), {}
                    consumer.assign(tps)
                    if tps:
                        await consumer.seek_to_beginning(*tps)
                    assigned = tps
                if not assigned:
                    await self.sleep(1.0)
                    continue
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        self.add(letter_of(record))
                self.read_at_ms = self.clock()
        finally:
            await consumer.stop()

    def add(self, letter: Letter) -> None:
        self.counts.add(letter)
        if letter.tenant:
            self.by_tenant.setdefault(letter.tenant, LetterCounts()).add(letter)

    def body(self, tenant: str | None = None) -> dict[str, Any]:
        """The counts of `tenant`'s letters (None: of every letter)."""
        counts = self.counts if tenant is None else self.by_tenant.get(tenant, LetterCounts())
        return {
            "topic": DEAD_LETTERS,
            "tenant": tenant or OPERATOR,
            "read_at_ms": self.read_at_ms,
            **counts.body(),
        }


def pretty(value: bytes, registry: SchemaRegistry) -> str:
    """The whole payload for `tally dlq show`: Avro decoded with its registered schema, JSON
    indented, other text as is, else hex."""
    schema_id = framed_schema_id(value)
    if schema_id is not None:
        try:
            schema = parse_schema(registry.schema(schema_id))
            record = schemaless_reader(BytesIO(value[HEADER.size :]), schema, None)
            return f"Avro (schema id {schema_id}):\n" + json.dumps(record, indent=2, default=str)
        except Exception as exc:  # unknown id or bytes that do not decode: show them raw
            return f"Avro that does not decode ({type(exc).__name__}: {exc}):\n" + value.hex()
    try:
        return json.dumps(json.loads(value), indent=2)
    except (ValueError, UnicodeDecodeError):
        return describe_payload(value)


@dataclass(frozen=True)
class LetterFilter:
    """Which letters `tally dlq list|replay` take: every given condition must hold."""

    ids: frozenset[str] = frozenset()
    rule: str | None = None
    stage: str | None = None
    origin: str | None = None  # a substring of the origin
    request: str | None = None  # an ingest request id
    tenant: str | None = None  # whose ("": letters whose payload named no tenant)

    def __call__(self, letter: Letter) -> bool:
        meta = letter.meta
        return (
            (self.tenant is None or letter.tenant == self.tenant)
            and (not self.ids or letter.id in self.ids)
            and (self.rule is None or letter.rule == self.rule)
            and (self.stage is None or (meta is not None and meta.stage == self.stage))
            and (self.origin is None or self.origin in letter.origin)
            and (self.request is None or (meta is not None and meta.request.endswith(self.request)))
        )


def ingest_endpoint_of(letter: Letter) -> str | None:
    """The ingest endpoint an HTTP-origin letter came through ("purchases"), else None."""
    if letter.meta is None or letter.meta.topic or not letter.meta.request:
        return None
    method_path = letter.meta.request_path
    prefix = "POST /api/ingest/"
    return method_path[len(prefix) :] if method_path.startswith(prefix) else None


class NotReplayable(Exception):
    """A letter that cannot go back as it is; the message says why."""


def replay_plan(letter: Letter) -> tuple[str, str]:
    """("topic", name) to re-send a Kafka-origin letter as it was, or ("ingest", endpoint) to
    judge an HTTP-origin row again; `NotReplayable` otherwise."""
    if letter.meta is None:
        raise NotReplayable("it has no tally.dlq.* headers, so its origin is unknown")
    if letter.meta.rule == "body_too_large":
        raise NotReplayable("only the head of a too-large body was kept")
    if letter.meta.topic:
        return "topic", letter.meta.topic
    endpoint = ingest_endpoint_of(letter)
    if endpoint is None:
        raise NotReplayable(f"its origin {letter.origin!r} is neither a topic nor an endpoint")
    return "ingest", endpoint
