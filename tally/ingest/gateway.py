"""The ingest gateway: checked rows into Kafka, answered only once the broker has them.

One gateway serves both homes of the write path: the worker's web server and the stateless
`tally ingest` process. It owns a plain aiokafka producer (not Faust's, whose send timeout is
twenty minutes): every accepted row and every dead letter of a request must be acknowledged
within TALLY_INGEST_ACK_TIMEOUT_SECONDS, or the whole request is answered 503 and the client
retries. A request is therefore at-least-once: a retry after a 503 may repeat rows that were
acknowledged just before the failure. Dead letters are sent only after every accepted row is
acknowledged, so a 503 leaves none unless all of the request's rows got through first.

The cost of one request is bounded: at most TALLY_INGEST_MAX_ROWS rows, checked and encoded
in a worker thread (the event loop keeps answering meanwhile), CHECK_SLOTS requests at a time
(about one per core); at most BODY_SLOTS requests hold a body in memory, and at most
BODY_QUEUE wait for one of those slots (others get a 503 at once). While the broker takes no
connections (`BrokerWatch`), requests get a 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from mode import Service

from tally.access.tokens import OPERATOR
from tally.broker.admin import ensure_topics, track_topics
from tally.broker.watch import BrokerWatch
from tally.codecs.avro import (
    AvroCodec,
    Record,
    check_event_time,
    load_schema,
    validate_metric_batch,
    validate_metric_sample,
    validate_purchase,
)
from tally.codecs.registry import Schema
from tally.core.clock import now_ms
from tally.core.deadletters import DeadLetter
from tally.core.errors import TallyError, ValidationError
from tally.core.limits import MESSAGE_MAX_BYTES, bounded_chunks, shown
from tally.core.partitioning import partition_for
from tally.ingest.rows import Row, RowShape, split_rows
from tally.settings import Settings
from tally.telemetry import DEAD_LETTERS_SENT, INGEST_ROWS
from tally.topics import DEAD_LETTERS, METRIC_SAMPLES, PURCHASES

logger = logging.getLogger(__name__)

#: Rows and bytes per Kafka message: below Kafka's default 1 MB message limit.
PURCHASES_PER_ENVELOPE = 1_000
SAMPLES_PER_BATCH = 5_000
#: After a failed connection, requests get a 503 at once for this long.
START_COOL_DOWN_S = 2.0
#: A rejected row's letter keeps at most this many bytes (a row is at most this long).
DEAD_LETTER_MAX_BYTES = 256 * 1024
#: A body refused whole (unreadable, too large) is dead-lettered with its first bytes only,
#: enough to see what it was (the reason says it was cut): a stream of refused bodies must
#: not fill the dead-letters topic with their bulk.
REFUSED_HEAD_BYTES = 16 * 1024
#: Requests whose rows are checked at once: the work is CPU, about one per core.
CHECK_SLOTS = 2
#: Requests that hold a body (up to TALLY_INGEST_MAX_BYTES each) at once, and requests that
#: may wait for one of those slots; more get a 503 at once.
BODY_SLOTS = 8
BODY_QUEUE = 64


class BrokerUnavailable(TallyError):
    """The broker did not acknowledge in time (answered 503: nothing of the request is
    promised, retry it)."""

    rule = "broker_unavailable"


class Busy(TallyError):
    """Too many requests are waiting for their turn (answered 503: retry in a moment)."""

    rule = "busy"


class Admission:
    """At most `slots` holders at a time, at most `queue` waiting; `Busy` beyond that."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.queue = queue
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.slots.locked() and self.waiting >= self.queue:
            raise Busy(f"{self.waiting} requests are waiting for their turn; retry in a moment")
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.slots.release()


@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Rejection:
    index: int
    rule: str
    reason: str


@dataclass
class IngestResult:
    """What a 202 says: counts, and every rejected row with its index and reason."""

    request_id: str
    endpoint: str
    accepted: int
    rejections: list[Rejection]
    messages: int

    def body(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "accepted": self.accepted,
            "rejected": len(self.rejections),
            "rejections": [
                {"index": r.index, "rule": r.rule, "reason": r.reason} for r in self.rejections
            ],
            "messages": self.messages,
        }


@dataclass(frozen=True)
class Checked:
    """A request's rows, judged: the messages of its accepted rows and its dead letters."""

    accepted: int
    messages: list[Message]
    letters: list[Message]
    rejections: list[Rejection]


@dataclass(frozen=True)
class Accepted:
    """An accepted row: its record, and its JSON size (an upper bound of its Avro size)."""

    record: Record
    size: int


Encode = Callable[[list[Accepted], int], list[Message]]


@dataclass(frozen=True)
class Endpoint:
    """One ingest endpoint: the row it takes and the Kafka messages accepted rows become."""

    name: str
    topic: str
    shape: RowShape
    #: Accepted rows, and the wall clock, to messages.
    encode: Encode


def time_rule(settings: Settings, field_name: str) -> Callable[[Record, int], None]:
    """The ingest bound on a row's event time: TALLY_MAX_FUTURE_SECONDS ahead of now, and
    TALLY_INGEST_MAX_AGE_HOURS behind."""
    max_future_ms = int(settings.max_future_seconds * 1000)
    max_age_ms = int(settings.ingest_max_age_hours * 3_600_000)

    def rule(record: Record, wall_ms: int) -> None:
        check_event_time(field_name, record[field_name], wall_ms, max_future_ms, max_age_ms)

    return rule


def purchase_rules(settings: Settings) -> Callable[[Record, int], None]:
    in_time = time_rule(settings, "event_time_ms")

    def rules(record: Record, wall_ms: int) -> None:
        validate_purchase(record)
        in_time(record, wall_ms)

    return rules


def sample_rules(settings: Settings) -> Callable[[Record, int], None]:
    in_time = time_rule(settings, "ts_ms")

    def rules(record: Record, wall_ms: int) -> None:
        validate_metric_batch(record)
        validate_metric_sample(record)
        in_time(record, wall_ms)

    return rules


@cache
def sample_row_schema() -> Schema:
    """A metrics row is one sample with its server and tenant: `MetricBatch.server_id` and
    `.tenant` + `MetricSample`."""
    batch = {f["name"]: f for f in load_schema("metric_batch")["fields"]}
    return {
        "type": "record",
        "name": "MetricSampleRow",
        "namespace": "tally.ingest",
        "doc": "One sample of one server: a row of POST /api/ingest/metrics.",
        "fields": [
            batch["server_id"],
            *batch["samples"]["type"]["items"]["fields"],
            batch["tenant"],
        ],
    }


#: A metrics row's fields that its batch holds once for all its samples.
BATCH_FIELDS = frozenset({"server_id", "tenant"})


def chunks(rows: Sequence[Accepted], max_rows: int) -> list[list[Record]]:
    """Rows cut into messages of at most `max_rows` rows and MESSAGE_MAX_BYTES."""
    parts = bounded_chunks(rows, lambda row: row.size, max_rows, MESSAGE_MAX_BYTES)
    return [[row.record for row in part] for part in parts]


def by_key(rows: Sequence[Accepted], *field_names: str) -> dict[tuple[str, ...], list[Accepted]]:
    groups: dict[tuple[str, ...], list[Accepted]] = defaultdict(list)
    for row in rows:
        groups[tuple(str(row.record[name]) for name in field_names)].append(row)
    return groups


def endpoints(
    settings: Settings,
    purchase_batch_codec: Callable[[], AvroCodec],
    metric_batch_codec: Callable[[], AvroCodec],
) -> dict[str, Endpoint]:
    """The ingest endpoints by name. Purchases go as `PurchaseBatch` envelopes, one per
    partition (the agents' fast path); samples as one `MetricBatch` per server, as agents send."""
    partitions = settings.partitions

    def purchase_envelopes(rows: list[Accepted], wall_ms: int) -> list[Message]:
        codec = purchase_batch_codec()
        by_partition: dict[int, list[Accepted]] = defaultdict(list)
        for (item,), group in by_key(rows, "item_id").items():
            by_partition[partition_for(item, partitions)].extend(group)
        return [
            Message(PURCHASES, None, codec.dumps({"purchases": part}), partition)
            for partition, group in sorted(by_partition.items())
            for part in chunks(group, PURCHASES_PER_ENVELOPE)
        ]

    def metric_batches(rows: list[Accepted], wall_ms: int) -> list[Message]:
        codec = metric_batch_codec()
        return [
            Message(
                METRIC_SAMPLES,
                server.encode(),
                codec.dumps(
                    {
                        "server_id": server,
                        "sent_at_ms": wall_ms,
                        "tenant": tenant,
                        "samples": [
                            {k: v for k, v in record.items() if k not in BATCH_FIELDS}
                            for record in part
                        ],
                    }
                ),
                partition_for(server, partitions),
            )
            for (tenant, server), group in by_key(rows, "tenant", "server_id").items()
            for part in chunks(group, SAMPLES_PER_BATCH)
        ]

    return {
        "purchases": Endpoint(
            "purchases",
            PURCHASES,
            RowShape(load_schema("purchase"), purchase_rules(settings)),
            purchase_envelopes,
        ),
        "metrics": Endpoint(
            "metrics",
            METRIC_SAMPLES,
            RowShape(sample_row_schema(), sample_rules(settings)),
            metric_batches,
        ),
    }


def tenant_stamp(sender: str, default: str) -> Callable[[Record], None]:
    """How a row gets its tenant: the sender's own; a row naming another tenant is refused
    (`tenant_mismatch`). An operator (tenant `*`) may name any tenant; a row naming none is
    the default tenant's."""

    def stamp(record: Record) -> None:
        named = record["tenant"]
        if sender == OPERATOR:
            record["tenant"] = named or default
        elif named in ("", sender):
            record["tenant"] = sender
        else:
            raise ValidationError(
                f"the row names tenant {shown(named)}, but the token is tenant {sender!r}'s: "
                "rows can only be sent for the token's own tenant",
                "tenant_mismatch",
            )

    return stamp


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def origin(endpoint: Endpoint, request_id: str) -> str:
    """A dead letter's origin when it came over HTTP: the endpoint and the request's id."""
    return f"POST /api/ingest/{endpoint.name} {request_id}"


class IngestGateway(Service):
    """Rows to Kafka for the ingest endpoints; starts its producer on first use, so a
    gateway outlives a broker that is down (each request then gets a 503)."""

    def __init__(
        self,
        settings: Settings,
        endpoints: dict[str, Endpoint],
        watch: BrokerWatch,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.endpoints = endpoints
        #: Whether the broker takes connections (started and stopped by its owner).
        self.watch = watch
        #: Requests holding a body (http.exchange takes a slot before reading one).
        self.admission = Admission(BODY_SLOTS, BODY_QUEUE)
        self._checking = asyncio.Semaphore(CHECK_SLOTS)
        self.ack_timeout_s = settings.ingest_ack_timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._failed_at = -START_COOL_DOWN_S
        self._failure = ""

    async def on_stop(self) -> None:
        async with self._starting:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None

    async def producer(self) -> AIOKafkaProducer:
        """The started producer; topics exist. `BrokerUnavailable` when the broker is not up
        (for a few seconds after a failed start, at once: requests do not queue behind
        connection attempts)."""
        if self._producer is not None:
            return self._producer
        if time.monotonic() - self._failed_at < START_COOL_DOWN_S:
            raise BrokerUnavailable(self._failure)
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.bootstrap_servers,
                    acks="all",
                    # The local broker lacks InitProducerId; Kafka has it, and with it a
                    # producer retry cannot write a row twice.
                    enable_idempotence=not self.settings.uses_local_broker,
                    linger_ms=5,
                    request_timeout_ms=int(self.ack_timeout_s * 1000),
                )
                try:
                    await asyncio.wait_for(self._connect(producer), self.ack_timeout_s)
                except (KafkaError, OSError, TimeoutError) as exc:
                    await producer.stop()
                    self._failed_at = time.monotonic()
                    self._failure = f"the broker is unreachable: {str(exc) or type(exc).__name__}"
                    raise BrokerUnavailable(self._failure) from exc
                self._producer = producer
            return self._producer

    async def _connect(self, producer: AIOKafkaProducer) -> None:
        topics = sorted({e.topic for e in self.endpoints.values()} | {DEAD_LETTERS})
        await ensure_topics(
            self.settings.bootstrap_servers,
            topics,
            partitions=self.settings.partitions,
            replication=self.settings.replication,
        )
        await producer.start()
        await track_topics(producer, topics)

    def check(
        self, endpoint: Endpoint, body: bytes, request_id: str, ndjson: bool, tenant: str
    ) -> Checked:
        """Every row judged (stamped with the sender's `tenant` first), accepted rows encoded
        into messages, rejected ones into dead letters: CPU work, run in a thread.
        `UnreadableBody` (400) and `BodyTooLarge` (413, more rows than
        TALLY_INGEST_MAX_ROWS) propagate, for the caller to `refuse`."""
        request = origin(endpoint, request_id)
        rows = split_rows(body, ndjson, self.settings.ingest_max_rows)
        wall_ms = now_ms()
        accepted: list[Accepted] = []
        rejected: list[tuple[Row, ValidationError]] = []
        stamp = tenant_stamp(tenant, self.settings.default_tenant)
        for row in rows:
            try:
                accepted.append(Accepted(endpoint.shape.check(row, wall_ms, stamp), len(row.raw)))
            except ValidationError as exc:
                rejected.append((row, exc))
        return Checked(
            accepted=len(accepted),
            messages=endpoint.encode(accepted, wall_ms) if accepted else [],
            letters=[
                letter_message(
                    row.raw, exc, stage="validate", request=request, row=row.index, sender=tenant
                )
                for row, exc in rejected
            ],
            rejections=[Rejection(row.index, exc.rule, str(exc)) for row, exc in rejected],
        )

    async def submit(
        self,
        endpoint: Endpoint,
        body: bytes,
        request_id: str,
        ndjson: bool = False,
        tenant: str = OPERATOR,
    ) -> IngestResult:
        """Check every row (in a thread) as sent by `tenant` (an operator's rows keep the
        tenant they name), send the accepted rows, then the dead letters, waiting for every
        ack. `UnreadableBody`, `BodyTooLarge` and `BrokerUnavailable` propagate."""
        self.fail_fast()
        async with self._checking:
            checked = await asyncio.to_thread(
                self.check, endpoint, body, request_id, ndjson, tenant
            )
        await self.deliver(checked.messages)
        await self.deliver(checked.letters)
        INGEST_ROWS.labels(endpoint.name, "accepted").inc(checked.accepted)
        INGEST_ROWS.labels(endpoint.name, "rejected").inc(len(checked.rejections))
        for rejection in checked.rejections:
            DEAD_LETTERS_SENT.labels(DEAD_LETTERS, rejection.rule).inc()
        return IngestResult(
            request_id=request_id,
            endpoint=endpoint.name,
            accepted=checked.accepted,
            rejections=checked.rejections,
            messages=len(checked.messages),
        )

    def fail_fast(self) -> None:
        """`BrokerUnavailable` at once while the broker takes no connections."""
        if not self.watch.reachable:
            raise BrokerUnavailable(
                f"{self.watch.reason}; nothing of this request is kept: retry it later"
            )

    async def refuse(
        self,
        endpoint: Endpoint,
        body: bytes,
        exc: TallyError,
        request_id: str,
        size: int,
        tenant: str = OPERATOR,
    ) -> None:
        """Dead-letter a body refused as a whole (unreadable, too large): its first bytes."""
        kept = body[:REFUSED_HEAD_BYTES]
        note = (
            f"the first {len(kept):,} of {size:,} bytes are kept here" if len(kept) < size else ""
        )
        request = origin(endpoint, request_id)
        letter = letter_message(
            kept, exc, stage="decode", request=request, note=note, sender=tenant
        )
        await self.deliver([letter])
        DEAD_LETTERS_SENT.labels(DEAD_LETTERS, exc.rule).inc()

    async def deliver(self, messages: list[Message]) -> None:
        """Send and wait until the broker acknowledged every message; `BrokerUnavailable` if
        that takes longer than the ack timeout, the broker refuses, or the broker goes away
        meanwhile."""
        if not messages:
            return
        self.fail_fast()
        started = time.monotonic()
        producer = await self.producer()
        remaining = max(self.ack_timeout_s - (time.monotonic() - started), 0.1)
        sending = asyncio.ensure_future(self._send_all(producer, messages))
        gone = asyncio.ensure_future(self.watch.gone.wait())
        try:
            await asyncio.wait({sending, gone}, timeout=remaining, return_when="FIRST_COMPLETED")
        finally:
            gone.cancel()
        if not sending.done():
            sending.cancel()
            why = (
                self.watch.reason
                or f"the broker did not acknowledge within {self.ack_timeout_s:g} s"
            )
            logger.warning("ingest: %d messages not acknowledged: %s", len(messages), why)
            raise BrokerUnavailable(f"{why}; nothing of this request is promised: retry it")
        try:
            sending.result()
        except KafkaError as exc:
            logger.warning("ingest: %d messages not acknowledged: %r", len(messages), exc)
            raise BrokerUnavailable(
                f"the broker refused the request's messages ({type(exc).__name__}); nothing "
                "of this request is promised: retry it"
            ) from exc

    @staticmethod
    async def _send_all(producer: AIOKafkaProducer, messages: list[Message]) -> None:
        acks = [
            await producer.send(
                m.topic, m.value, key=m.key, partition=m.partition, headers=m.headers or None
            )
            for m in messages
        ]
        await asyncio.gather(*acks)


def letter_message(
    value: bytes,
    exc: TallyError,
    *,
    stage: str,
    request: str,
    sender: str,
    row: int = -1,
    note: str = "",
) -> Message:
    """A dead letter of a rejected row or body: the `sender`'s tenant's to see (an operator's
    rows: an operator's)."""
    whose = "" if sender == OPERATOR else sender
    letter = DeadLetter.of(exc, stage=stage, request=request, row=row, tenant=whose)
    letter = letter.noted(note) if note else letter
    return Message(DEAD_LETTERS, None, value[:DEAD_LETTER_MAX_BYTES], None, letter.headers())
