"""Restore benchmark: how fast a new worker rebuilds the metrics tables from their changelogs,
at the source documents' scale (1,000 servers x 2 days of minutes; 1,100 servers x 47 h
here, for over 3 million records), with Faust's own recovery
as the baseline in the same run.

    .venv/bin/python -m bench.restore [--servers 1100] [--hours 47] [--faust-seconds 180]
                                      [--linger-ms 5]

On one local broker:
1. a worker (metrics pipeline, no standbys) folds one sample per server and minute over
   `--hours` of event time ending now, sent as one envelope per server and hour (its grace 2 h, so
   none is late), until every sample is counted by both indexes; it stops, and the changelog
   records of the app are counted;
2. a worker of another app, with nothing to restore, starts: its start-to-ready time is what
   any start costs;
3. for Faust's own recovery (`TALLY_RESTORE=faust`), then the bulk restore, a worker of the
   same app with empty local tables starts and takes every partition over: records/s = the
   changelog records over its start-to-ready time minus the empty worker's; its answers (three
   servers' minutes, and the metric across servers by hour) are checked against brute force.
   Faust's own recovery takes hours at this scale: after `--faust-seconds` its rate is read
   from what `/api/health` says is still to restore, and it is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (
    PARTITIONS,
    Message,
    bench_worker,
    changelog_batches,
    changelog_records,
    counted,
    metric_batch_codec,
    produce,
)
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec
from tally.core.clock import iso
from tests.harness import Worker, wait_until

MINUTE = 60_000
HOUR = 3_600_000


def value(server: int, minute: int) -> float:
    """Each server-minute's sample, computed again for the brute force (nothing kept)."""
    return ((server * 7919 + minute * 104_729) % 10_000) / 100


def envelopes(codec: AvroCodec, servers: int, hours: int, t0: int) -> list[Message]:
    """One envelope per server and hour of event time, hour by hour."""
    out: list[Message] = []
    for hour in range(hours):
        for server in range(servers):
            name = f"server-{server:04d}"
            samples = [
                {"metric_id": "cpu", "ts_ms": t0 + m * MINUTE, "value": value(server, m)}
                for m in range(hour * 60, hour * 60 + 60)
            ]
            batch = {"server_id": name, "sent_at_ms": samples[-1]["ts_ms"], "samples": samples}
            out.append((None, name.encode(), codec.dumps(batch), batch["sent_at_ms"]))
    return out


def check_answers(worker: Worker, servers: int, hours: int, t0: int, across: bool = True) -> None:
    """Three servers' minutes; and, `across`, the metric across servers by hour (answered up to
    the watermark: the builder's grace of 2 h holds its last hours back)."""
    window = f"from={iso(t0)}&to={iso(t0 + hours * HOUR)}"
    for server in (0, servers // 2, servers - 1):
        body = worker.get(f"/api/servers/server-{server:04d}/metrics?{window}", timeout=60)
        got = [(p["t"], p["min"], p["max"], p["count"]) for p in body["metrics"]["cpu"]]
        want = [
            (iso(t0 + m * MINUTE), value(server, m), value(server, m), 1) for m in range(hours * 60)
        ]
        assert got == want, f"server-{server:04d}: its minutes differ from brute force"
    if not across:
        return
    series = worker.get(f"/api/metrics/cpu?{window}&step=1h", timeout=60)["series"]
    for hour, point in enumerate(series):
        values = [value(s, m) for s in range(servers) for m in range(hour * 60, hour * 60 + 60)]
        got = (point["t"], point["min"], point["max"], point["count"])
        assert got == (iso(t0 + hour * HOUR), min(values), max(values), len(values)), hour
    assert len(series) == hours, f"{len(series)} hours across servers, want {hours}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=1100, help="1,100: over 3,000,000 records")
    parser.add_argument(
        "--faust-seconds",
        type=float,
        default=180.0,
        help="how long Faust's own recovery may run before its rate is read from /api/health",
    )
    parser.add_argument("--hours", type=int, default=47, help="event time covered (≤ 47)")
    parser.add_argument(
        "--linger-ms",
        default="5",
        help="the builder's TALLY_PRODUCER_LINGER_MS: 0 writes the changelogs as before it "
        "existed (~4 records a batch)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    codec = metric_batch_codec(workdir)
    t0 = (int(time.time() * 1000) - args.hours * HOUR) // HOUR * HOUR  # steps start on hours
    total = args.servers * args.hours * 60
    app_id = f"benchrs{uuid.uuid4().hex[:8]}"

    def worker(app: str, name: str, **env: str) -> Worker:
        return bench_worker(broker, workdir, app, name, TALLY_PIPELINES="metrics", **env)

    print(
        f"restore benchmark: {args.servers:,} servers x {args.hours} h of minutes "
        f"({total:,} samples), {PARTITIONS} partitions, changelogs written with a "
        f"{args.linger_ms} ms producer linger, local broker on this host; logs in "
        f"{workdir}",
        flush=True,
    )
    with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
        # A grace of 2 h: an envelope an hour older than the last one sent is not late.
        builder = worker(
            app_id,
            "builder",
            TALLY_GRACE_SECONDS="7200",
            TALLY_PRODUCER_LINGER_MS=args.linger_ms,
        ).start()
        started = time.monotonic()
        asyncio.run(
            produce(
                broker.bootstrap, "metric-samples", envelopes(codec, args.servers, args.hours, t0)
            )
        )
        wait_until(
            lambda: all(
                counted(builder, topic) >= total
                for topic in ("metric-samples", "metric-rollups-by-metric")
            ),
            3600,
            interval=2.0,
            what="every sample folded into both indexes",
        )
        print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
        check_answers(builder, args.servers, args.hours, t0, across=False)
        builder.stop()
        records = asyncio.run(changelog_records(broker.bootstrap, app_id))
        _, batches = asyncio.run(changelog_batches(broker.bootstrap, app_id))
        empty = worker(f"{app_id}e", "empty")
        started = time.monotonic()
        empty.start()
        baseline = time.monotonic() - started
        empty.stop()
        print(
            f"  {records:,} changelog records in {batches:,} batches "
            f"({records / max(batches, 1):.1f} a batch); a worker with nothing to restore is "
            "ready in "
            f"{baseline:.1f} s",
            flush=True,
        )
        rates: dict[str, float] = {}
        for mode in ("faust", "bulk"):
            restorer = worker(app_id, mode, TALLY_RESTORE=mode)
            started = time.monotonic()
            try:
                restorer.start(ready_timeout=args.faust_seconds if mode == "faust" else 3600)
            except AssertionError:  # Faust's own recovery, not done: rate over the time given
                status, health = restorer.get_status("/api/health")
                left = health["recovery"]["active_records_remaining"]
                rates[mode] = (records - left) / max(time.monotonic() - started - baseline, 0.1)
                restorer.stop()
                print(
                    f"  {mode}: not ready after {args.faust_seconds:.0f} s ({status}), "
                    f"{left:,} records still to restore: {rates[mode]:,.0f} records/s after "
                    f"an empty worker's start (at that rate: {left / rates[mode] / 60:,.0f} min "
                    "more)",
                    flush=True,
                )
                continue
            ready = time.monotonic() - started
            bulk = restorer.get("/api/health")["recovery"]["bulk_restore"]
            check_answers(restorer, args.servers, args.hours, t0)
            restorer.stop()
            rates[mode] = records / max(ready - baseline, 0.1)
            inside = f"; the bulk read itself {bulk['records_per_second']:,}/s" if bulk else ""
            print(
                f"  {mode}: start to ready {ready:.1f} s, {rates[mode]:,.0f} records/s"
                f"{inside}; answers equal brute force",
                flush=True,
            )
    print(f"\nbulk ÷ faust: {rates['bulk'] / rates['faust']:.1f}x")


if __name__ == "__main__":
    main()
