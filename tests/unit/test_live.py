"""Live streams without Faust: mailboxes coalesce, diffs rebuild the answer, feeds poll once."""

from __future__ import annotations

import asyncio
import json
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.live import (
    SNAPSHOT,
    Answer,
    Feed,
    Feeds,
    Mailbox,
    Message,
    SeriesStream,
    TopStream,
    Unavailable,
)


def message(key: str, event: str = "point", **data: Any) -> Message:
    return Message(key, event, data)


def test_mailbox_keeps_the_newest_per_key_in_first_queued_order() -> None:
    box = Mailbox()
    box.put(message("a", n=1))
    box.put(message("b", n=1))
    box.put(message("a", n=2))
    taken = box.take()
    assert [(m.key, m.data["n"]) for m in taken] == [("a", 2), ("b", 1)]
    assert box.replaced == 1
    assert box.take() == []


def test_an_unsent_snapshot_absorbs_updates_and_stays_a_snapshot() -> None:
    box = Mailbox()
    box.put(message("top", SNAPSHOT, n=1))
    box.put(message("top", "top", n=2))
    [only] = box.take()
    assert (only.event, only.data["n"]) == (SNAPSHOT, 2)


def test_a_mailbox_past_its_limit_reports_overflow_and_resets_to_one_snapshot() -> None:
    box = Mailbox(limit=3)
    assert all(box.put(message(str(i))) for i in range(3))
    assert not box.put(message("3"))
    box.reset(message(SNAPSHOT, SNAPSHOT))
    assert [m.event for m in box.take()] == [SNAPSHOT]
    assert box.resets == 1


def test_frames_are_server_sent_events() -> None:
    frame = Message("top", "top", {"a": 1}, id="e-7").frame()
    assert frame == b'id: e-7\nevent: top\ndata: {"a":1}\n\n'


# --- series: a client applying snapshot + changes holds the last answer -------------------

MINUTES = [f"2026-11-22T10:{m:02d}:00Z" for m in range(6)]
point = st.fixed_dictionaries(
    {"min": st.integers(0, 9), "max": st.integers(10, 19), "avg": st.integers(0, 19)}
)
answers = st.lists(
    st.fixed_dictionaries(
        {
            "watermark": st.sampled_from(MINUTES),
            "open_minutes": st.lists(st.sampled_from(MINUTES), max_size=2, unique=True),
            "metrics": st.dictionaries(
                st.sampled_from(["cpu", "mem"]),
                st.dictionaries(st.sampled_from(MINUTES), point, min_size=1),
                max_size=2,
            ),
        }
    ),
    min_size=1,
    max_size=8,
)


def as_answer(raw: dict[str, Any]) -> Answer:
    metrics = {
        name: [{"t": t, **p} for t, p in sorted(points.items())]
        for name, points in raw["metrics"].items()
    }
    return {**raw, "metrics": metrics}


def grown(raws: list[dict[str, Any]]) -> list[Answer]:
    """Answers as the pipeline gives them: a minute, once present, stays (updated or not)."""
    seen: dict[str, dict[str, Any]] = {}
    out = []
    for raw in raws:
        for name, points in raw["metrics"].items():
            seen.setdefault(name, {}).update(points)
        out.append(as_answer({**raw, "metrics": {n: dict(p) for n, p in seen.items()}}))
    return out


def apply(client: dict[str, Any], messages: list[Message]) -> None:
    for m in messages:
        if m.event == SNAPSHOT:
            client.clear()
            client.update({f"{n}|{p['t']}": p for n, ps in m.data["series"].items() for p in ps})
        elif m.event == "point":
            client[f"{m.data['series']}|{m.data['t']}"] = m.data


@settings(max_examples=200, deadline=None)
@given(raws=answers, takes=st.lists(st.booleans(), min_size=8, max_size=8))
def test_a_client_that_misses_updates_still_ends_with_the_last_answer(
    raws: list[dict[str, Any]], takes: list[bool]
) -> None:
    """Mailboxes drop all but the newest per point; whenever the client happens to read,
    snapshot + what it read equals the server's last answer, states included."""
    stream = SeriesStream(path="/x")
    history = grown(raws)
    box = Mailbox()
    client: dict[str, Any] = {}
    box.put(stream.snapshot(history[0]))
    for (old, new), take in zip(pairwise(history), takes, strict=False):
        for m in stream.changes(old, new):
            box.put(m)
        if take:
            apply(client, box.take())
    apply(client, box.take())
    assert client == stream.points(history[-1])


def test_points_of_open_minutes_are_provisional_and_turn_final() -> None:
    stream = SeriesStream(path="/x")
    t = MINUTES[0]
    before = {"open_minutes": [t], "metrics": {"cpu": [{"t": t, "min": 1, "max": 2}]}}
    after = {"open_minutes": [], "metrics": {"cpu": [{"t": t, "min": 1, "max": 2}]}}
    [meta, changed] = stream.changes(before, after)
    assert meta.event == "meta" and meta.data == {"open_minutes": []}
    assert (changed.event, changed.data["state"]) == ("point", "final")
    assert stream.snapshot(before).data["series"]["cpu"][0]["state"] == "provisional"


def test_a_metric_answer_is_one_series_named_all() -> None:
    stream = SeriesStream(path="/api/metrics/cpu", field_name="series")
    answer = {"open_minutes": [], "series": [{"t": MINUTES[1], "min": 0}]}
    assert list(stream.snapshot(answer).data["series"]) == ["all"]


# --- the top-K: provisional on change, final once the closed window is complete -----------


def top(window_end: str, items: list[tuple[str, int]], stale: bool = False) -> Answer:
    return {
        "window_end": window_end,
        "stale": stale,
        "items": [{"item_id": i, "quantity": q} for i, q in items],
    }


class FakeQueries:
    """Answers by path, as the worker's REST endpoints would (a test double of HTTP)."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.asked: list[str] = []
        self.down: str | None = None

    async def __call__(self, path: str, credentials: str = "") -> Answer:
        self.asked.append(path)
        if self.down:
            raise Unavailable(self.down)
        return self.answers[path]


def test_top_stream_sends_changes_then_the_final_answer_of_a_closed_window() -> None:
    queries = FakeQueries()
    stream = TopStream()

    async def scenario() -> list[Message]:
        sent: list[Message] = []
        queries.answers["/api/sales/top"] = top("2026-11-22T10:00:00Z", [("a", 1)])
        first = await stream.read(queries)
        queries.answers["/api/sales/top"] = top("2026-11-22T11:00:00Z", [("b", 2)])
        second = await stream.read(queries)
        sent += stream.changes(first, second)
        # The closed window's answer is incomplete (a partition lagging): no final yet.
        at = "/api/sales/top?at=1795341599999"
        queries.answers[at] = top("2026-11-22T10:00:00Z", [("a", 1)], stale=True)
        third = await stream.read(queries)
        sent += stream.changes(second, third)
        queries.answers[at] = top("2026-11-22T10:00:00Z", [("a", 3)])
        fourth = await stream.read(queries)
        sent += stream.changes(third, fourth)
        return sent

    sent = asyncio.run(scenario())
    assert [(m.event, m.data["state"]) for m in sent] == [
        ("top", "provisional"),
        ("final", "final"),
    ]
    assert sent[1].data["items"] == [{"item_id": "a", "quantity": 3}]
    assert stream.closing == {}


def test_top_stream_gives_up_on_a_window_that_never_gets_a_final_answer() -> None:
    queries = FakeQueries()
    stream = TopStream(final_polls=2)
    stream.closing["2026-11-22T10:00:00Z"] = 2
    queries.answers["/api/sales/top"] = top("2026-11-22T11:00:00Z", [])
    queries.answers["/api/sales/top?at=1795341599999"] = top("2026-11-22T10:00:00Z", [], True)
    for _ in range(2):
        asyncio.run(stream.read(queries))
    assert stream.closing == {}


# --- feeds: one poll for every client; status when the query cannot answer ----------------


def test_a_feed_polls_once_for_all_clients_and_stops_with_the_last() -> None:
    queries = FakeQueries()
    queries.answers["/api/sales/top"] = top("2026-11-22T10:00:00Z", [("a", 1)])

    async def scenario() -> tuple[list[Message], list[Message], int, bool]:
        feeds = Feeds(queries, interval=60)  # one poll in this test, whatever the clients
        feed, first = feeds.subscribe(TopStream())
        same, second = feeds.subscribe(TopStream())
        assert same is feed
        got_first, got_second = await first.wait(1), await second.wait(1)
        polls = len(queries.asked)
        feeds.unsubscribe(feed, first)
        feeds.unsubscribe(feed, second)
        await asyncio.sleep(0)
        return got_first, got_second, polls, bool(feeds.feeds)

    got_first, got_second, polls, running = asyncio.run(scenario())
    assert [m.event for m in got_first] == [m.event for m in got_second] == [SNAPSHOT]
    assert got_first[0].data == got_second[0].data
    assert polls == 1
    assert not running


def test_a_reset_keeps_a_pending_status() -> None:
    box = Mailbox(limit=1)
    box.put(Message("status", "status", {"ok": False, "reason": "down"}))
    box.reset(Message(SNAPSHOT, SNAPSHOT, {}))
    assert [m.event for m in box.take()] == [SNAPSHOT, "status"]


def test_a_feed_reports_an_unavailable_query_and_its_recovery() -> None:
    queries = FakeQueries()
    queries.down = "rebalancing"
    queries.answers["/api/sales/top"] = top("2026-11-22T10:00:00Z", [("a", 1)])

    async def scenario() -> list[Message]:
        feed = Feed(TopStream(), queries, interval=0.01)
        box = feed.subscribe()
        seen = await box.wait(1)
        queries.down = None
        while not any(m.event == SNAPSHOT for m in seen):
            seen += await box.wait(1)
        feed.unsubscribe(box)
        return seen

    seen = asyncio.run(scenario())
    statuses = [m.data for m in seen if m.event == "status"]
    assert statuses == [{"ok": False, "reason": "rebalancing"}, {"ok": True, "reason": None}]
    assert json.loads(seen[-1].frame().split(b"data: ")[1])["state"] == "provisional"


def test_feeds_refuse_more_streams_than_their_limit() -> None:
    async def scenario() -> None:
        feeds = Feeds(FakeQueries(), interval=10, limit=1)
        feed, box = feeds.subscribe(SeriesStream(path="/a"))
        try:
            feeds.subscribe(SeriesStream(path="/b"))
        except Unavailable as exc:
            assert "1 different live streams" in str(exc)
        else:
            raise AssertionError("a second stream was accepted")
        feeds.unsubscribe(feed, box)

    asyncio.run(scenario())
