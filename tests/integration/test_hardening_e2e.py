"""No input and no outage takes a worker down, through the real broker and real HTTP: poison
pills sent straight to Kafka and through ingest, a crash loop ended by quarantine, hostile
HTTP, and the broker gone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec, Record
from tally.core.clock import now_ms
from tally.core.deadletters import DeadLetter
from tally.core.limits import MAX_METRICS_PER_SERVER_MINUTE, usable_id
from tally.core.partitioning import group_by_partition, partition_for
from tally.core.topk import rank_key
from tally.ingest.rows import CUT_MARGIN, WINDOW
from tests.conftest import WorkerFactory
from tests.harness import (
    Worker,
    consume,
    headers_of,
    produce,
    purchase_row,
    raw_exchange,
    wait_until,
)
from tests.strategies import HOSTILE_IDS

PARTITIONS = 4


def purchase(n: int, item: str, quantity: int, at_ms: int) -> Record:
    return {**purchase_row(n, item, quantity, at_ms), "metadata": {}}


def top_10(purchases: list[Record]) -> list[tuple[str, int]]:
    totals: Counter[str] = Counter()
    for p in purchases:
        totals[p["item_id"]] += p["quantity"]
    return sorted(totals.items(), key=rank_key)[:10]


def shown_top(worker: Worker) -> list[tuple[str, int]]:
    return [(i["item_id"], i["quantity"]) for i in worker.get("/api/sales/top")["items"]]


def letters(bootstrap: str, expect: int) -> list[tuple[Any, DeadLetter]]:
    records = consume(bootstrap, "dead-letters", expect=expect, timeout=60)
    return [(r, DeadLetter.from_headers(headers_of(r))) for r in records]


def summary_counts(worker: Worker, server: str) -> dict[str, tuple[int, float, float]]:
    answer = worker.get(f"/api/servers/{server}/summary")["metrics"]
    return {m: (p["count"], p["min"], p["max"]) for m, p in answer.items()}


def test_poison_pills_through_kafka_and_ingest_are_dead_lettered_and_the_rest_counts(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    purchase_codec: AvroCodec,
    purchase_batch_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
) -> None:
    worker = make_worker().start()
    wall = now_ms()
    good = [purchase(n, f"item-{n % 9}", 1 + n % 4, wall - 5000 - n) for n in range(400)]
    # The reported crash: six valid-looking purchases with 250,000-character item ids and
    # quantities near 10^9; then the other ids a key cannot hold.
    hostile_ids = [f"{n}{'x' * 250_000}" for n in range(6)]
    hostile_ids += ["a|b", "nul\x00id", "line\r\nbreak", "y" * 100_000]
    poison = [purchase(1000 + n, i, 999_999_999, wall - 500) for n, i in enumerate(hostile_ids)]
    singles = [(p["item_id"].encode(), purchase_codec.dumps(p)) for p in good[:200] + poison]
    landed = produce(broker.bootstrap, "purchases", singles)
    expected: Counter[tuple[str, str]] = Counter(
        ("bad_id", f"purchases[{m.partition}]@{m.offset}") for m in landed[200:]
    )
    # Envelopes: good and poison members of a partition together; each poison member is
    # dead-lettered alone, the good ones count.
    in_envelopes = [p for p in poison if len(p["item_id"]) < 200_000]  # a message stays < 1 MB
    envelopes = group_by_partition(good[200:] + in_envelopes, "item_id", PARTITIONS)
    landed = produce(
        broker.bootstrap,
        "purchases",
        [
            (None, purchase_batch_codec.dumps({"purchases": members}), partition)
            for partition, members in envelopes.items()
        ],
    )
    for (partition, members), at in zip(envelopes.items(), landed, strict=True):
        for member in members:
            if member in poison:
                expected[("bad_id", f"purchases[{partition}]@{at.offset}")] += 1

    # Metrics: good batches, batches from servers whose id cannot be a key, samples whose
    # metric id cannot, and one server reporting more metrics in a minute than a record holds.
    minute = wall - wall % 60_000 - 60_000
    good_batches = [
        {
            "server_id": f"srv-{s}",
            "sent_at_ms": wall,
            "samples": [
                {"metric_id": m, "ts_ms": minute + k * 1000, "value": float(s * 100 + k)}
                for m in ("cpu", "mem")
                for k in range(10)
            ],
        }
        for s in range(6)
    ]
    crowded = {
        "server_id": "srv-many",
        "sent_at_ms": wall,
        "samples": [
            {"metric_id": f"m{n:04d}", "ts_ms": minute + 5, "value": 1.0}
            for n in range(MAX_METRICS_PER_SERVER_MINUTE + 200)
        ],
    }
    bad_servers = [
        {"server_id": sid, "sent_at_ms": wall, "samples": good_batches[0]["samples"][:1]}
        for sid in ("s" * 250_000, "web|1", "tab\tserver")
    ]
    bad_metrics = {
        "server_id": "srv-0",
        "sent_at_ms": wall,
        "samples": [
            {"metric_id": metric, "ts_ms": minute + 1, "value": 1.0}
            for metric in ("cpu\x00", "m" * 300, "a|b")
        ],
    }
    batches = [*good_batches, crowded, *bad_servers, bad_metrics]
    landed = produce(
        broker.bootstrap,
        "metric-samples",
        [(b["server_id"].encode(), metric_batch_codec.dumps(b)) for b in batches],
    )
    at = {
        "bad-metrics" if batch is bad_metrics else batch["server_id"]: where
        for batch, where in zip(batches, landed, strict=True)
    }
    origin = lambda key: f"metric-samples[{at[key].partition}]@{at[key].offset}"  # noqa: E731
    expected[("too_many_metrics", origin("srv-many"))] += 200
    for batch in bad_servers:
        expected[("bad_id", origin(batch["server_id"]))] += 1
    expected[("bad_id", origin("bad-metrics"))] += 3

    # The same poison through ingest: refused row by row, the good rows of the body counted.
    more = [purchase(2000 + n, f"item-{n % 5}", 2, wall - 400) for n in range(50)]
    body = [*more[:25], *({k: v for k, v in p.items() if k != "metadata"} for p in poison)]
    body += more[25:]
    status, answer, _ = worker.post("/api/ingest/purchases", json.dumps(body).encode())
    assert status == 202, answer
    assert answer["accepted"] == 50 and answer["rejected"] == len(poison)
    assert {r["rule"] for r in answer["rejections"]} == {"bad_id"}
    assert [r["index"] for r in answer["rejections"]] == list(range(25, 25 + len(poison)))
    for rejection in answer["rejections"]:
        expected[
            (
                "bad_id",
                f"POST /api/ingest/purchases {answer['request_id']} row {rejection['index']}",
            )
        ] += 1

    # Every poison event is a dead letter with its rule and origin, no more, no less.
    found = letters(broker.bootstrap, sum(expected.values()))
    assert Counter((letter.rule, letter.origin) for _, letter in found) == expected

    truth = top_10(good + more)
    wait_until(lambda: shown_top(worker) == truth, 30, what="top-10 equal to brute force")
    expected_metrics = {
        f"srv-{s}": {m: (10, float(s * 100), float(s * 100 + 9)) for m in ("cpu", "mem")}
        for s in range(6)
    }
    expected_metrics["srv-many"] = {
        f"m{n:04d}": (1, 1.0, 1.0) for n in range(MAX_METRICS_PER_SERVER_MINUTE)
    }
    wait_until(
        lambda: all(summary_counts(worker, s) == m for s, m in expected_metrics.items()),
        30,
        what="metric summaries equal to brute force",
    )
    time.sleep(12)  # two heartbeats: each re-publishes every partition's top-K
    assert worker.process is not None and worker.process.poll() is None, worker.tail()
    assert shown_top(worker) == truth

    # The crash loop was: restarted on the same data dir, the worker died again.
    worker.stop()
    worker.start()
    time.sleep(8)
    assert worker.process is not None and worker.process.poll() is None, worker.tail()
    assert shown_top(worker) == truth


def run_until_steady(worker: Worker, steady: Any, timeout: float = 240) -> list[int]:
    """Start `worker` again each time it dies, until `steady()` holds with it alive; returns
    the exit codes of its deaths."""
    deaths: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.process is not None
        if worker.process.poll() is not None:
            deaths.append(worker.process.returncode)
            assert len(deaths) <= 4, f"a crash loop: {deaths}\n{worker.tail()}"
            with suppress(AssertionError):  # it may die again before it is ready
                worker.start()
            continue
        with suppress(OSError):
            if steady():
                return deaths
        time.sleep(0.5)
    raise AssertionError(f"not steady after {timeout} s; deaths {deaths}\n{worker.tail()}")


def test_an_event_that_kills_the_worker_is_quarantined_after_three_deaths(
    broker: LocalBroker, make_worker: WorkerFactory, purchase_codec: AvroCodec
) -> None:
    worker = make_worker(TALLY_FAULT_CRASH_ON="KILLS-THE-WORKER").start()
    wall = now_ms()
    good = [purchase(n, f"item-{n % 11}", 1 + n % 5, wall - 3000 - n) for n in range(300)]
    killer = purchase(9999, "item-3", 7, wall - 2000)
    killer["purchase_id"] = "KILLS-THE-WORKER"
    messages = [(p["item_id"].encode(), purchase_codec.dumps(p)) for p in good[:150]]
    messages.append((killer["item_id"].encode(), purchase_codec.dumps(killer)))
    messages += [(p["item_id"].encode(), purchase_codec.dumps(p)) for p in good[150:]]
    landed = produce(broker.bootstrap, "purchases", messages)
    killer_at = landed[150]
    truth = top_10(good)

    def steady() -> bool:
        return shown_top(worker) == truth

    deaths = run_until_steady(worker, steady)
    # First death: the batch holding it; then twice alone, after each restart; then set aside.
    assert deaths == [70, 70, 70], worker.tail()
    ((record, letter),) = letters(broker.bootstrap, 1)
    assert letter.rule == "quarantined" and letter.stage == "process"
    assert letter.origin == f"purchases[{killer_at.partition}]@{killer_at.offset}"
    assert purchase_codec.loads(record.value)["purchase_id"] == "KILLS-THE-WORKER"
    assert "quarantined" in worker.log()
    time.sleep(6)
    assert worker.process is not None and worker.process.poll() is None
    assert shown_top(worker) == truth
    item = worker.get("/api/sales/items/item-3")["quantity"]
    assert item == sum(p["quantity"] for p in good if p["item_id"] == "item-3")


def test_messages_dropped_between_the_client_and_faust_are_read_again_first_to_last(
    broker: LocalBroker, make_worker: WorkerFactory, purchase_codec: AvroCodec
) -> None:
    """Faust drops messages it fetched around a rebalance. One dropped with messages after
    it is a hole the next batch shows, even a partition's first (nothing committed yet);
    one dropped at a partition's end, even its only one, shows only as a stall, and is read
    again all the same."""
    worker = make_worker(TALLY_FAULT_DROP_FETCHED="DROPPED-ONCE").start()
    wall = now_ms()
    names = [f"item-{n}" for n in range(60)]
    on = {p: [i for i in names if partition_for(i, PARTITIONS) == p] for p in range(4)}
    first, middle, last, alone = (on[p][0] for p in range(4))
    dropped = {
        item: purchase(5000 + n, item, 50 + 10 * n, wall - 6000)
        for n, item in enumerate((first, middle, last, alone))
    }
    for n, record in enumerate(dropped.values()):
        record["purchase_id"] = f"DROPPED-ONCE-{n}"
    items = on[0] + on[1] + on[2]  # partition 3 holds only the one dropped
    good = [purchase(n, items[n % len(items)], 1 + n % 5, wall - 5000 - n) for n in range(200)]
    after = [purchase(6000 + n, on[1][n % 2], 1, wall - 2500) for n in range(5)]
    # The first message of partition 0, one in the middle of 1, the last of 2, 3's only one.
    sent = [dropped[first], *good, dropped[middle], *after, dropped[last], dropped[alone]]
    landed = produce(
        broker.bootstrap,
        "purchases",
        [(p["item_id"].encode(), purchase_codec.dumps(p)) for p in sent],
    )
    assert [(m.partition, m.offset) for m in (landed[0], landed[-1])] == [(0, 0), (3, 0)]
    assert landed[-2].partition == 2
    truth = top_10(sent)
    wait_until(lambda: shown_top(worker) == truth, 90, what="the top 10 with all four")
    log = worker.log()
    # One of the two holes' warnings may be folded into a count of repeats; so may one of the
    # two tails'.
    holes = {"purchases[0]: offset 0 ", f"purchases[1]: offset {landed[201].offset} "}
    assert any(f"{hole}was not delivered" in log for hole in holes), worker.tail()
    tails = {
        f"purchases[2]: 1 waiting message(s) from {landed[-2].offset} ",
        "purchases[3]: 1 waiting message(s) from 0 ",
    }
    assert any(f"{tail}were fetched and no agent holds them" in log for tail in tails), (
        worker.tail()
    )
    for item in dropped:
        quantity = worker.get(f"/api/sales/items/{item}")["quantity"]
        assert quantity == sum(p["quantity"] for p in sent if p["item_id"] == item)


@contextmanager
def health_watched(worker: Worker) -> Iterator[list[tuple[int, float]]]:
    """Polls /api/health every 50 ms meanwhile: (status, seconds) of each answer."""
    seen: list[tuple[int, float]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = worker.get_status("/api/health")[0]
            except OSError:
                status = 0
            seen.append((status, time.monotonic() - started))
            time.sleep(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def bomb(inflated_mib: int) -> bytes:
    """A gzip body that inflates to `inflated_mib` MiB of zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(inflated_mib)) + packer.flush()


def request(
    worker: Worker, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, Any, float]:
    import urllib.error
    import urllib.request

    started = time.monotonic()
    call = worker.request(path, headers, data=body, method=method)
    try:
        with urllib.request.urlopen(call, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw or b"null"), time.monotonic() - started


def test_hostile_requests_get_4xx_and_the_worker_keeps_answering(
    broker: LocalBroker, make_worker: WorkerFactory
) -> None:
    worker = make_worker(TALLY_HTTP_HEADER_TIMEOUT_SECONDS="2").start()
    json_type = {"Content-Type": "application/json"}
    refused_bodies = 0
    with health_watched(worker) as health:
        # Many rows in a small body: refused after the row limit, one dead letter, quickly.
        for count in (100_000, 200_000):
            body = b"[" + b",".join([b"1"] * count) + b"]"
            status, answer, took = request(
                worker, "POST", "/api/ingest/purchases", body, **json_type
            )
            assert status == 413 and "10,000 rows" in answer["error"], answer
            assert took < 5, took
            refused_bodies += 1
        # A gzip bomb (2 MB inflating to 2 GiB), on a POST and on a GET.
        packed = bomb(1024)  # about 1 MB
        status, answer, took = request(
            worker, "POST", "/api/ingest/purchases", packed,
            **json_type, **{"Content-Encoding": "gzip"},
        )  # fmt: skip
        assert status == 413 and took < 5, (status, answer, took)
        refused_bodies += 1
        status, _, took = request(
            worker, "GET", "/api/health", packed, **{"Content-Encoding": "gzip"}
        )
        assert status == 200 and took < 5
        # Encodings and media types a browser on another site could send.
        status, answer, _ = request(
            worker, "POST", "/api/ingest/purchases", b"[]",
            **json_type, **{"Content-Encoding": "bogus"},
        )  # fmt: skip
        assert status == 415 and "bogus" in answer["error"]
        for path in ("/api/ingest/purchases", "/registry/subjects/evil-value/versions"):
            status, answer, _ = request(
                worker,
                "POST",
                path,
                b'{"schema": "\\"string\\""}',
                **{"Content-Type": "text/plain"},
            )
            assert status == 415, (path, answer)
            status, _, _ = request(
                worker, "POST", path, b"[]", **json_type, **{"Sec-Fetch-Site": "cross-site"}
            )
            assert status == 403
        # Expect: 100-continue with a body over the limit: 413 before any body is sent.
        head = (
            b"POST /api/ingest/purchases HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
        )
        answer_bytes, _ = raw_exchange(worker.url, head, 3.0)
        assert answer_bytes.startswith(b"HTTP/1.1 413"), answer_bytes[:100]
        # Half-sent headers: the connection is closed after the header timeout.
        answer_bytes, open_for = raw_exchange(worker.url, b"GET /api/health HTTP/1.1\r\nHost:", 20)
        assert answer_bytes == b"" and open_for < 6, (answer_bytes, open_for)
        # The schema registry: every parameter bounded, 4xx with Confluent's codes.
        subjects = "/registry/subjects/"
        string_schema = b'{"schema": "\\"string\\""}'
        huge = b'{"schema": "' + b"x" * 1_100_000 + b'"}'
        for method, path, body, status_wanted, code in [
            ("GET", f"{subjects}{'s' * 300}/versions", None, 404, 40401),
            ("POST", f"{subjects}{'s' * 300}/versions", string_schema, 422, 42201),
            ("GET", "/registry/schemas/ids/" + "9" * 300, None, 404, 40403),
            ("GET", f"{subjects}purchases-value/versions/{'9' * 4400}", None, 422, 42202),
            ("POST", f"{subjects}big-value/versions", huge, 413, 413),
            ("POST", f"{subjects}bad-value/versions", b"{nope", 422, 42201),
        ]:
            status, answer, _ = request(worker, method, path, body, **json_type)
            assert (status, answer["error_code"]) == (status_wanted, code), (path[:60], answer)
        status, answer, _ = request(
            worker, "GET", "/registry/subjects/purchases-value/versions/latest"
        )
        assert status == 200 and answer["version"] >= 1
        # A rejected row carrying a secret: counted in the stats, its payload never shown there.
        secret = {**purchase_row(1, "item-1", 1, now_ms()), "api_key": "sk-live-0123456789"}
        status, answer, _ = request(
            worker, "POST", "/api/ingest/purchases", json.dumps([secret]).encode(), **json_type
        )
        assert status == 202 and answer["rejected"] == 1
        stats = wait_until(
            lambda: (
                (s := worker.get("/api/dead-letters/stats"))["total"] >= refused_bodies + 1 and s
            ),
            30,
            what="stats",
        )
        assert "sk-live" not in json.dumps(stats)
        assert all("preview" not in letter for letter in stats["latest"])
    assert worker.process is not None and worker.process.poll() is None, worker.tail()
    statuses = Counter(status for status, _ in health)
    assert statuses == Counter({200: len(health)}), statuses
    slowest = max(took for _, took in health)
    assert slowest < 2.0, f"/api/health took {slowest:.2f} s at worst"
    found = letters(broker.bootstrap, refused_bodies + 1)
    rules = Counter(letter.rule for _, letter in found)
    assert rules == Counter({"body_too_large": refused_bodies, "unknown_field": 1}), rules


def test_hostile_ids_through_ingest_are_rejected_by_rule_or_accepted_whole(
    broker: LocalBroker, make_worker: WorkerFactory
) -> None:
    worker = make_worker().start()
    wall = now_ms()
    accepted: dict[str, Counter[str]] = defaultdict(Counter)
    rejected = 0

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(HOSTILE_IDS, min_size=1, max_size=5), st.sampled_from(["purchases", "metrics"]))
    def post_ids(ids: list[str], endpoint: str) -> None:
        nonlocal rejected
        if endpoint == "purchases":
            rows = [purchase_row(n, item, 1, wall) for n, item in enumerate(ids)]
        else:
            rows = [
                {"server_id": item, "metric_id": item, "ts_ms": wall, "value": 1.0} for item in ids
            ]
        status, answer, _ = worker.post(f"/api/ingest/{endpoint}", json.dumps(rows).encode())
        if max(len(json.dumps(row)) for row in rows) > WINDOW - CUT_MARGIN:
            assert status == 413 and answer["rule"] == "body_too_large", answer  # no row read
            rejected += 1  # the body's own dead letter
            return
        assert status == 202, (status, answer)
        refused = {r["index"]: r["rule"] for r in answer["rejections"]}
        for index, item in enumerate(ids):
            assert (index in refused) == (not usable_id(item)), (item[:50], answer)
            assert refused.get(index, "bad_id") in ("bad_id", "bad_text", "row_too_large")
            if index not in refused:
                accepted[endpoint][item] += 1
        rejected += len(refused)

    post_ids()
    if rejected:
        assert len(letters(broker.bootstrap, rejected)) == rejected
    truth = top_10(
        [
            purchase_row(0, item, 1, wall)
            for item, n in accepted["purchases"].items()
            for _ in range(n)
        ]
    )
    wait_until(lambda: shown_top(worker) == truth, 30, what="top-10 of the accepted ids")
    plain = [(s, n) for s, n in accepted["metrics"].items() if re.fullmatch(r"[\w.-]+", s)]
    for server, count in plain[:5]:
        path = f"/api/servers/{quote(server, safe='')}/summary"
        wait_until(
            lambda: worker.get(path)["metrics"].get(server, {}).get("count") == count,  # noqa: B023
            30,
            what=f"{server[:20]!r} counted",
        )
    assert worker.process is not None and worker.process.poll() is None


def test_a_page_on_another_site_cannot_write_through_a_browser(
    broker: LocalBroker, make_worker: WorkerFactory, tmp_path: Any
) -> None:
    from playwright.sync_api import sync_playwright

    from tests.integration.test_live_e2e import CHROMIUM

    worker = make_worker().start()
    rows = json.dumps([purchase_row(1, "item-from-elsewhere", 5, now_ms())])
    schema = json.dumps({"schema": json.dumps({"type": "string"})})
    page_html = f"""<script>
      const target = {json.dumps(worker.url)};
      Promise.allSettled([
        fetch(target + "/api/ingest/purchases",
              {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                body: {json.dumps(rows)}}}),
        fetch(target + "/registry/subjects/evil-value/versions",
              {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                body: {json.dumps(schema)}}}),
        fetch(target + "/api/ingest/purchases",
              {{method: "POST", headers: {{"Content-Type": "application/json"}},
                body: {json.dumps(rows)}}}),
      ]).then(() => {{ document.title = "sent"; }});
    </script>"""
    (tmp_path / "evil.html").write_text(page_html)
    other_site = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port_line = other_site.stdout.readline()  # type: ignore[union-attr]
        port = int(port_line.split("port ")[1].split(" ")[0])
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                page = browser.new_page()
                page.goto(f"http://localhost:{port}/evil.html")  # another origin than 127.0.0.1
                page.wait_for_function("document.title === 'sent'", timeout=20_000)
            finally:
                browser.close()
    finally:
        other_site.send_signal(signal.SIGTERM)
        other_site.wait(10)
    time.sleep(3)
    assert "evil-value" not in worker.get("/registry/subjects")
    assert all(i["item_id"] != "item-from-elsewhere" for i in worker.get("/api/sales/top")["items"])
    assert consume(broker.bootstrap, "purchases", expect=1, timeout=5) == []


def log_lines(worker: Worker) -> int:
    return len(worker.log().splitlines())


def test_when_the_broker_is_gone_the_worker_says_so_stays_quiet_and_stops_in_time(
    broker: LocalBroker, make_worker: WorkerFactory
) -> None:
    worker = make_worker().start()
    row = json.dumps([purchase_row(1, "item-1", 1, now_ms())]).encode()
    assert worker.post("/api/ingest/purchases", row)[0] == 202
    env = {
        **os.environ,
        **worker.env,
        "TALLY_WEB_PORT": str(worker.port),
        "TALLY_TOKEN": worker.token,
    }
    feed = subprocess.Popen(
        [sys.executable, "-m", "tally", "feed", "sales", "--rate", "50"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(
        lambda: any(i["item_id"] != "item-1" for i in worker.get("/api/sales/top")["items"]),
        60,
        what="the feed's purchases counted",
    )

    assert broker.process is not None
    broker.process.kill()  # SIGKILL: no goodbye to clients
    broker.stop()
    gone = time.monotonic()
    lines_before = log_lines(worker)
    agent = subprocess.Popen(
        [
            sys.executable, "-m", "tally", "agent", "--servers", "2", "--interval", "1s",
            "--give-up", "5s", "--url", worker.url,
        ],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    status, answer = wait_until(
        lambda: (s := worker.get_status("/api/health"))[0] == 503 and s, 5, 0.1, "readiness 503"
    )
    assert "broker is unreachable" in answer["reason"], answer
    assert worker.get_status("/api/health/live")[0] == 200
    started = time.monotonic()
    status, answer, headers = worker.post("/api/ingest/purchases", row)
    assert status == 503 and time.monotonic() - started < 1.0, (status, answer)
    assert headers["Retry-After"] and "retry" in answer["error"]

    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 1 and "agent gave up" in err, (out, err)
    out, err = feed.communicate(timeout=60)
    assert feed.returncode == 1 and "broker" in err and "acknowledged" in err, (out, err)

    time.sleep(max(0.0, 60 - (time.monotonic() - gone)))
    logged = log_lines(worker) - lines_before
    assert logged <= 10, (
        f"{logged} log lines in the minute after the broker went:\n{worker.tail(40)}"
    )

    started = time.monotonic()
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(45)
    took = time.monotonic() - started
    assert took < 30, f"SIGTERM took {took:.1f} s (exit code {code})"


def test_a_record_too_large_for_its_changelog_dead_letters_the_event_that_made_it(
    broker: LocalBroker, make_worker: WorkerFactory, metric_batch_codec: AvroCodec
) -> None:
    """The by-metric index keeps one record per (metric, minute) with every server in it: with
    enough servers of long ids it would outgrow a Kafka message. The update that would make it
    so is dead-lettered (rule too_large) instead of failing the producer later, message by
    message: every server is either in the index or in a dead letter, never both, never
    neither. The worker goes on, and each server's own rollup counts every sample."""
    worker = make_worker().start()
    wall = now_ms()
    minute = wall - wall % 60_000 - 60_000
    servers = [f"srv-{n:05d}-{'x' * 240}" for n in range(4000)]
    batches = [
        {
            "server_id": server,
            "sent_at_ms": wall,
            "samples": [{"metric_id": "cpu", "ts_ms": minute + 7, "value": 1.0}],
        }
        for server in servers
    ]
    produce(
        broker.bootstrap,
        "metric-samples",
        [(b["server_id"].encode(), metric_batch_codec.dumps(b)) for b in batches],
    )

    def too_large() -> list[tuple[DeadLetter, bytes]]:
        records = consume(broker.bootstrap, "dead-letters", expect=1, timeout=5)
        return [
            (letter, record.value or b"")
            for record in records
            if (letter := DeadLetter.from_headers(headers_of(record))).rule == "too_large"
        ]

    found = wait_until(too_large, 90, 1.0, "a too_large dead letter")
    assert all(letter.topic.startswith("metric-rollups-by-metric") for letter, _ in found), found
    assert "at most 900,000" in found[0][0].reason
    for server in servers[::500]:
        path = f"/api/servers/{quote(server, safe='')}/summary"
        wait_until(lambda: worker.get(path)["metrics"].get("cpu", {}).get("count") == 1, 30)  # noqa: B023

    def accounted() -> tuple[set[str], set[str]] | None:
        indexed = set(worker.get("/api/metrics/cpu?step=1m&by=server&tenant=default")["servers"])
        refused = {cell[2] for _, value in too_large() for cell in json.loads(value)["cells"]}
        return (indexed, refused) if len(indexed | refused) == len(servers) else None

    indexed, refused = wait_until(accounted, 60, 1.0, "every server indexed or refused")
    assert indexed and refused and not indexed & refused, (len(indexed), len(refused))
    time.sleep(5)
    assert worker.process is not None and worker.process.poll() is None, worker.tail()
