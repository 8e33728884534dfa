"""Live answers for server-sent events: one poller per stream, latest-only mailboxes per client.

A stream re-runs a query (the JSON the REST view answers) every `interval` seconds and turns
what changed into messages. Each client has a mailbox that keeps only the newest unsent message
per key, so a slow or stalled client costs memory bounded by the keys, never blocks the poller,
and never reaches the agents (they do not know streams exist). No Faust in here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from tally.core.clock import epoch_ms
from tally.core.rollups import MINUTE_MS, minute_of

logger = logging.getLogger(__name__)

Answer = dict[str, Any]
#: Reads a query's current JSON answer (path, the client's credentials: an Authorization
#: header or ""); raises `Unavailable` when it cannot.
Read = Callable[[str, str], Awaitable[Answer]]

SNAPSHOT = "snapshot"
STATUS = "status"


class Unavailable(Exception):
    """The query behind a stream cannot be answered right now (rebalancing, owner down)."""


class Refused(Unavailable):
    """The query refuses the stream's credentials (revoked, expired): its clients are told,
    and their streams end."""


@dataclass(frozen=True)
class Message:
    """One server-sent event. `key` coalesces: a newer message with the key of an unsent one
    replaces it in place."""

    key: str
    event: str
    data: Answer
    id: str = ""

    def frame(self) -> bytes:
        lines = [f"id: {self.id}"] if self.id else []
        lines += [f"event: {self.event}", "data: " + json.dumps(self.data, separators=(",", ":"))]
        return ("\n".join(lines) + "\n\n").encode()


class Mailbox:
    """A client's unsent messages, newest per key, in first-queued order. Past `limit` keys
    the client is too far behind for deltas: everything is dropped for one fresh snapshot."""

    def __init__(self, limit: int = 5000) -> None:
        self.limit = limit
        self.pending: dict[str, Message] = {}
        self.replaced = 0
        self.resets = 0
        self._ready = asyncio.Event()

    def put(self, message: Message) -> bool:
        """Queue `message`; False when the mailbox overflowed (the caller resets it)."""
        old = self.pending.get(message.key)
        if old is not None:
            self.replaced += 1
            if old.event == SNAPSHOT:  # an unsent snapshot stays the first thing sent
                message = replace(message, event=SNAPSHOT)
        self.pending[message.key] = message
        self._ready.set()
        return len(self.pending) <= self.limit

    def reset(self, snapshot: Message) -> None:
        """Everything pending replaced by `snapshot` (a pending status is kept: it says whether
        the snapshot is current)."""
        self.resets += 1
        status = self.pending.get(STATUS)
        self.pending = {snapshot.key: snapshot}
        if status is not None:
            self.pending[STATUS] = status
        self._ready.set()

    def take(self) -> list[Message]:
        taken = list(self.pending.values())
        self.pending = {}
        self._ready.clear()
        return taken

    async def wait(self, timeout: float) -> list[Message]:
        """What is pending, waiting up to `timeout` for something (empty: time for a ping)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.take()


@dataclass
class Stream:
    """What a live query reads, and how two answers differ (subclasses). It reads with its
    clients' credentials, so clients share a feed only when they present the same ones: a
    stream never shows a client what its own token would not."""

    #: The query path the stream re-runs (with `query`); with the caller, its identity on a
    #: worker.
    path: str = ""
    #: The Authorization header its queries are asked with, and whose it is (a token id:
    #: clients of one token share a feed; the key names no secret).
    credentials: str = field(default="", repr=False)
    caller: str = ""
    #: Extra query parameters (e.g. metric=a,b; an operator's tenant=t), already encoded.
    query: str = ""

    @property
    def key(self) -> str:
        return f"{self.query_key} {self.caller}"

    @property
    def query_key(self) -> str:
        """What the stream asks, whoever asks it."""
        return self.url()

    def url(self, *params: str) -> str:
        """The path with `params` ("name=value") and the stream's `query`."""
        given = "&".join(p for p in (*params, self.query) if p)
        return f"{self.path}?{given}" if given else self.path

    async def read(self, fetch: Read) -> Answer:
        return await fetch(self.url(), self.credentials)

    def snapshot(self, answer: Answer) -> Message:
        raise NotImplementedError

    def changes(self, old: Answer, new: Answer) -> list[Message]:
        raise NotImplementedError


@dataclass
class TopStream(Stream):
    """The sales top-K: the open window's answer (provisional) on every change, and each
    window's final answer once every partition has published it."""

    path: str = "/api/sales/top"
    #: window_end of each window that closed and whose final answer is not sent yet → polls
    #: left before giving up (a window with no purchases never gets one).
    closing: dict[str, int] = field(default_factory=dict)
    final_polls: int = 120

    async def read(self, fetch: Read) -> Answer:
        current = await fetch(self.url(), self.credentials)
        finals = []
        for window_end, polls_left in list(self.closing.items()):
            # `at` = the last millisecond of the window that ended at `window_end`.
            at = epoch_ms(window_end) - 1
            final = await fetch(self.url(f"at={at}"), self.credentials)
            if final.get("items") and not final.get("stale"):
                finals.append(final)
                del self.closing[window_end]
            elif polls_left <= 1:
                del self.closing[window_end]
            else:
                self.closing[window_end] = polls_left - 1
        return {"current": current, "finals": finals}

    def snapshot(self, answer: Answer) -> Message:
        return Message("top", SNAPSHOT, provisional(answer["current"]))

    def changes(self, old: Answer, new: Answer) -> list[Message]:
        before, now = old["current"], new["current"]
        messages = [
            Message(f"final|{final['window_end']}", "final", {**final, "state": "final"})
            for final in new["finals"]
        ]
        if before.get("window_end") not in (None, now.get("window_end")):
            self.closing[before["window_end"]] = self.final_polls
        if before != now:
            messages.append(Message("top", "top", provisional(now)))
        return messages


def provisional(answer: Answer) -> Answer:
    return {**answer, "state": "provisional"}


@dataclass
class SeriesStream(Stream):
    """Minute rollups of one server (a series per metric) or one metric (series "all") over
    the last `minutes`: a snapshot, then each point that changed or became final."""

    path: str = ""
    #: The answer's field holding the series (`metrics`) or the one series (`series`).
    field_name: str = "metrics"
    minutes: int = 120

    @property
    def query_key(self) -> str:
        return f"{self.path}?minutes={self.minutes}&{self.query}"

    async def read(self, fetch: Read) -> Answer:
        # The range ends with the current minute, so it moves once a minute, not every poll.
        to_ms = minute_of(int(time.time() * 1000)) + MINUTE_MS
        since = to_ms - self.minutes * MINUTE_MS
        return await fetch(self.url(f"from={since}", f"to={to_ms}", "step=1m"), self.credentials)

    def series(self, answer: Answer) -> dict[str, list[Answer]]:
        found = answer.get(self.field_name) or {}
        return {"all": found} if isinstance(found, list) else found

    def points(self, answer: Answer) -> dict[str, Answer]:
        """Every point of the answer keyed "<series>|<t>", with its state."""
        still_open = set(answer.get("open_minutes") or ())
        return {
            f"{name}|{point['t']}": {
                "series": name,
                **point,
                "state": "provisional" if point["t"] in still_open else "final",
            }
            for name, points in self.series(answer).items()
            for point in points
        }

    @staticmethod
    def meta(answer: Answer) -> Answer:
        return {k: v for k, v in answer.items() if k not in ("metrics", "series", "servers")}

    def snapshot(self, answer: Answer) -> Message:
        grouped: dict[str, list[Answer]] = {}
        for point in self.points(answer).values():
            grouped.setdefault(point["series"], []).append(point)
        return Message(SNAPSHOT, SNAPSHOT, {**self.meta(answer), "series": grouped})

    def changes(self, old: Answer, new: Answer) -> list[Message]:
        messages = []
        meta = self.meta(new)
        if meta != self.meta(old):
            messages.append(Message("meta", "meta", meta))
        before = self.points(old)
        messages += [
            Message(key, "point", point)
            for key, point in self.points(new).items()
            if before.get(key) != point
        ]
        return messages


class Feed:
    """One stream polled for all its clients on this worker; stops when the last one leaves."""

    def __init__(
        self,
        stream: Stream,
        fetch: Read,
        interval: float,
        on_reset: Callable[[], None] = lambda: None,
    ) -> None:
        self.stream = stream
        self.on_reset = on_reset
        self.fetch = fetch
        self.interval = interval
        self.mailboxes: set[Mailbox] = set()
        self.answer: Answer | None = None
        self.unavailable: str | None = None
        #: Why the query refused the credentials; the feed has stopped and its clients go.
        self.refused: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._epoch = f"{id(self):x}"

    def subscribe(self, limit: int = 5000) -> Mailbox:
        mailbox = Mailbox(limit)
        if self.answer is not None:
            mailbox.put(self.stamped([self.stream.snapshot(self.answer)])[0])
        if self.unavailable is not None:
            mailbox.put(self.status())
        self.mailboxes.add(mailbox)
        if self.task is None:
            self.task = asyncio.create_task(self.run(), name=f"live {self.stream.key}")
        return mailbox

    def unsubscribe(self, mailbox: Mailbox) -> bool:
        """Drop a client; True when it was the last (the feed has stopped)."""
        self.mailboxes.discard(mailbox)
        if self.mailboxes or self.task is None:
            return False
        self.task.cancel()
        self.task = None
        return True

    def stamped(self, messages: Iterable[Message]) -> list[Message]:
        """Messages with ids increasing within this feed ("<feed>-<n>"). Mailboxes drop
        superseded messages, so ids are not consecutive, and a new feed (after the last
        client left) starts a new sequence: a client uses them for order only."""
        return [replace(m, id=f"{self._epoch}-{next(self._ids)}") for m in messages]

    def status(self) -> Message:
        ok = self.unavailable is None
        return Message(STATUS, STATUS, {"ok": ok, "reason": self.unavailable})

    def publish(self, messages: list[Message]) -> None:
        """Hand messages to every mailbox; one that overflows gets a fresh snapshot instead."""
        if not messages:
            return
        stamped = self.stamped(messages)
        for mailbox in self.mailboxes:
            fits = True
            for message in stamped:
                fits = mailbox.put(message) and fits
            if not fits and self.answer is not None:
                mailbox.reset(self.stamped([self.stream.snapshot(self.answer)])[0])
                self.on_reset()

    async def poll_once(self) -> None:
        try:
            answer = await self.stream.read(self.fetch)
        except Refused as exc:
            self.refused = str(exc)
            self.publish(
                [Message(STATUS, STATUS, {"ok": False, "reason": str(exc), "refused": True})]
            )
            return
        except Unavailable as exc:
            if self.unavailable != str(exc):
                self.unavailable = str(exc)
                self.publish([self.status()])
            return
        messages = []
        if self.unavailable is not None:
            self.unavailable = None
            messages.append(self.status())
        if self.answer is None:
            messages.append(self.stream.snapshot(answer))
        else:
            messages += self.stream.changes(self.answer, answer)
        self.answer = answer
        self.publish(messages)

    async def run(self) -> None:
        while self.refused is None:
            try:
                await self.poll_once()
            except Exception:  # a bug in one stream must not end it for every client
                logger.exception("live stream %s failed to poll", self.stream.key)
            await asyncio.sleep(self.interval)


class Feeds:
    """The feeds of one worker, by stream key; at most `limit` at once."""

    def __init__(
        self,
        fetch: Read,
        interval: float,
        limit: int = 256,
        on_reset: Callable[[], None] = lambda: None,
    ) -> None:
        self.fetch = fetch
        self.interval = interval
        self.limit = limit
        self.on_reset = on_reset
        self.feeds: dict[str, Feed] = {}

    def subscribe(self, stream: Stream) -> tuple[Feed, Mailbox]:
        feed = self.feeds.get(stream.key)
        if feed is None:
            if len(self.feeds) >= self.limit:
                raise Unavailable(
                    f"this worker already serves {self.limit} different live streams; "
                    "use another worker or retry later"
                )
            feed = Feed(stream, self.fetch, self.interval, self.on_reset)
            self.feeds[stream.key] = feed
        return feed, feed.subscribe()

    def unsubscribe(self, feed: Feed, mailbox: Mailbox) -> None:
        if feed.unsubscribe(mailbox):
            self.feeds.pop(feed.stream.key, None)

    @property
    def clients(self) -> int:
        return sum(len(feed.mailboxes) for feed in self.feeds.values())
