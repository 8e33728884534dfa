"""Server metrics through the real broker: every view equals brute force at 1m/5m/1h steps."""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from tally.app import STOP_TIMEOUT_EXIT
from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tally.core.deadletters import DeadLetter
from tally.settings import Settings
from tests.conftest import WorkerFactory
from tests.harness import (
    Verdict,
    consume,
    headers_of,
    produce,
    sample_value,
    start_all,
    wait_until,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
MINUTE = 60_000
SERVERS = ["web-1", "web-2", "db-1"]
METRICS = ["cpu", "mem", "disk", "temp"]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def ms(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def samples(rng: random.Random) -> list[tuple[str, str, int, float]]:
    """30 minutes, every 5 s, each sample up to 4 s out of order; negative values included."""
    out = []
    for server in SERVERS:
        for metric in METRICS:
            for tick in range(0, 30 * MINUTE, 5000):
                value = round(rng.uniform(-50, 100), 3)
                out.append((server, metric, T0 + tick + rng.randrange(0, 4000), value))
    return out


def batches(data: list[tuple[str, str, int, float]]) -> list[tuple[str, list[dict]]]:
    """One batch per server per 15 s of event time, samples shuffled inside it."""
    grouped: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for server, metric, ts, value in data:
        grouped[(server, (ts - T0) // 15_000)].append(
            {"metric_id": metric, "ts_ms": ts, "value": value}
        )
    return [
        (server, grouped[(server, slot)])
        for server, slot in sorted(grouped, key=lambda k: (k[1], k[0]))
    ]


def truth(data: list[tuple[str, str, int, float]], step: int, keep) -> dict[str, list[dict]]:  # type: ignore[no-untyped-def]
    buckets: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for server, metric, ts, value in data:
        name = keep(server, metric)
        if name:
            buckets[name][ts - ts % step].append(value)
    return {
        name: [
            {
                "t": iso(t),
                "min": min(v),
                "max": max(v),
                "avg": math.fsum(v) / len(v),
                "count": len(v),
            }
            for t, v in sorted(points.items())
        ]
        for name, points in buckets.items()
    }


def same(got: dict, want: dict) -> Verdict:
    if sorted(got) != sorted(want):
        return Verdict(f"series {sorted(got)} != {sorted(want)}")
    for name in want:
        if len(got[name]) != len(want[name]):
            missing = {w["t"] for w in want[name]} - {g["t"] for g in got[name]}
            return Verdict(
                f"{name}: {len(got[name])} points != {len(want[name])}; missing {sorted(missing)}"
            )
        for g, w in zip(got[name], want[name], strict=True):
            if (g["t"], g["min"], g["max"], g["count"]) != (w["t"], w["min"], w["max"], w["count"]):
                return Verdict(f"{name}: {g} != {w}")
            if not math.isclose(g["avg"], w["avg"], rel_tol=1e-9, abs_tol=1e-9):
                return Verdict(f"{name}: avg {g['avg']} != {w['avg']} at {w['t']}")
    return Verdict()


def test_views_equal_brute_force_and_late_samples_are_set_aside(
    broker: LocalBroker, make_worker: WorkerFactory, metric_batch_codec: AvroCodec
) -> None:
    data = samples(random.Random(4))
    first, second = start_all(make_worker("w1"), make_worker("w2"))
    messages = [
        (
            server.encode(),
            metric_batch_codec.dumps(
                {"server_id": server, "sent_at_ms": s[-1]["ts_ms"], "samples": s}
            ),
        )
        for server, s in batches(data)
    ]
    bad = {
        "server_id": "web-1",
        "sent_at_ms": T0,
        "samples": [
            {"metric_id": "cpu", "ts_ms": T0 + 29 * MINUTE, "value": float("nan")},
            {"metric_id": "bad|id", "ts_ms": T0 + 29 * MINUTE, "value": 1.0},
        ],
    }
    window = f"from={iso(T0)}&to={iso(T0 + 30 * MINUTE)}"
    # web-1 (alone on its partition) starts reading after the other servers' partition has
    # read all of its 30 minutes: its samples are judged by its own clock, not by how far
    # the others have come, so none of them is late.
    produce(broker.bootstrap, "metric-samples", [m for m in messages if m[0] != b"web-1"])
    temp = f"/api/servers/db-1/metrics?{window}&metric=temp"
    wait_until(
        lambda: len(first.get(temp)["metrics"].get("temp", [])) == 30,
        60,
        what="db-1's 30 minutes before web-1 sends anything",
    )
    produce(
        broker.bootstrap,
        "metric-samples",
        [*(m for m in messages if m[0] == b"web-1"), (b"web-1", metric_batch_codec.dumps(bad))],
    )
    # Minutes the watermark has not closed are listed as open, up to the event clock (the
    # watermark + grace: no later minute has data yet). Samples may still be arriving.
    fresh = first.get(f"/api/servers/db-1/metrics?{window}")
    watermark = ms(fresh["watermark"])
    grace = int(Settings.from_env({}).grace_seconds * 1000)  # the workers run on defaults
    open_expected = [
        iso(m)
        for m in range(T0, T0 + 30 * MINUTE, MINUTE)
        if m + MINUTE > watermark and m <= watermark + grace
    ]
    assert fresh["open_minutes"] == open_expected
    for step, step_ms in (("1m", MINUTE), ("5m", 5 * MINUTE), ("1h", 60 * MINUTE)):
        for server in SERVERS:
            want = truth(data, step_ms, lambda s, m, server=server: m if s == server else None)
            for worker in (first, second):
                wait_until(
                    lambda w=worker, server=server, step=step, want=want: same(
                        w.get(f"/api/servers/{server}/metrics?{window}&step={step}")["metrics"],
                        want,
                    ),
                    60,
                    what=f"{server} at {step} on {worker.log_path.stem} to equal brute force",
                )
        for metric in METRICS:
            want = truth(data, step_ms, lambda s, m, metric=metric: "all" if m == metric else None)
            got = wait_until(
                lambda metric=metric, step=step, want=want: (
                    (b := second.get(f"/api/metrics/{metric}?{window}&step={step}"))
                    and same({"all": b["series"]}, want)
                    and b
                ),
                60,
                what=f"{metric} across servers at {step}",
            )
            assert got["watermark"] is not None
            per_server = truth(
                data, step_ms, lambda s, m, metric=metric: s if m == metric else None
            )
            assert same(
                first.get(f"/api/metrics/{metric}?{window}&step={step}&by=server&tenant=default")[
                    "servers"
                ],
                per_server,
            )

    body = first.get(f"/api/servers/web-2/metrics?{window}&metric=cpu,temp")
    assert sorted(body["metrics"]) == ["cpu", "temp"]
    summary = second.get(f"/api/servers/db-1/summary?{window}")["metrics"]
    want = truth(data, 10**12, lambda s, m: m if s == "db-1" else None)
    assert same(
        {m: [{**p, "t": "x"}] for m, p in summary.items()},
        {m: [{**p[0], "t": "x"}] for m, p in want.items()},
    )

    # Every minute becomes final (event time passes at wall speed with no traffic) and each
    # (server, minute) is emitted to metric-rollups-1m exactly once, equal to brute force.
    expected_minutes = {
        (server, metric, t): p
        for server in SERVERS
        for metric, points in truth(
            data, MINUTE, lambda s, m, server=server: m if s == server else None
        ).items()
        for t, p in ((p["t"], p) for p in points)
    }
    expected_records = {(server, t) for server, _, t in expected_minutes}
    consume(broker.bootstrap, "metric-rollups-1m", expect=len(expected_records), timeout=120)
    time.sleep(3)  # a minute emitted twice would have arrived by now
    emitted = consume(
        broker.bootstrap, "metric-rollups-1m", expect=len(expected_records) + 1, timeout=5
    )
    keys = [r.key for r in emitted]
    assert len(keys) == len(set(keys)) == len(expected_records)
    seen = set()
    for record in emitted:
        value = json.loads(record.value)
        for metric, rollup in value["metrics"].items():
            cell = (value["server_id"], metric, iso(value["minute_ms"]))
            point = expected_minutes[cell]
            seen.add(cell)
            assert (rollup["min"], rollup["max"], rollup["count"]) == (
                point["min"],
                point["max"],
                point["count"],
            )
            assert math.isclose(
                rollup["sum"] / rollup["count"], point["avg"], rel_tol=1e-9, abs_tol=1e-9
            )
    assert seen == set(expected_minutes)

    # Every minute is final now, and the answer says so.
    latest = first.get(f"/api/servers/web-1/metrics?{window}")
    assert latest["open_minutes"] == [] and ms(latest["watermark"]) >= T0 + 30 * MINUTE

    # A sample for a long-final minute is late: late-events, never merged.
    late = {
        "server_id": "web-1",
        "sent_at_ms": T0,
        "samples": [{"metric_id": "cpu", "ts_ms": T0 + 1000, "value": 1e6}],
    }
    produce(broker.bootstrap, "metric-samples", [(b"web-1", metric_batch_codec.dumps(late))])
    letters = consume(broker.bootstrap, "late-events", expect=1, timeout=30)
    assert DeadLetter.from_headers(headers_of(letters[0])).stage == "late"
    assert metric_batch_codec.loads(letters[0].value)["samples"][0]["value"] == 1e6
    cpu = first.get(f"/api/servers/web-1/metrics?{window}&metric=cpu")["metrics"]["cpu"][0]
    assert cpu["max"] < 1e6

    # The NaN and the unusable metric id were dead-lettered one by one.
    dead = consume(broker.bootstrap, "dead-letters", expect=2, timeout=30)
    reasons = sorted(DeadLetter.from_headers(headers_of(r)).reason for r in dead)
    assert any("finite" in r for r in reasons) and any("metric_id" in r for r in reasons)

    # The batches the answers above were checked on were folded ahead, by the offload
    # process (the loop may have made some of the calls itself, rather than wait); the late
    # one was folded ahead too, and taken back to set its sample aside.
    def total(sample: str, **labels: str) -> float:
        return sum(sample_value(w, sample, **labels) for w in (first, second))

    offloaded = "tally_offloaded_messages_total"
    assert total(offloaded, made="process", topic="metric-samples") > 0
    assert total("tally_prefolded_messages_total", outcome="folded") >= len(messages) // 2
    assert total("tally_prefolded_messages_total", outcome="taken back") >= 1

    # Bad parameters: 400 with a message.
    for query in ("step=2m", f"from={iso(T0 + MINUTE)}&to={iso(T0)}", "from=soon", "by=rack"):
        path = "/api/metrics/cpu" if "by=" in query else "/api/servers/web-1/metrics"
        status, answer = first.get_status(f"{path}?{query}")
        assert status == 400 and answer, query

    # A stop does not wait out the archive sink's gathering of final minutes (up to
    # TALLY_ARCHIVE_FLUSH_SECONDS, 60 s): the sink writes what it holds and the worker exits
    # by itself, not by TALLY_STOP_TIMEOUT_SECONDS's forced exit.
    for worker in (second, first):
        assert worker.stop() != STOP_TIMEOUT_EXIT, worker.tail(20)


def test_minutes_older_than_two_days_leave_both_indexes_also_after_a_restart(
    broker: LocalBroker, make_worker: WorkerFactory, metric_batch_codec: AvroCodec
) -> None:
    # The archive sink gathers for an hour (until the stop below): older minutes would be
    # answered from there.
    worker = make_worker(TALLY_ARCHIVE_FLUSH_SECONDS="3600").start()

    def send(ts: int) -> None:
        batch = {
            "server_id": "web-1",
            "sent_at_ms": ts,
            "samples": [
                {"metric_id": "cpu", "ts_ms": ts + n * 10_000, "value": float(n)} for n in range(30)
            ],
        }
        produce(broker.bootstrap, "metric-samples", [(b"web-1", metric_batch_codec.dumps(batch))])

    old = f"from={iso(T0)}&to={iso(T0 + 10 * MINUTE)}"
    send(T0)
    hot = wait_until(
        lambda: (a := worker.get(f"/api/servers/web-1/metrics?{old}"))["metrics"] and a,
        30,
        what="old minutes",
    )
    wait_until(
        lambda: worker.get(f"/api/metrics/cpu?{old}")["series"], 30, what="old minutes by metric"
    )

    send(T0 + 2 * 86_400_000 + 10 * MINUTE)  # event time jumps past the 2-day retention
    gone = lambda: (  # noqa: E731
        not (by_server := worker.get(f"/api/servers/web-1/metrics?{old}"))["metrics"]
        and by_server["tiers"]["hot"] is None
        and not worker.get(f"/api/metrics/cpu?{old}")["series"]
    )
    wait_until(gone, 30, what="minutes older than 2 days to leave both indexes")

    def emitted_minutes() -> list[int]:
        records = consume(broker.bootstrap, "metric-rollups-1m", expect=10, timeout=5)
        return [json.loads(r.value)["minute_ms"] for r in records]

    # The 5 old minutes (web-1 has one record per minute) were final, and emitted, before
    # they left; each minute once.
    before = wait_until(
        lambda: (m := emitted_minutes()) and len([x for x in m if x < T0 + 10 * MINUTE]) == 5 and m,
        30,
        what="the old minutes on metric-rollups-1m",
    )
    assert len(before) == len(set(before))

    # The stop makes the sink write what it gathered: the old minutes are answered from the
    # archive now, as they were from the hot tables, which hold none of them again.
    worker.stop()
    worker.start()
    by_server = worker.get(f"/api/servers/web-1/metrics?{old}")
    by_metric = worker.get(f"/api/metrics/cpu?{old}")
    assert by_server["tiers"]["hot"] is None and by_metric["tiers"]["hot"] is None, (
        "expired minutes came back after a restart"
    )
    assert same(by_server["metrics"], hot["metrics"])
    time.sleep(3)
    after = emitted_minutes()
    assert len(after) == len(set(after)), "a restart emitted a final minute a second time"

    # The views read old ranges from the archive now: look into the hot tables themselves.
    worker.stop()
    data_dir = Path(worker.env["TALLY_DATA_DIR"])
    assert hot_minutes(data_dir, "server_rollups", "web-1")
    assert not [m for m in hot_minutes(data_dir, "server_rollups", "web-1") if m < T0 + 10 * MINUTE]
    assert not [m for m in hot_minutes(data_dir, "metric_rollups", "cpu") if m < T0 + 10 * MINUTE]


def hot_minutes(data_dir: Path, table: str, first: str) -> list[int]:
    """Minutes of the default tenant's `first` in a stopped worker's RocksDB table, every
    partition (keys "<tenant>|<first>|<minute>|...")."""
    minutes = []
    for path in sorted(data_dir.glob(f"**/tables/{table}-*.db")):
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            minutes += [
                int(k.split(b"|")[2])
                for k, _ in db.items()
                if k.startswith(f"default|{first}|".encode())
            ]
        finally:
            db.close()
    return minutes
