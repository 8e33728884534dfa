"""The archive through the real broker: 30 hours of samples, 4 hours hot; queries across the
tiers' boundary equal brute force; restarts and redelivered batches duplicate nothing."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from tally.archive.store import DAY_MS, Archive, day_of, day_start_ms, final_minute
from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tally.core.clock import now_ms
from tests.conftest import WorkerFactory
from tests.harness import Worker, consume, produce, rewind, wait_until
from tests.integration.test_metrics_e2e import MINUTE, iso, ms, same, truth

SERVERS = ["web-1", "web-2", "db-1"]
METRICS = ["cpu", "mem"]
HOT_HOURS = 4
SPAN_MINUTES = 30 * 60


def samples(rng: random.Random, end: int) -> list[tuple[str, str, int, float]]:
    """Two samples a minute per server and metric over the 30 hours before `end`."""
    start = end - SPAN_MINUTES * MINUTE
    return [
        (server, metric, minute + offset, round(rng.uniform(-10, 100), 3))
        for minute in range(start, end, MINUTE)
        for server in SERVERS
        for metric in METRICS
        for offset in (5_000, 35_000)
    ]


def batches(data: list, codec: AvroCodec) -> list[tuple[bytes, bytes]]:
    """One message per server per minute of event time, in time order (servers sharing a
    partition share its watermark: a longer batch of one would make another's samples late)."""
    grouped: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for server, metric, ts, value in data:
        grouped[(ts // MINUTE, server)].append({"metric_id": metric, "ts_ms": ts, "value": value})
    return [
        (
            server.encode(),
            codec.dumps({"server_id": server, "sent_at_ms": s[-1]["ts_ms"], "samples": s}),
        )
        for (_, server), s in sorted(grouped.items())
    ]


def archived_rows(archive: Archive) -> list[tuple[str, str, int]]:
    rows = []
    for day in archive.days():
        for file in archive.files(day):
            table = pq.read_table(archive.path(file), columns=["server", "metric", "minute_ms"])
            rows += zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
    return rows


def test_queries_across_the_boundary_equal_brute_force_and_nothing_is_archived_twice(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    metric_batch_codec: AvroCodec,
    app_id: str,
    tmp_path: Path,
) -> None:
    end = now_ms() - now_ms() % MINUTE - 2 * 3_600_000
    data = samples(random.Random(9), end)
    start = end - SPAN_MINUTES * MINUTE
    archive_dir = tmp_path / "archive"
    worker = make_worker(
        "w1",
        TALLY_METRICS_HOT_HOURS=str(HOT_HOURS),
        TALLY_ARCHIVE_DIR=str(archive_dir),
        TALLY_ARCHIVE_FLUSH_SECONDS="2",
    ).start()
    produce(broker.bootstrap, "metric-samples", batches(data, metric_batch_codec))

    expected_rows = len(SERVERS) * len(METRICS) * SPAN_MINUTES
    archive = Archive(archive_dir)
    wait_until(
        lambda: archive.stats().rows >= expected_rows, 120, what="every final minute archived"
    )

    window = f"from={iso(start)}&to={iso(end)}"
    for step, step_ms in (("1m", MINUTE), ("1h", 60 * MINUTE)):
        for server in SERVERS:
            want = truth(data, step_ms, lambda s, m, server=server: m if s == server else None)
            body = worker.get(f"/api/servers/{server}/metrics?{window}&step={step}")
            assert same(body["metrics"], want), f"{server} at {step}"
            # Both tiers answered, split at the hot horizon (4 hours before the watermark).
            tiers = body["tiers"]
            boundary = ms(tiers["archive"]["to"])
            assert ms(tiers["archive"]["from"]) == start and ms(tiers["hot"]["from"]) == boundary
            assert end - HOT_HOURS * 3_600_000 - 5 * MINUTE <= boundary < end
        for metric in METRICS:
            want = truth(data, step_ms, lambda s, m, metric=metric: "all" if m == metric else None)
            body = worker.get(f"/api/metrics/{metric}?{window}&step={step}")
            assert same({"all": body["series"]}, want), f"{metric} at {step}"
            assert body["tiers"]["archive"] and body["tiers"]["hot"]
    by_server = worker.get(f"/api/metrics/cpu?{window}&step=1h&by=server&tenant=default")["servers"]
    assert same(by_server, truth(data, 60 * MINUTE, lambda s, m: s if m == "cpu" else None))
    want = truth(data, 10**15, lambda s, m: m if s == "db-1" else None)
    # `from` mid-minute (epoch ms) counts its whole minute, in both tiers' single bucket.
    for since in (iso(start), str(start + 30_000)):
        summary = worker.get(f"/api/servers/db-1/summary?from={since}&to={iso(end)}")["metrics"]
        assert same(
            {m: [{**p, "t": "x"}] for m, p in summary.items()},
            {m: [{**p[0], "t": "x"}] for m, p in want.items()},
        ), since
    # A range entirely older than the hot window: the archive alone.
    old = worker.get(f"/api/servers/web-1/metrics?from={iso(start)}&to={iso(start + 60 * MINUTE)}")
    assert old["tiers"]["hot"] is None and len(old["metrics"]["cpu"]) == 60

    # Exactly one row per (server, metric, minute).
    rows = archived_rows(archive)
    assert len(rows) == len(set(rows)) == expected_rows

    # A settled day (an hour past its end) was compacted: one file per partition.
    settled = [d for d in archive.days() if day_start_ms(d) + DAY_MS + 3_600_000 <= end - MINUTE]
    assert settled
    wait_until(
        lambda: all(
            len({f.partition for f in archive.files(d)}) == len(archive.files(d)) for d in settled
        ),
        30,
        what="settled days compacted",
    )

    # Redelivery: stop, rewind the group's offsets on metric-rollups-1m to 0, restart: every
    # batch comes again (same offsets) and nothing is written twice.
    worker.stop()
    rewind(broker.bootstrap, app_id, ["metric-rollups-1m"])
    # An upstream re-emission too: three final minutes sent again (new offsets).
    again = consume(broker.bootstrap, "metric-rollups-1m", expect=3, timeout=10)[:3]
    produce(broker.bootstrap, "metric-rollups-1m", [(r.key, r.value) for r in again])
    worker.start()
    total = len(SERVERS) * SPAN_MINUTES + 3
    wait_until(
        lambda: archived_since_start(worker) >= total,
        90,
        what="the redelivered batches to be processed",
    )
    rows = archived_rows(archive)
    assert len(rows) == len(set(rows)) == expected_rows
    redone = worker.get(f"/api/servers/web-2/metrics?{window}&step=1h")
    assert same(
        redone["metrics"], truth(data, 60 * MINUTE, lambda s, m: m if s == "web-2" else None)
    )


def archived_since_start(worker: Worker) -> float:
    """Final minutes the worker's archive sink has taken since it started (Prometheus)."""
    for line in worker.text("/metrics").splitlines():
        if line.startswith("tally_events_total") and 'outcome="archived"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_prune_drops_old_days_only_and_queries_of_the_rest_stay_right(
    broker: LocalBroker, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    """Ten days of archived minutes (written by the archive itself), `tally archive prune
    --keep 5d`: older days vanish, newer stay, and a worker answers the rest from the
    archive alone (its hot tables are empty) equal to brute force."""
    archive_dir = tmp_path / "archive"
    archive = Archive(archive_dir)
    today = day_start_ms(day_of(now_ms()))
    rng = random.Random(3)
    data = []
    minutes = []
    for day in range(10, -1, -1):
        for hour in (0, 11, 23):
            minute = today - day * DAY_MS + hour * 3_600_000 + 7 * MINUTE
            values = {m: [rng.uniform(0, 100), rng.uniform(0, 100)] for m in METRICS}
            data += [
                ("web-1", m, minute + 1000 * i, v)
                for m, vs in values.items()
                for i, v in enumerate(vs)
            ]
            minutes.append(
                (
                    len(minutes),
                    final_minute(
                        {
                            "tenant": "default",
                            "server_id": "web-1",
                            "minute_ms": minute,
                            "metrics": {
                                m: {"min": min(v), "max": max(v), "sum": sum(v), "count": len(v)}
                                for m, v in values.items()
                            },
                        }
                    ),
                )
            )
    archive.append(0, minutes)
    assert len(archive.days()) == 11

    env = {**os.environ, "TALLY_ARCHIVE_DIR": str(archive_dir), "TALLY_BROKER": broker.url}
    dry = subprocess.run(
        [sys.executable, "-m", "tally", "archive", "prune", "--keep", "5d", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "would drop 5 days" in dry.stdout and len(archive.days()) == 11
    done = subprocess.run(
        [sys.executable, "-m", "tally", "archive", "prune", "--keep", "5d"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "dropped 5 days" in done.stdout, done.stdout + done.stderr
    cutoff = day_of(now_ms() - 5 * DAY_MS)
    assert archive.days() == [d for d in (day_of(today - n * DAY_MS) for n in range(5, -1, -1))]
    assert min(archive.days()) == cutoff
    stats = subprocess.run(
        [sys.executable, "-m", "tally", "archive", "stats", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(stats.stdout)["rows"] == 6 * 3 * len(METRICS)

    worker = make_worker("w1", TALLY_ARCHIVE_DIR=str(archive_dir)).start()
    start, end = today - 10 * DAY_MS, today + DAY_MS
    kept = [row for row in data if row[2] >= day_start_ms(cutoff)]
    for step, step_ms in (("1h", 3_600_000), ("1d", DAY_MS)):
        body = worker.get(f"/api/servers/web-1/metrics?from={iso(start)}&to={iso(end)}&step={step}")
        assert body["tiers"]["hot"] is None
        assert same(body["metrics"], truth(kept, step_ms, lambda s, m: m))
        by_metric = worker.get(f"/api/metrics/mem?from={iso(start)}&to={iso(end)}&step={step}")
        assert same(
            {"all": by_metric["series"]},
            truth(kept, step_ms, lambda s, m: "all" if m == "mem" else None),
        )
