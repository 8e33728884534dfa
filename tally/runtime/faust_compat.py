"""Every use of faust-streaming's and aiokafka's private internals outside the broker shim, in
one place, for the pinned versions only (pyproject.toml). `check_pinned_versions` runs when
the app is built: a worker on other versions stops at once with the reason, rather than
misbehaving the first time one of these is used. (`tally.broker.shim` keeps its own, checked
the same way, because it is loaded by Faust's transport entry point.)
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.metadata import version
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalStateError
from faust import streams as faust_streams
from faust.app.router import Router
from faust.exceptions import SameNode
from faust.models.base import Model
from faust.stores.rocksdb import Store as RocksDBStore
from faust.topics import Topic
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer
from faust.types import TP, CollectionT, EventT, Message, ProducerT
from faust.types.router import RouterT
from faust.utils import json as faust_json
from mode.services import WaitResults
from mode.utils.compat import want_bytes
from mode.utils.times import want_seconds

from tally.core.continuity import ChangelogContinuity
from tally.core.errors import ConfigurationError
from tally.core.loggaps import LogGaps

logger = logging.getLogger(__name__)

#: The versions whose internals this module reaches into.
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}


def check_pinned_versions(installed: Mapping[str, str] | None = None) -> None:
    """`ConfigurationError` naming every package whose installed version is not the pinned
    one, or whose internals this module uses are missing."""
    found = installed if installed is not None else {name: version(name) for name in PINNED}
    wrong = [
        f"{name} {found.get(name)} (needs {want})"
        for name, want in PINNED.items()
        if found.get(name) != want
    ]
    missing = [
        what
        for what, present in (
            ("faust.streams._current_event", hasattr(faust_streams, "_current_event")),
            ("RocksDB Store._db_for_partition", hasattr(RocksDBStore, "_db_for_partition")),
            ("RocksDB Store.offset_key", hasattr(RocksDBStore, "offset_key")),
            ("Store._encode_value", hasattr(RocksDBStore, "_encode_value")),
            ("Store._decode_value", hasattr(RocksDBStore, "_decode_value")),
            *(
                (f"Consumer.{name}", name in FaustConsumer.__annotations__)
                for name in (
                    "_gap",
                    "_acked",
                    "_read_offset",
                    "_paused_partitions",
                    "_buffered_partitions",
                    "_active_partitions",
                )
            ),
            ("ProducerBuffer._send_pending", hasattr(ProducerBuffer, "_send_pending")),
            ("Consumer.suspend_flow", "suspend_flow" in FaustConsumer.__annotations__),
            (
                "AIOKafkaConsumerThread._fetch_records",
                hasattr(AIOKafkaConsumerThread, "_fetch_records"),
            ),
        )
        if not present
    ]
    if wrong or missing:
        raise ConfigurationError(
            "Tally reaches into private internals of pinned versions (tally/runtime/"
            f"faust_compat.py); found: {', '.join(wrong + missing)}. Install the versions "
            "pyproject.toml pins (make test / make run do)."
        )


def keep_skipped_messages_uncommitted() -> None:
    """Faust's stream skips a message fetched in an older generation of the group, or while a
    rebalance has the flow paused, and acks it all the same; a commit during the rebalance
    then moves past it, and the partition resumes after a message no agent processed (seen:
    purchases never forwarded after a worker died, about one failover in six). Here only
    messages a stream took in (`tracked`) reach the committed offsets: a skipped one is read
    again after the rebalance (its neighbours too, which the pipelines' stamps make
    harmless)."""
    if getattr(FaustConsumer.ack, "keeps_skipped_uncommitted", False):
        return
    faust_ack = FaustConsumer.ack

    def ack(self: FaustConsumer, message: Message) -> bool:
        if not message.tracked:
            leave_unacked(message)
            return False
        return faust_ack(self, message)

    ack.keeps_skipped_uncommitted = True  # type: ignore[attr-defined]
    FaustConsumer.ack = ack  # type: ignore[method-assign]


def leave_unacked(message: Message) -> None:
    """Done with for Faust's flow (nothing waits for it), never reaching the committed
    offsets: a message held back unapplied (runtime.intake.without_holes) is read again.
    Faust would ack it with its batch, and then commit past it once the hole before it is
    filled, though the reread that brings it again has not been applied yet."""
    message.acked = True


def accept_missing(consumer: Any, tp: TP, start: int, end: int) -> None:
    """Offsets `start` to `end` (excluded) of `tp` are taken as absent from the log: Faust
    commits past them as past the gaps it saw itself."""
    consumer._gap[tp].addi(start, end)


def refuse_missing(consumer: Any, tp: TP, start: int, end: int) -> None:
    """Offsets `start` to `end` (excluded) of `tp` were dropped, not absent from the log:
    Faust, which took the jump in what it delivered for a gap in the log, must not commit
    past them before they are read again and applied."""
    consumer._gap[tp].chop(start, end)


async def read_again(consumer: Any, tp: TP, offset: int) -> None:
    """Read `tp` again from `offset`: Faust's `Consumer.seek`, with the seek made in the
    consumer's thread (one from the event loop's thread races its fetcher). It also clears
    the stream's read offset: the stream drops every message below the last it took, so a
    seek alone would bring nothing before it again, and a hole could never fill. Cleared,
    not set to `offset` as Faust's seek does: a message fetched before the seek and handed
    over after it would then be a jump from `offset`, which Faust records as a gap in the log
    and commits past (over the held-back messages); with no read offset it records none.
    Such a message does move the read offset past the hole again, and the reread is dropped:
    it is tried again (runtime.intake, the stall watch). A partition revoked meanwhile is not
    read (logged)."""
    try:
        await consumer.seek_wait({tp: offset})
    except (AssertionError, IllegalStateError, TimeoutError) as exc:
        logger.info("%s[%s]: no reread, the partition is gone: %r", tp.topic, tp.partition, exc)
        return
    consumer._read_offset[tp] = None


#: What the consumer fetched, before Faust could drop any of it (core.loggaps).
log_gaps = LogGaps()


def record_fetched_offsets(drop_once: bytes = b"") -> None:
    """Every fetch's offsets of the agents' source topics go to `log_gaps`, in the consumer's
    thread, straight from the Kafka client: the only place that sees what was in the log
    before Faust's own drops. `drop_once` (fault injection, TALLY_FAULT_DROP_FETCHED): a
    fetched message of those topics whose value holds it is dropped there the first time,
    as Faust drops records fetched around a rebalance (the client's position passes it)."""
    if getattr(AIOKafkaConsumerThread._fetch_records, "records_offsets", False):
        return
    faust_fetch = AIOKafkaConsumerThread._fetch_records
    dropped: set[tuple[TP, int]] = set()

    def first_drop(tp: TP, record: Any) -> bool:
        if drop_once not in (record.value or b"") or (tp, record.offset) in dropped:
            return False
        dropped.add((tp, record.offset))
        logger.warning(
            "TALLY_FAULT_DROP_FETCHED matched %s[%s]@%s: dropped once, as Faust drops a "
            "message fetched around a rebalance",
            tp.topic,
            tp.partition,
            record.offset,
        )
        return True

    async def _fetch_records(
        self: AIOKafkaConsumerThread, *args: Any, **kwargs: Any
    ) -> Mapping[TP, list[Any]]:
        records: Mapping[TP, list[Any]] = await faust_fetch(self, *args, **kwargs)
        acked_topics = self.app.topics.acks_enabled_for  # the agents' sources, no changelog
        for tp, fetched in records.items():
            if acked_topics(tp.topic):
                log_gaps.fetched((tp.topic, tp.partition), (record.offset for record in fetched))
        if not drop_once:
            return records
        kept = {
            tp: [r for r in fetched if not (acked_topics(tp.topic) and first_drop(tp, r))]
            for tp, fetched in records.items()
        }
        return {tp: fetched for tp, fetched in kept.items() if fetched}

    _fetch_records.records_offsets = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._fetch_records = _fetch_records  # type: ignore[method-assign]


def honour_topic_maxsize() -> None:
    """Faust's Topic takes `maxsize` (how many messages a stream buffers ahead of its agent)
    and drops it (App.topic does too): its streams buffer stream_buffer_maxsize messages
    whatever the topic says. Keep it on the topic's clones (an agent iterates a clone)."""
    if getattr(Topic.__init__, "keeps_maxsize", False):
        return
    faust_init = Topic.__init__

    def __init__(self: Topic, *args: Any, maxsize: int | None = None, **kwargs: Any) -> None:
        faust_init(self, *args, maxsize=maxsize, **kwargs)
        self.maxsize = maxsize

    __init__.keeps_maxsize = True  # type: ignore[attr-defined]
    Topic.__init__ = __init__  # type: ignore[method-assign]


#: Headers of a key owner's answer that the client of a routed request needs: what a refusal
#: asks of it (the access gate's 401 and 429, tally.http.access).
RELAYED_FROM_OWNER = ("WWW-Authenticate", "Retry-After")


def relay_refusal_headers() -> None:
    """Faust's router relays a key owner's answer with its status and body only: an owner's
    401 would lose its `WWW-Authenticate`, a 429 its `Retry-After`. Relay those too; and it
    sends the owner no request body: send a POST's."""
    if getattr(Router._route_req, "relays_refusals", False):
        return

    async def _route_req(self: Router, dest_url: Any, web: Any, request: Any) -> Any:
        dest_ident = (host, port) = self._urlident(dest_url)
        if dest_ident == self._urlident(self.app.conf.canonical_url):
            raise SameNode()
        routed_url = request.url.with_host(host).with_port(int(port))
        body = await request.read() if request.can_read_body else None
        async with self.app.http_client.request(
            method=request.method, headers=request.headers, url=routed_url, data=body
        ) as response:
            relayed = {name: response.headers[name] for name in RELAYED_FROM_OWNER
                       if name in response.headers}  # fmt: skip
            return web.text(
                await response.text(),
                content_type=response.content_type,
                status=response.status,
                headers=relayed,
            )

    _route_req.relays_refusals = True  # type: ignore[attr-defined]
    Router._route_req = _route_req  # type: ignore[method-assign]


#: Keys whose owner the router remembers until the next assignment (then it starts again).
KNOWN_OWNERS_MAX = 10_000


class KeyOwners:
    """Faust's router finds the worker owning a query's key on every request: it serializes
    the key, hashes it (murmur2), looks the partition up and builds a URL, ~8 % of a worker
    answering the top-10 (py-spy). Each (table, key)'s owner is remembered instead, until the
    assignor replaces its partitions' URLs (every assignment does); and so is whether that
    owner is this worker, which Faust's router answers by raising SameNode after reading
    `canonical_url` through its settings registry."""

    def __init__(self, find_owner: Callable[[Router, str, Any], Any]) -> None:
        self.find_owner = find_owner
        self.known: dict[tuple[str, Any], Any] = {}  # Tally's keys are strings
        self.here: dict[tuple[str, Any], bool] = {}
        self.known_for: object = None  # the assignor's map the owners were found in

    def owner(self, router: Router, table_name: str, key: Any) -> Any:
        """The URL of the worker owning `key` (KeyError: no worker does yet)."""
        urls = router.app.assignor._tps_url  # type: ignore[attr-defined]
        if urls is not self.known_for or len(self.known) >= KNOWN_OWNERS_MAX:
            self.known.clear()
            self.here.clear()
            self.known_for = urls
        owner = self.known.get((table_name, key))
        if owner is None:
            owner = self.known[(table_name, key)] = self.find_owner(router, table_name, key)
        return owner

    def is_here(self, router: Router, table_name: str, key: Any) -> bool:
        """Whether this worker owns `key` (False while no worker does: routing says so)."""
        try:
            owner = self.owner(router, table_name, key)
        except KeyError:
            return False
        here = self.here.get((table_name, key))
        if here is None:
            own_url = router.app.conf.canonical_url
            here = router._urlident(owner) == router._urlident(own_url)
            self.here[(table_name, key)] = here
        return here


#: The router's memory of key owners (Faust's lookup, taken before remember_key_owners).
key_owners = KeyOwners(Router.key_store)


def remember_key_owners() -> None:
    """Router.key_store answers from `key_owners` (see KeyOwners)."""
    if getattr(Router.key_store, "remembers_owners", False):
        return

    def key_store(self: Router, table_name: str, key: Any) -> Any:
        return key_owners.owner(self, table_name, key)

    key_store.remembers_owners = True  # type: ignore[attr-defined]
    Router.key_store = key_store  # type: ignore[method-assign]


def owns_key(router: RouterT, table_name: str, key: Any) -> bool:
    """Whether this worker owns `key` of `table_name`: its query is answered at once, without
    Faust's route_req."""
    return key_owners.is_here(cast(Router, router), table_name, key)


#: A flush still waiting for the producer buffer says so this often.
FLUSH_WARN_EVERY_S = 10.0


#: Called at the start of every producer flush, so before every commit of source offsets:
#: what they hand to the producer then is sent before the offsets are committed.
before_producer_flush: list[Callable[[], Awaitable[None]]] = []


#: Set in the task of a flush before a commit while it runs: the cells its hooks write out
#: are timed as the commit's (`tally_write_out_seconds{kind="commit"}`).
in_commit_flush: ContextVar[bool] = ContextVar("in_commit_flush", default=False)


def flush_producer_buffer_fully() -> None:
    """Faust commits the source offsets after flushing its producer (at_least_once), but its
    buffer's flush gives up as soon as no message left the buffer for 0.1 s (a send waiting
    for room in a busy client, a busy event loop) and the commit goes ahead: a crash then
    loses table changes (changelog records) of messages committed as processed. (Found
    reading Faust's code; the chaos soak never caught a flush returning early.) Here a flush
    returns once every message put in the buffer before it began has been handed to the
    Kafka client, whose own flush Faust awaits next; messages put meanwhile (agents go on)
    belong to the next commit. (With `producer_threaded` Faust's buffer is bypassed: its own
    flush serves.) The same counts answer the fetch loop's question, asked for every message
    consumed, whether the buffer is over its limit (`wait_until_ebb`): Faust's answer read a
    setting through its settings registry each time (~2 % of a single-purchase worker); puts
    minus sends is never less than what Faust counts, so Faust's own wait runs whenever it
    could have waited. While it runs, `in_commit_flush` says so to the cells it writes out."""
    if getattr(ProducerBuffer.flush, "drains_fully", False):
        return
    faust_post_init = ProducerBuffer.__post_init__
    faust_put = ProducerBuffer.put
    faust_send_pending = ProducerBuffer._send_pending
    faust_flush = ProducerBuffer.flush
    faust_wait_until_ebb = ProducerBuffer.wait_until_ebb

    def __post_init__(self: ProducerBuffer) -> None:
        faust_post_init(self)
        self.puts = self.sends = 0  # type: ignore[attr-defined]

    def put(self: ProducerBuffer, fut: Any) -> None:
        faust_put(self, fut)
        self.puts += 1  # type: ignore[attr-defined]

    async def _send_pending(self: ProducerBuffer, fut: Any) -> None:
        try:
            await faust_send_pending(self, fut)
        finally:
            self.sends += 1  # type: ignore[attr-defined]

    async def flush(self: ProducerBuffer) -> None:
        within = in_commit_flush.set(True)
        try:
            await flush_fully(self)
        finally:
            in_commit_flush.reset(within)

    async def flush_fully(self: ProducerBuffer) -> None:
        for hook in before_producer_flush:
            await hook()
        if cast(Any, self.app).conf.producer_threaded:
            await faust_flush(self)
            return
        target, started = self.puts, time.monotonic()  # type: ignore[attr-defined]
        warned = started
        while not self.should_stop:
            self.message_sent.clear()  # set by Faust's sending task after each send
            if self.sends >= target:  # type: ignore[attr-defined]
                return
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)
            except TimeoutError:
                if time.monotonic() - warned >= FLUSH_WARN_EVERY_S:
                    warned = time.monotonic()
                    logger.warning(
                        "producer: %s messages not yet handed to Kafka after %.0f s of "
                        "flushing; commits wait for them",
                        target - self.sends,  # type: ignore[attr-defined]
                        warned - started,
                    )
        await faust_flush(self)  # stopping: Faust's own flush, as far as it goes

    async def wait_until_ebb(self: ProducerBuffer) -> None:
        if self.puts - self.sends > self.max_messages:  # type: ignore[attr-defined]
            await faust_wait_until_ebb(self)

    flush.drains_fully = True  # type: ignore[attr-defined]
    ProducerBuffer.__post_init__ = __post_init__  # type: ignore[method-assign]
    ProducerBuffer.put = put  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]
    ProducerBuffer.wait_until_ebb = wait_until_ebb  # type: ignore[method-assign]


#: The code of `asyncio.Event.wait`: how `deliver_messages_inline` knows the fetch loop's race.
EVENT_WAIT_CODE = asyncio.Event.wait.__code__


def deliver_messages_inline() -> None:
    """Faust's fetch loop hands every message to its streams' buffers through
    `wait_first(callback(message), suspend_flow.wait())`: four tasks made (the callback, the
    wait, and the consumer's stopped and crashed waits), raced, and three cancelled, per
    message: ~15 % of a single-purchase worker (py-spy). The callback waits only while a
    stream's buffer is full, the flow is suspended or the producer's buffer is over its
    limit; in a backlog the first happens each time an agent falls a buffer behind (~4 % of
    the same profile). Here it runs inline when nothing is set that it would race; if it
    does wait, the rest of it is raced against the suspension exactly as Faust races the
    whole (`Resumed`). Then the fetch loop yields to the event loop, as the race made it do
    at every message: without that it ran 100 deliveries (its own `yield_every`) in one step
    of the loop, up to tens of milliseconds, and queries waited behind them (the
    recommendations' p99 went from 9-15 to 23.5 ms, docs/performance.md). The yield is one
    turn of the loop; the race took two and four tasks."""
    if getattr(FaustConsumer.wait_first, "delivers_inline", False):
        return
    service_wait_first = FaustConsumer.wait_first

    async def wait_first(self: FaustConsumer, *coros: Any, timeout: Any = None) -> WaitResults:
        if (
            timeout is not None
            or len(coros) != 2
            or getattr(coros[1], "cr_code", None) is not EVENT_WAIT_CODE
            or self.suspend_flow.is_set()
            or self._stopped.is_set()
            or self._crashed.is_set()
        ):
            return await service_wait_first(self, *coros, timeout=timeout)
        delivery, suspended = coros
        try:
            waiting_on = delivery.send(None)
        except StopIteration as finished:
            suspended.close()  # never started: nothing to cancel
            await asyncio.sleep(0)
            return WaitResults([delivery], [finished.value], False)
        except BaseException:
            suspended.close()
            raise
        return await service_wait_first(self, Resumed(delivery, waiting_on), suspended)

    wait_first.delivers_inline = True  # type: ignore[attr-defined]
    FaustConsumer.wait_first = wait_first  # type: ignore[method-assign,assignment]


class Resumed:
    """The rest of a coroutine already stepped by hand until it waited on `waiting_on`, as an
    awaitable: what it yields is handed to the awaiting task unchanged and what the task sends
    or throws goes back to it (`yield from`'s delegation, from a point already reached), so a
    task driving it waits, wakes and is cancelled as one driving the coroutine would. Its
    first step ran in the caller's task and context, the rest runs in the new task's (a
    copy): nothing on the delivery path sets a context variable or a timeout across its
    first wait, which would not survive the move."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self.coroutine = coroutine
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, waiting_on = self.coroutine, self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # thrown in by the task (a cancellation)
                try:
                    waiting_on = coroutine.throw(exc)
                except StopIteration as finished:
                    return finished.value
            else:
                try:
                    waiting_on = coroutine.send(sent)
                except StopIteration as finished:
                    return finished.value


#: How long a take gathers once the worker is stopping.
STOPPING_TAKE_WITHIN_S = 0.1
#: The waits of takes under way (`hand_over_takes_when_stopping`), ended by `begin_stopping`.
_gathering: set[asyncio.Future[None]] = set()
_stopping = False


def begin_stopping() -> None:
    """The worker is stopping: every take hands over what it gathered now, and from then on
    within STOPPING_TAKE_WITHIN_S."""
    global _stopping
    _stopping = True
    for gathering in _gathering:
        if not gathering.done():
            gathering.set_result(None)


def hand_over_takes_when_stopping() -> None:
    """Faust's stop waits until every message its agents took is acknowledged, and a take
    (`Stream.take_events`) acknowledges what it gathered only once its window ends: the
    archive sinks' window (TALLY_ARCHIVE_FLUSH_SECONDS, a minute by default) held every stop
    of a worker until the forced exit (TALLY_STOP_TIMEOUT_SECONDS). Here the wait of a take,
    Faust's only wait on one event with a timeout, also ends at `begin_stopping`."""
    if getattr(faust_streams.Stream.wait_for_stopped, "ends_when_stopping", False):
        return
    faust_wait = faust_streams.Stream.wait_for_stopped

    async def wait_for_stopped(
        self: faust_streams.Stream, *coros: Any, timeout: Any = None
    ) -> bool:
        if len(coros) != 1 or timeout is None:
            return await faust_wait(self, *coros, timeout=timeout)
        if _stopping:
            within = min(want_seconds(timeout), STOPPING_TAKE_WITHIN_S)
            return await faust_wait(self, *coros, timeout=within)
        gathering: asyncio.Future[None] = self.loop.create_future()
        _gathering.add(gathering)
        try:
            return (await self.wait_first(coros[0], gathering, timeout=timeout)).stopped
        finally:
            _gathering.discard(gathering)

    wait_for_stopped.ends_when_stopping = True  # type: ignore[attr-defined]
    faust_streams.Stream.wait_for_stopped = wait_for_stopped  # type: ignore[method-assign,assignment]


#: Every RocksDB table partition's changelog continuity in this worker (core.continuity).
continuity = ChangelogContinuity()


def record_offsets_only_without_holes() -> None:
    """Faust's RocksDB store records, with each changelog batch it applies, the batch's last
    offset, and a restore reads on from there; its recovery can skip records (it drops what
    was fetched between a standby's seek and the resume of its flow), and the recorded offset
    would then pass them for good. Here the recorded offset stops before a hole
    (core.continuity), so the next restore reads it again. Not for exactly_once: its
    changelogs have a transaction marker per commit, and it records offsets at commits."""
    if getattr(RocksDBStore.apply_changelog_batch, "records_without_holes", False):
        return
    faust_apply = RocksDBStore.apply_changelog_batch
    faust_set_persisted = RocksDBStore.set_persisted_offset

    def apply_changelog_batch(
        self: RocksDBStore, batch: Any, to_key: Callable[..., Any], to_value: Callable[..., Any]
    ) -> None:
        events = list(batch)
        offsets: dict[TP, list[int]] = {}
        for event in events:
            offsets.setdefault(event.message.tp, []).append(event.message.offset)
        before = {tp: self.persisted_offset(tp) for tp in offsets}
        self.applying_changelog = True  # type: ignore[attr-defined]  # recorded below instead
        try:
            faust_apply(self, events, to_key, to_value)
        finally:
            self.applying_changelog = False  # type: ignore[attr-defined]
        for tp, applied in offsets.items():
            record_applied(self.table, tp, applied, before[tp])

    def set_persisted_offset(self: RocksDBStore, tp: TP, offset: int) -> None:
        """Also where an active's acknowledged changelog writes are recorded. Within a batch
        apply nothing is: a crash between two records would leave the batch's last offset."""
        if not getattr(self, "applying_changelog", False):
            faust_set_persisted(self, tp, continuity.wrote((self.table.name, tp), offset))

    apply_changelog_batch.records_without_holes = True  # type: ignore[attr-defined]
    RocksDBStore.apply_changelog_batch = apply_changelog_batch  # type: ignore[method-assign]
    RocksDBStore.set_persisted_offset = set_persisted_offset  # type: ignore[method-assign]


def record_applied(table: CollectionT, tp: TP, offsets: list[int], before: int | None) -> None:
    """Changelog `offsets` of `tp` applied to `table`'s partition by Faust's recovery, whose
    recorded offset was `before`: record how far it holds them without a hole (where the
    next restore of `tp` starts)."""
    safe = continuity.applied((table.name, tp), offsets, before)
    record_offset(table, tp, safe)
    if safe != offsets[-1]:
        logger.warning(
            "%s: changelog %s[%s] applied to %s with a hole from %s: the next restore reads "
            "from there again",
            table.name,
            tp.topic,
            tp.partition,
            offsets[-1],
            safe + 1,
        )


def record_read_through(table: CollectionT, tp: TP, offset: int) -> None:
    """`table`'s partition holds `tp`'s changelog through `offset`, read from its recorded
    offset by a reader that drops nothing (runtime.restore): what it skipped is not in the
    log, and any hole before is mended."""
    record_offset(table, tp, continuity.read_through((table.name, tp), offset))


def changelog_sent(table: CollectionT, tp: TP, offset: int) -> None:
    """The changelog holds `table`'s writes through `offset`: recorded as Faust's table does
    when its own changelog record is acknowledged (`Collection._on_changelog_sent`,
    at_least_once), through the store's `set_persisted_offset` (patched above)."""
    cast(Any, table).data.set_persisted_offset(tp, offset)


def recorded_offset(table: CollectionT, tp: TP) -> int | None:
    """The last changelog offset `table`'s partition holds, as Faust recorded it (None: none)."""
    return cast(int | None, cast(Any, table).data.persisted_offset(tp))


def record_offset(table: CollectionT, tp: TP, offset: int) -> None:
    """Where the next restore of `tp` into `table`'s partition starts, as Faust records it."""
    partition_db(table, tp.partition).put(RocksDBStore.offset_key, str(offset).encode())


@contextmanager
def current_event(event: EventT) -> Iterator[None]:
    """Faust routes table reads and writes to the partition of the stream's current event,
    kept in a private context variable: inside, that is `event`."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def plain_json(table: CollectionT) -> bool:
    """Whether `table` keeps plain JSON values (no value type: Tally's tables). Those are
    encoded and decoded with Faust's JSON codec (orjson) directly, to the same bytes: the
    store's own path goes through the serializer registry, which looks each value up for a
    model's namespace, raising and catching a TypeError for every list value (a third of a
    cell read)."""
    return table.value_type is None and cast(Any, table).value_serializer == "json"


def encode_value(table: CollectionT, value: Any) -> bytes:
    """`value` as `table`'s store writes it (its value serializer)."""
    if plain_json(table) and not isinstance(value, Model):
        return want_bytes(faust_json.dumps(value))
    return cast(bytes, table.data._encode_value(value))  # type: ignore[attr-defined]


def decode_value(table: CollectionT, raw: bytes) -> Any:
    """A value read raw from `table`'s store, decoded as the store does."""
    if plain_json(table):
        value = faust_json.loads(raw)  # type: ignore[arg-type]  # its JSON (orjson) reads bytes
        if not (isinstance(value, dict) and Model._blessed_key in value):
            return value
    return table.data._decode_value(raw)  # type: ignore[attr-defined]


def partition_db(table: CollectionT, partition: int) -> Any:
    """The rocksdict database of one partition of a RocksDB table (opened if need be)."""
    return table.data._db_for_partition(partition)  # type: ignore[attr-defined]


def open_partition_dbs(table: CollectionT) -> list[Any]:
    """The rocksdict databases of the partitions this worker has opened."""
    return list(getattr(cast(Any, table).data, "_dbs", {}).values())


def aiokafka_producer(producer: ProducerT) -> AIOKafkaProducer:
    """The aiokafka producer inside Faust's producer (started)."""
    return cast(AIOKafkaProducer, cast(Any, producer)._ensure_producer())


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The group's committed offset of `tp` as Faust last knew it (None for none, or 0):
    before anything is processed after an assignment, where Faust seeked its reading to."""
    return cast(int | None, consumer._committed_offset.get(tp))


def stream_buffer_full(consumer: Any, tp: TP) -> bool:
    """Faust stopped fetching `tp` because its stream's buffer is full: messages wait."""
    return tp in consumer._buffered_partitions


def fetching(consumer: Any, tp: TP) -> bool:
    """Whether Faust's consumer fetches `tp` now: not while its flow is stopped or the
    partition paused (a rebalance), nor while the partition's stream buffer is full. While it
    does not, the client's high watermark of `tp` is as old as its last fetch."""
    active = consumer._active_partitions
    return bool(
        consumer.flow_active
        and tp not in consumer._paused_partitions
        and (active is None or tp in active)
    )


def delivery_state(consumer: Any, tp: TP) -> str:
    """Where Faust's consumer stands on `tp`, for a stalled partition's warning: the last
    offset it handed to the streams, whether it fetches the partition (paused during a
    rebalance, or its stream's buffer full), and its acks and gaps not yet committed."""
    return (
        f"delivered up to {consumer._read_offset.get(tp)}, "
        f"{'fetching' if fetching(consumer, tp) else 'not fetching'}"
        f"{', paused' if tp in consumer._paused_partitions else ''}"
        f"{', stream buffer full' if stream_buffer_full(consumer, tp) else ''}, "
        f"{len(consumer._acked.get(tp, ()))} acks and gaps "
        f"{[(gap.begin, gap.end) for gap in sorted(consumer._gap.get(tp, ()))]} not committed"
    )
