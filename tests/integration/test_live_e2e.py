"""Live streams and the dashboard through the real broker: SSE snapshots, deltas and finals
against brute force, reconnects, stalled clients, and the page in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tally.broker.local import LocalBroker
from tally.codecs.avro import validate_page_view
from tally.core.clock import epoch_ms, now_ms
from tally.core.topk import rank_key
from tally.coupons.campaigns import campaign_of
from tally.coupons.campaigns import publish as publish_campaign
from tally.feed import demo_campaign, social_posts
from tests.conftest import WorkerFactory, codec_in
from tests.harness import (
    EventStream,
    ServerSentEvent,
    Worker,
    produce,
    purchase_row,
    wait_until,
)

ARTIFACTS = Path(os.environ.get("TALLY_TEST_ARTIFACTS", "test-artifacts"))
CHROMIUM = os.environ.get("TALLY_CHROMIUM", "/usr/bin/chromium")
#: Sales windows of 3 panes of 2 s: a window closes every 2 seconds.
FAST_WINDOWS = {
    "TALLY_SALES_PANE_SECONDS": "2",
    "TALLY_SALES_WINDOW_PANES": "3",
    "TALLY_SALES_RETAINED_PANES": "3",
    "TALLY_GRACE_SECONDS": "1",
    "TALLY_HEARTBEAT_SECONDS": "1",
}


def post(worker: Worker, endpoint: str, rows: list[dict[str, Any]]) -> None:
    status, body, _ = worker.post(f"/api/ingest/{endpoint}", json.dumps(rows).encode())
    assert status == 202 and body["rejected"] == 0, body


def brute_top(sent: list[dict[str, Any]], answer: dict[str, Any]) -> list[tuple[str, int]]:
    """The top-10 over the window the answer names, from every purchase sent."""
    start, end = epoch_ms(answer["window_start"]), epoch_ms(answer["window_end"])
    totals: Counter[str] = Counter()
    for p in sent:
        if start <= p["event_time_ms"] < end:
            totals[p["item_id"]] += p["quantity"]
    return sorted(totals.items(), key=rank_key)[:10]


def items_of(answer: dict[str, Any]) -> list[tuple[str, int]]:
    return [(i["item_id"], i["quantity"]) for i in answer["items"]]


def test_top_stream_snapshot_then_changes_then_final_windows_equal_brute_force(
    make_worker: WorkerFactory,
) -> None:
    worker = make_worker(**FAST_WINDOWS).start()
    sent = [purchase_row(n, f"item-{n % 12:02d}", 1 + n % 12, now_ms()) for n in range(60)]
    post(worker, "purchases", sent)
    # Time the running pipeline below, not a cold start: wait for the first purchases first.
    wait_until(lambda: worker.get("/api/sales/top")["items"], 15, what="first purchases counted")
    stream = EventStream(worker.url, "/api/stream/sales/top")
    assert (stream.status, stream.content_type) == (200, "text/event-stream")
    first = stream.next()
    assert first.event == "snapshot" and first.data["state"] == "provisional"

    # New purchases: a provisional update equal to brute force over its window, within 3 s.
    burst = [purchase_row(100 + n, "item-hot", 50, now_ms()) for n in range(3)]
    posted_at = time.monotonic()
    post(worker, "purchases", burst)
    sent += burst
    update, seen = stream.until(
        lambda e: e.event == "top" and ("item-hot", 150) in items_of(e.data), 10, "with item-hot"
    )
    assert time.monotonic() - posted_at < 3.0
    assert update.data["state"] == "provisional"
    assert items_of(update.data) == brute_top(sent, update.data)

    # Every window closes 2 s later: each `final` equals brute force over its window.
    finals = []
    while len(finals) < 2:
        final, more = stream.until(lambda e: e.event == "final", 15, "final")
        seen += more
        finals.append(final)
    for final in finals:
        assert final.data["state"] == "final" and not final.data["stale"]
        assert items_of(final.data) == brute_top(sent, final.data)
    assert len({f.data["window_end"] for f in finals}) == 2
    ids = [int(e.id.rsplit("-", 1)[1]) for e in [first, *seen]]
    assert ids == sorted(set(ids)), "event ids must increase"

    # A client that reconnects (the browser sends Last-Event-ID) starts from a snapshot of now.
    stream.close()
    again = EventStream(worker.url, "/api/stream/sales/top", last_event_id=seen[-1].id)
    resumed = again.next()
    assert resumed.event == "snapshot"
    assert items_of(resumed.data) == brute_top(sent, resumed.data)

    # Stopping the worker closes open streams at once (it does not wait for the clients).
    stopping = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - stopping < 20
    with pytest.raises((ConnectionError, TimeoutError)):
        while True:
            again.next(5)


def sample(server: str, metric: str, ts: int, value: float) -> dict[str, Any]:
    return {"server_id": server, "metric_id": metric, "ts_ms": ts, "value": value}


def point_stats(values: list[float]) -> dict[str, Any]:
    return {
        "min": min(values),
        "max": max(values),
        "avg": pytest.approx(sum(values) / len(values)),
        "count": len(values),
    }


def test_server_and_metric_streams_turn_points_final_when_the_watermark_passes(
    make_worker: WorkerFactory,
) -> None:
    worker = make_worker(TALLY_GRACE_SECONDS="1").start()
    # Event time half a minute into the previous minute; later "now" samples close it.
    if now_ms() % 60_000 < 3_000:
        time.sleep(3)
    minute = (now_ms() // 60_000 - 1) * 60_000
    values: dict[str, list[float]] = defaultdict(list)
    rows = []
    for n, value in enumerate([3.0, 9.5, 1.25, 7.0]):
        for metric in ("cpu", "mem"):
            rows.append(sample("web-1", metric, minute + 30_000 + n, value))
            values[metric].append(value)
    post(worker, "metrics", rows)
    t = f"{time.strftime('%Y-%m-%dT%H:%M:00Z', time.gmtime(minute / 1000))}"

    server = EventStream(worker.url, "/api/stream/servers/web-1")
    first = server.next()
    assert first.event == "snapshot"
    points = SeriesClient()
    points.apply(first)
    server.until(lambda e: points.apply(e).get(("cpu", t), {}).get("count") == 4, 10, "4 cpu")
    assert points.latest[("cpu", t)] == {
        "series": "cpu",
        "t": t,
        **point_stats(values["cpu"]),
        "state": "provisional",
    }
    assert t in points.meta["open_minutes"]
    across = EventStream(worker.url, "/api/stream/metrics/cpu")
    first = across.next()
    assert first.event == "snapshot"

    # One sample now moves the partition's event clock past the minute and its grace.
    more = [sample("web-1", "cpu", minute + 45_000, 20.0), sample("web-1", "cpu", now_ms(), 1)]
    post(worker, "metrics", more)
    values["cpu"].append(20.0)
    final, seen = server.until(
        lambda e: (
            e.event == "point"
            and e.data["t"] == t
            and e.data["state"] == "final"
            and e.data["series"] == "cpu"
        ),
        15,
        "final cpu point",
    )
    assert final.data == {"series": "cpu", "t": t, **point_stats(values["cpu"]), "state": "final"}
    assert any(e.event == "meta" and t not in e.data["open_minutes"] for e in seen)

    # The metric across servers: same minute, same values (one server), final too.
    final_all, _ = across.until(
        lambda e: e.event in ("point", "snapshot") and final_point(e, t) is not None, 15
    )
    assert final_point(final_all, t) == {**point_stats(values["cpu"]), "state": "final"}

    # A bad parameter is a 400 with a reason, not a stream.
    bad = EventStream(worker.url, "/api/stream/servers/web-1?minutes=100000")
    assert bad.status == 400
    assert "minutes" in json.loads(bad.response.read())["error"]
    for stream in (server, across, bad):
        stream.close()


class SeriesClient:
    """What a dashboard holds: the snapshot's points, then every point event applied."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        self.meta: dict[str, Any] = {}

    def apply(self, event: ServerSentEvent) -> dict[tuple[str, str], dict[str, Any]]:
        if event.event == "snapshot":
            self.meta = {k: v for k, v in event.data.items() if k != "series"}
            self.latest = {
                (p["series"], p["t"]): p for ps in event.data["series"].values() for p in ps
            }
        elif event.event == "meta":
            self.meta = event.data
        elif event.event == "point":
            self.latest[(event.data["series"], event.data["t"])] = event.data
        return self.latest


def final_point(event: ServerSentEvent, t: str) -> dict[str, Any] | None:
    points = event.data["series"]["all"] if event.event == "snapshot" else [event.data]
    for p in points:
        if p["t"] == t and p["state"] == "final":
            return {k: p[k] for k in ("min", "max", "avg", "count", "state")}
    return None


def stalled_client(worker: Worker, path: str) -> socket.socket:
    """A client that asks for a stream and never reads it (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", worker.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {worker.token}\r\n\r\n".encode()
    )
    return sock


def live_clients(worker: Worker) -> float:
    for line in worker.text("/metrics").splitlines():
        if line.startswith("tally_live_clients "):
            return float(line.split()[1])
    return -1


def test_stalled_clients_do_not_hold_back_the_others(make_worker: WorkerFactory) -> None:
    worker = make_worker().start()
    stalled = [stalled_client(worker, "/api/stream/sales/top") for _ in range(30)]
    stalled += [stalled_client(worker, "/api/stream/servers/web-1") for _ in range(10)]
    reader = EventStream(worker.url, "/api/stream/sales/top")
    wait_until(lambda: live_clients(worker) == 41, 10, what="41 live clients")
    post(worker, "purchases", [purchase_row(99_999, "warm-up", 1, now_ms())])
    wait_until(lambda: worker.get("/api/sales/top")["items"], 15, what="warm-up counted")
    total = 0
    for round_no in range(5):
        total += 1 + round_no
        rows = [
            purchase_row(round_no * 100 + n, f"i{n}", 1 + round_no, now_ms()) for n in range(20)
        ]
        post(worker, "purchases", rows)
        posted = time.monotonic()
        reader.until(
            lambda e, want=("i0", total): want in items_of(e.data),
            10,
            f"i0 at {total}",
        )
        assert time.monotonic() - posted < 3.0
    assert worker.get_status("/api/health")[0] == 200
    for sock in stalled:
        sock.close()
    reader.close()
    wait_until(lambda: live_clients(worker) == 0, 40, what="clients gone")


def test_dashboard_in_headless_chromium_shows_the_live_top_10(
    broker: LocalBroker, make_worker: WorkerFactory, registry_dir: Path
) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium (or set TALLY_CHROMIUM)"
    )
    worker = make_worker(
        TALLY_PIPELINES="sales,metrics,archive,social,recommendations,coupons"
    ).start()
    # A campaign of the default tenant: its row on the page, nothing pushed yet.
    spring = demo_campaign("", now_ms())
    asyncio.run(publish_campaign([broker.bootstrap], "coupon-campaigns", 1, *campaign_of(spring)))
    sent = [purchase_row(n, f"item-{n % 14:02d}", 1 + n % 14, now_ms()) for n in range(140)]
    # The default tenant's posts, a third negative: the social panel shows them.
    feed = social_posts(random.Random(5), clock_ms=lambda: now_ms() - 5000, channels=("x",))
    posts = [next(feed) for _ in range(30)]
    produce(
        broker.bootstrap,
        "social-raw",
        [(None, p.value) for p in posts],
        headers=[("tally.channel", b"x")],
    )
    # Two sessions viewed shoe-1 and shoe-2; session "c" views shoe-1: shoe-2 is for it.
    views = codec_in(registry_dir, "page-views-value", "page_view", validate_page_view)
    viewed = [("a", "shoe-1"), ("a", "shoe-2"), ("b", "shoe-1"), ("b", "shoe-2"), ("c", "shoe-1")]
    produce(
        broker.bootstrap,
        "page-views",
        [
            (s.encode(), views.dumps({"session_id": s, "item_id": i, "viewed_at_ms": now_ms()}))
            for s, i in viewed
        ],
    )
    post(worker, "purchases", sent)
    post(worker, "metrics", [sample("server-0000", "cpu.util", now_ms() - 1000, 42.0)])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            anonymous = browser.new_page()
            anonymous.goto(worker.url + "/")  # no token: the page asks for one
            anonymous.locator("#token-form").wait_for(state="visible", timeout=10_000)
            assert "tally tokens issue" in anonymous.locator("#token-reason").inner_text()
            anonymous.close()

            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(f"{worker.url}/#token={worker.token}&brand=default&session=c")
            assert "token=" not in page.url  # taken out of the address bar
            assert page.locator("#token-form").is_hidden()
            expected = wait_until(lambda: worker.get("/api/sales/top")["items"], 10, what="top")
            rows = page.locator("#top-list li")
            wait_until(lambda: rows.count() == 10, 10, what="10 rows on the page")

            def shown() -> list[tuple[str, int]]:
                # One reading of every row (three separate ones can straddle a row's arrival).
                rows = page.locator("#top-list li").evaluate_all(
                    "rows => rows.map(r => ['.rank', '.name', '.qty'].map("
                    "  part => r.querySelector(part).textContent))"
                )
                ordered = sorted(rows, key=lambda r: int(r[0]))
                return [(name, int(qty.replace(",", ""))) for _, name, qty in ordered]

            wait_until(lambda: shown() == items_of({"items": expected}), 10, what="API's top-10")
            assert page.locator("#connection").inner_text() == "live"

            post(worker, "purchases", [purchase_row(999, "item-new", 10_000, now_ms())])
            posted = time.monotonic()
            wait_until(lambda: shown()[0] == ("item-new", 10_000), 10, what="item-new on top")
            assert time.monotonic() - posted < 3.0
            wait_until(lambda: page.locator("#chart polyline.avg").count() == 1, 10, what="chart")
            assert page.locator("#chart circle.open").count() >= 1  # an open (provisional) minute
            # The brand's posts, live, and its open alerts, which a click acknowledges.
            total = sum(len(p.posts) for p in posts)
            wait_until(
                lambda: page.locator("#social-posts").inner_text() == str(total),
                30,
                what="the brand's posts on the page",
            )
            assert page.locator("#social-chart rect").count() > 0
            queue = worker.get("/api/social/alerts")
            alerts = page.locator("#alerts li")
            assert queue["counts"]["open"] > 0  # (this seed's posts open some)
            wait_until(lambda: alerts.count() == min(10, queue["counts"]["open"]), 10, "alerts")
            alerts.first.locator("button", has_text="ack").click()
            wait_until(
                lambda: worker.get("/api/social/alerts")["counts"]["acked"] == 1,
                10,
                what="the alert acknowledged from the page",
            )
            # Session c's recommendations: shoe-2, viewed with shoe-1 by two sessions.
            wait_until(
                lambda: (
                    page.locator("#session-recommendations li").all_inner_texts()
                    == ["shoe-2 · 2 sessions"]
                ),
                30,
                what="session c's recommendations on the page",
            )
            assert page.locator("#session-recent").inner_text() == "shoe-1"
            wait_until(
                lambda: (
                    page.locator("#coupon-campaigns td").first.inner_text() == spring["campaign_id"]
                ),
                30,
                what="the campaign on the page",
            )
            page.wait_for_timeout(700)  # let the rank animation finish for the picture
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert problems == [], f"console errors on the dashboard: {problems}"
