"""Server metrics through the real broker: every view equals brute force at 1m/5m/1h steps."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, datetime

from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tally.deadletters import DeadLetter
from tests.conftest import WorkerFactory
from tests.harness import consume, headers_of, produce, start_all, wait_until

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
MINUTE = 60_000
SERVERS = ["web-1", "web-2", "db-1"]
METRICS = ["cpu", "mem", "disk", "temp"]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


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


def same(got: dict, want: dict) -> bool:
    if sorted(got) != sorted(want):
        return False
    for name in want:
        if len(got[name]) != len(want[name]):
            return False
        for g, w in zip(got[name], want[name], strict=True):
            if (g["t"], g["min"], g["max"], g["count"]) != (w["t"], w["min"], w["max"], w["count"]):
                return False
            if not math.isclose(g["avg"], w["avg"], rel_tol=1e-9, abs_tol=1e-9):
                return False
    return True


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
    produce(
        broker.bootstrap, "metric-samples", [*messages, (b"web-1", metric_batch_codec.dumps(bad))]
    )

    window = f"from={iso(T0)}&to={iso(T0 + 30 * MINUTE)}"
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
                    what=f"{server} at {step} on {worker.url} to equal brute force",
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
                first.get(f"/api/metrics/{metric}?{window}&step={step}&by=server")["servers"],
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

    # The newest minutes are open, older ones final; the answer says which.
    latest = first.get(f"/api/servers/web-1/metrics?{window}")
    assert latest["open_minutes"] and latest["open_minutes"][-1] == iso(T0 + 29 * MINUTE)
    assert iso(T0) not in latest["open_minutes"]

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

    # Bad parameters: 400 with a message.
    for query in ("step=2m", f"from={iso(T0 + MINUTE)}&to={iso(T0)}", "from=soon", "by=rack"):
        path = "/api/metrics/cpu" if "by=" in query else "/api/servers/web-1/metrics"
        status, answer = first.get_status(f"{path}?{query}")
        assert status == 400 and answer, query
