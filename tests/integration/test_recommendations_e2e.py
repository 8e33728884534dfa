"""Page views through the real broker, on two workers with standbys, event time set by the
test (nine days of sessions, ending an hour or two ago): librdkafka on its defaults sends them
(its partitioner is not murmur2: the pipeline moves each view to its session's partition),
in order within a few minutes, some twice, some invalid, some stale; the views re-keyed to
their sessions' partitions are all sent again, as a forwarder that died before committing
does. Recommendations equal brute force over the same views (co-views of the last 7 days,
seen items excluded); sessions expire at their time to live: gone for reads, tombstoned in
the changelog, still gone after the active worker is killed and its standby takes over, and
after a worker restores everything from the changelogs into an empty data dir."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import urllib.error
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec, validate_page_view
from tally.core.clock import now_ms
from tally.core.deadletters import DeadLetter
from tally.core.partitioning import ORIGIN_HEADER, partition_for
from tally.topics import SESSION_VIEWS
from tests.conftest import WorkerFactory, codec_in
from tests.harness import Worker, consume, events_total, headers_of, start_all, wait_until

HOUR = 3_600_000
MINUTE = 60_000
TTL_S = 1800
TTL = TTL_S * 1000
PARTITIONS = 4
TENANTS = ("acme", "globex")
RECOMMENDATIONS = {
    "TALLY_PIPELINES": "recommendations",
    "TALLY_SESSION_TTL_SECONDS": str(TTL_S),
    "TALLY_STANDBY_REPLICAS": "1",
    "TALLY_AUTH_RATE": "0",
}
#: A view: (tenant, session, item, event time ms).
View = tuple[str, str, str, int]


def item_of(rng: random.Random, category: int) -> str:
    """Items of a category are viewed together; low numbers are popular."""
    rank = min(int(rng.expovariate(0.4)), 9)
    return f"c{category}-i{rank}"


def browsing(rng: random.Random, start_ms: int, end_ms: int, sessions: int) -> list[View]:
    """Sessions of 2 to 8 views a minute apart, most in one category, at random times."""
    views = []
    for number in range(sessions):
        tenant = TENANTS[number % len(TENANTS)]
        at = rng.randrange(start_ms, end_ms - 10 * MINUTE)
        category = rng.randrange(6)
        for step in range(rng.randint(2, 8)):
            shown = category if rng.random() < 0.8 else rng.randrange(6)
            views.append((tenant, f"s{number}", item_of(rng, shown), at + step * MINUTE))
    return views


def jittered(rng: random.Random, views: list[View]) -> list[View]:
    """In time order, give or take up to 5 minutes (far less than the time to live)."""
    return sorted(views, key=lambda view: view[3] + rng.randrange(5 * MINUTE))


def first_views(views: Iterable[View]) -> dict[tuple[str, str], dict[str, int]]:
    sessions: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for tenant, session, item, at in views:
        seen = sessions[tenant, session]
        seen[item] = min(at, seen.get(item, at))
    return sessions


def brute_force(
    views: list[View], tenant: str, session: str, item: str, last_pane: int, k: int
) -> list[dict[str, Any]]:
    """Sessions of the last 168 hourly panes that viewed each item with the item viewed now
    and with the session's 10 latest first views; neither those nor anything seen shown."""
    sessions = first_views(views)
    mine = sessions[tenant, session]
    recent = sorted(mine, key=lambda i: (-mine[i], i))[:10]
    sources = {item, *recent}
    scores: Counter[str] = Counter()
    for (their_tenant, _), seen in sessions.items():
        if their_tenant != tenant:
            continue
        for source in sources & seen.keys():
            for other, at in seen.items():
                pane = max(at, seen[source]) // HOUR
                if other != source and last_pane - 168 < pane <= last_pane:
                    scores[other] += 1
    ranked = sorted(
        ((other, n) for other, n in scores.items() if other not in {item, *mine}),
        key=lambda entry: (-entry[1], entry[0]),
    )
    return [{"item": other, "score": n} for other, n in ranked[:k]]


def send_views(bootstrap: str, codec: AvroCodec, views: list[View], extra: Iterable[bytes] = ()):  # type: ignore[no-untyped-def]
    """librdkafka on its defaults, keyed by session."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for tenant, session, item, at in views:
        record = {
            "session_id": session,
            "item_id": item,
            "viewed_at_ms": at,
            "kind": "view",
            "tenant": tenant,
        }
        producer.produce("page-views", value=codec.dumps(record), key=session.encode())
        producer.poll(0)
    for value in extra:
        producer.produce("page-views", value=value, key=b"bad")
    assert producer.flush(30) == 0


def send_again(bootstrap: str, topic: str) -> list[int]:
    """Every forwarded message of `topic` again, as it was (partition, key, headers), one per
    origin (copies already there would meet theirs in one batch: processed once, not counted
    as redelivered); returns the event times of the views they carry (codecs.handover's JSON
    rows)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    times: list[int] = []
    sent: set[tuple[int, bytes]] = set()
    for record in consume(bootstrap, topic, 10**9, timeout=5):
        headers = list(record.headers or ())
        origin = dict(headers).get(ORIGIN_HEADER)
        if origin is None or (record.partition, origin) in sent:
            continue  # a watermark announcement, or a copy
        sent.add((record.partition, origin))
        producer.produce(topic, record.value, record.key, record.partition, headers=headers)
        producer.poll(0)
        handed = json.loads(record.value)
        at = handed["fields"].index("viewed_at_ms")
        times += [row[at] for row in handed["rows"]]
    assert producer.flush(30) == 0
    return times


def session_partition(tenant: str, session: str) -> int:
    return partition_for(f"{tenant}|{session}", PARTITIONS)


def recommendations(worker: Worker, tenant: str, session: str, item: str) -> dict[str, Any]:
    return worker.get(f"/api/recommendations?tenant={tenant}&session={session}&item={item}&k=10")


def changelog_latest(broker: LocalBroker, topic: str) -> dict[bytes, bytes | None]:
    """The newest value of each key of a changelog (None: a tombstone)."""
    latest: dict[bytes, bytes | None] = {}
    for record in consume(broker.bootstrap, topic, 10**9, timeout=5):
        latest[record.key] = record.value
    return latest


def test_recommendations_equal_brute_force_and_sessions_expire_everywhere(
    broker: LocalBroker, make_worker: WorkerFactory, registry_dir: Path
) -> None:
    asyncio.run(
        ensure_topics([broker.bootstrap], ["page-views"], partitions=PARTITIONS, replication=1)
    )
    codec = codec_in(registry_dir, "page-views-value", "page_view", validate_page_view)
    rng = random.Random(11)
    # Ten minutes into an hour: the clocks run on with the wall clock while the test reads,
    # and the window's last pane stays the end's for 50 minutes.
    end = (now_ms() - 2 * HOUR) // HOUR * HOUR + 10 * MINUTE
    history = browsing(rng, end - 9 * 24 * HOUR, end - 2 * HOUR, 600)
    # The sessions queried: live at the end, on every session partition, so every
    # partition's clock reaches the end.
    final: list[View] = []
    queried: list[tuple[str, str]] = []
    number = 0
    while {session_partition(t, s) for t, s in queried} != set(range(PARTITIONS)) or len(
        queried
    ) < 16:
        tenant, session = TENANTS[number % 2], f"live{number}"
        category = rng.randrange(6)
        steps = rng.randint(3, 6)
        for step in range(steps):  # the last at `end`
            final.append(
                (tenant, session, item_of(rng, category), end - (steps - 1 - step) * MINUTE)
            )
        queried.append((tenant, session))
        number += 1
    # Sessions at the edge of their time to live when each partition's clock is at `end`.
    edges: list[View] = []
    for tenant, _ in queried[:PARTITIONS]:
        edges += [
            (tenant, "gone", "c0-i1", end - TTL - 5 * MINUTE),
            (tenant, "gone", "c0-i2", end - TTL),  # expires exactly at `end`
            (tenant, "kept", "c0-i1", end - TTL + 14 * MINUTE),
            (tenant, "kept", "c0-i3", end - TTL + 15 * MINUTE),
        ]
    edges = list(dict.fromkeys(edges))
    repeats = rng.sample(history, 150)  # sent near the first copy: duplicates, not stale
    counted = jittered(rng, history + repeats) + sorted(edges + final, key=lambda view: view[3])
    unchecked = codec_in(registry_dir, "page-views-value", "page_view")
    bad_session = {**codec_record("bad|session"), "viewed_at_ms": end}
    invalid = [b"not avro", unchecked.dumps(bad_session)]

    # A backlog the workers find when they start: a page-views partition caught up holds no
    # one's clock back (it is taken to be live), so views trickling in 9 days late after a
    # pause would be stale, as they are meant to be.
    send_views(broker.bootstrap, codec, counted, invalid)
    first = make_worker("w1", **RECOMMENDATIONS)
    second = make_worker("w2", **RECOMMENDATIONS)
    start_all(first, second)
    # Views older than the time to live behind their session partition's clock: stale.
    stale = [(t, f"late{n}", "c1-i1", end - 2 * HOUR) for n, (t, _) in enumerate(queried[:6])]
    wait_until(
        lambda: all(
            recommendations(first, t, s, "c0-i0")["session_state"]["items_seen"] > 0
            for t, s in queried
        ),
        120,
        what="every live session in place",
    )
    send_views(broker.bootstrap, codec, stale)

    last_pane = end // HOUR
    expected = {
        (t, s): brute_force(counted, t, s, items[-1], last_pane, 10)
        for t, s in queried
        for items in [[v[2] for v in final if v[:2] == (t, s)]]
    }
    last_item = {(t, s): [v[2] for v in final if v[:2] == (t, s)][-1] for t, s in queried}

    def differences(worker: Worker) -> list[tuple[str, str, Any, Any]]:
        """(tenant, session, answer, brute force) where they differ."""
        found = []
        for t, s in queried:
            got = recommendations(worker, t, s, last_item[t, s])["recommendations"]
            if got != expected[t, s]:
                found.append((t, s, got, expected[t, s]))
        return found

    def all_equal(worker: Worker) -> bool:
        try:
            return not differences(worker)
        except urllib.error.HTTPError as error:
            if error.code == 503:  # rebalancing after a worker left or joined
                return False
            raise

    try:
        wait_until(lambda: all_equal(first) and all_equal(second), 90, what="brute force")
    except AssertionError:
        raise AssertionError(f"answers differ from brute force: {differences(first)[:2]}") from None
    assert sum(len(answer) for answer in expected.values()) > 50
    answer = recommendations(second, *queried[0], last_item[queried[0]])
    assert answer["co_views"]["window_end"] is not None
    assert answer["session_state"]["items_seen"] == len(first_views(final)[queried[0]])

    # Time to live: at its partition's clock (>= end), `gone` expired exactly, `kept` lives.
    tenants = {tenant for tenant, _ in queried[:PARTITIONS]}
    for tenant in tenants:
        gone = recommendations(first, tenant, "gone", "c0-i0")["session_state"]
        kept = recommendations(first, tenant, "kept", "c0-i0")["session_state"]
        assert gone["items_seen"] == 0 and gone["last_view_ms"] is None
        assert kept["items_seen"] == 2 and kept["expires_at_ms"] == end + 15 * MINUTE
    # The sweep tombstones expired sessions in the changelog (standbys and restores apply it).
    app_id = first.env["TALLY_APP_ID"]
    gone_keys = {f"{tenant}|gone".encode() for tenant in tenants}
    wait_until(
        lambda: all(
            changelog_latest(broker, f"{app_id}-session_items-changelog").get(key, b"") is None
            for key in gone_keys
        ),
        60,
        what="expired sessions tombstoned",
    )
    assert "tally_expired_total" in first.text("/metrics")

    # Stale views: on late-events, each with its reason and origin, and never in a session.
    letters = consume(broker.bootstrap, "late-events", len(stale), timeout=60)
    notes = [DeadLetter.from_headers(headers_of(r).items()) for r in letters]
    assert [n.rule for n in notes] == ["stale"] * len(stale)
    assert {n.topic for n in notes} == {"page-views"}
    for tenant, session, _, _ in stale:
        assert recommendations(first, tenant, session, "c0-i0")["session_state"]["items_seen"] == 0
    dead = consume(broker.bootstrap, "dead-letters", len(invalid), timeout=30)
    assert len(dead) == len(invalid)

    # A forwarder that died before committing sends its views again, origins and all: the
    # session partitions took them long ago and their clocks have moved far past them, yet
    # they are redeliveries, skipped, not stale views (no letters), and the answers hold.
    def redelivered() -> float:
        return sum(events_total(w, SESSION_VIEWS, "redelivered") for w in (first, second))

    skipped = redelivered()
    resent = send_again(broker.bootstrap, SESSION_VIEWS)
    expired = sum(at + TTL < end for at in resent)
    assert expired > 1000
    wait_until(lambda: redelivered() >= skipped + expired, 60, what="the views sent again")
    assert len(consume(broker.bootstrap, "late-events", len(stale) + 1, timeout=3)) == len(stale)
    # A stale view new to them still is set aside.
    send_views(broker.bootstrap, codec, [(queried[0][0], "late-new", "c1-i1", end - 2 * HOUR)])
    letters = consume(broker.bootstrap, "late-events", len(stale) + 1, timeout=60)
    assert len(letters) == len(stale) + 1
    wait_until(lambda: all_equal(first) and all_equal(second), 30, what="brute force again")

    # The active worker dies: its standby's copies answer the same, expired sessions gone.
    first.stop(signal.SIGKILL)
    wait_until(lambda: all_equal(second), 120, what="answers after failover")
    for tenant in tenants:
        assert recommendations(second, tenant, "gone", "c0-i0")["session_state"]["items_seen"] == 0

    # A worker restoring every table from the changelogs into an empty data dir.
    second.stop()
    third = make_worker("w3", **RECOMMENDATIONS).start()
    wait_until(lambda: all_equal(third), 120, what="answers after a restore")
    for tenant in tenants:
        assert recommendations(third, tenant, "gone", "c0-i0")["session_state"]["items_seen"] == 0


def codec_record(session: str) -> dict[str, Any]:
    return {"session_id": session, "item_id": "x", "viewed_at_ms": 0, "kind": "view", "tenant": ""}
