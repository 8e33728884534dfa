"""What the benchmarks share: producing input, running a Tally worker until it has counted
everything, reading changelog sizes and peak memory, and printing the table."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.types import TP

from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker, die_with_parent
from tally.broker.shim import fetched_high_watermarks
from tests.harness import Worker

PARTITIONS = 4

#: (partition or None, key, value, timestamp ms)
Message = tuple[int | None, bytes, bytes, int]


@dataclass
class Result:
    system: str
    events: int
    seconds: float
    changelog_records: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def records_per_event(self) -> float:
        return self.changelog_records / self.events


async def produce(bootstrap: str, topic: str, messages: list[Message]) -> None:
    await ensure_topics([bootstrap], [topic], partitions=PARTITIONS, replication=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 << 20,
    )
    await producer.start()
    try:
        for partition, key, value, ts in messages:
            await producer.send(topic, value, key=key, partition=partition, timestamp_ms=ts)
        await producer.flush()
    finally:
        await producer.stop()


async def changelog_records(bootstrap: str, app_id: str) -> int:
    """Records written to the app's changelog topics (high watermarks read through a Fetch)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        topics = [
            t for t in await consumer.topics() if t.startswith(app_id) and t.endswith("-changelog")
        ]
        tps = [TP(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        listed = await consumer.end_offsets(tps)
        return sum((await fetched_high_watermarks(consumer._client, listed)).values())
    finally:
        await consumer.stop()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counted(worker: Worker, topic: str) -> int:
    """Events the worker has counted from `topic`, from its Prometheus counters."""
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(
        rf'tally_events_total\{{outcome="counted",topic="{topic}"\}} ([0-9.e+]+)', text
    )
    return int(float(match.group(1))) if match else 0


def run_tally(
    broker: LocalBroker,
    workdir: Path,
    label: str,
    topic: str,
    messages: list[Message],
    total: int,
    check: Callable[[Worker], None],
    then: tuple[str, ...] = (),
    beside: Callable[[Worker], AbstractContextManager[object]] = lambda _: nullcontext(),
) -> Result:
    """One ready worker, then the input: the rate counts what is counted after the first
    observation (polled every 20 ms), over the time from then until every event is counted
    from `topic` and from each downstream topic in `then` (later stages count the same events).
    `beside` is entered once the worker is ready and left after the count (e.g. clients)."""
    app_id = f"bench{uuid.uuid4().hex[:8]}"
    worker = Worker(
        env={
            "TALLY_BROKER": broker.url,
            "TALLY_APP_ID": app_id,
            "TALLY_DATA_DIR": str(workdir / app_id),
            "TALLY_SCHEMA_REGISTRY": (workdir / "registry").resolve().as_uri(),
            "TALLY_PARTITIONS": str(PARTITIONS),
            "TALLY_STANDBY_REPLICAS": "0",
        },
        log_path=workdir / f"{app_id}.log",
    )
    worker.start()
    try:
        with beside(worker):
            asyncio.run(produce(broker.bootstrap, topic, messages))
            first: tuple[float, int] | None = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                done = counted(worker, topic)
                now = time.monotonic()
                if done and first is None:
                    first = (now, done)
                if done >= total and all(counted(worker, t) >= total for t in then):
                    break
                time.sleep(0.02)
            else:
                progress = ", ".join(f"{t}: {counted(worker, t)}" for t in (topic, *then))
                raise SystemExit(f"{label}: not all of {total} counted ({progress})")
            assert first is not None
            measured, elapsed = total - first[1], time.monotonic() - first[0]
            if measured < total // 2:
                raise SystemExit(f"{label}: the run was too short to time; raise --count")
        check(worker)
        rss = peak_rss_mb(worker.process.pid)  # type: ignore[union-attr]
    finally:
        worker.stop()
    records = asyncio.run(changelog_records(broker.bootstrap, app_id))
    return Result(label, measured, elapsed, records * measured / total, rss)


def report(results: dict[str, list[Result]], unit: str, baselines: list[str]) -> None:
    """The medians table, then each Tally result's run-by-run ratio against each baseline."""

    def median(label: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[label])

    print(f"\n{'system':44} {unit + '/s':>12} {'changelog rec/event':>20} {'peak RSS MB':>12}")
    for label in results:
        print(
            f"{label:44} {median(label, 'rate'):>12,.0f} "
            f"{median(label, 'records_per_event'):>20.4f} {median(label, 'peak_rss_mb'):>12,.0f}"
        )
    for baseline in baselines:
        for label in results:
            if label.startswith("tally"):
                pairs = zip(results[label], results[baseline], strict=True)
                ratio = statistics.median(r.rate / b.rate for r, b in pairs)
                print(f"ratio {label} / {baseline} (run by run, median): {ratio:,.2f}x")
    print("(state writes = changelog records: every table write is one changelog record)")


def run_faust_baseline(
    module: str, label: str, broker: LocalBroker, workdir: Path, expect: int, **env: str
) -> Result:
    """A plain Faust app (`python -m <module> worker`) over the same broker; it times itself
    from its first event and prints `BENCH done <n> <seconds>` after `expect` events."""
    app_id = f"benchfaust{uuid.uuid4().hex[:8]}"
    full_env = {
        **os.environ,
        "BENCH_APP_ID": app_id,
        "BENCH_BROKER": broker.url,
        "BENCH_DATA_DIR": str(workdir / app_id),
        "BENCH_EXPECT": str(expect),
        "BENCH_PARTITIONS": str(PARTITIONS),
        **env,
    }
    log = workdir / f"{app_id}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "worker", "--loglevel", "warn"],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            found = re.search(r"BENCH done (\d+) ([0-9.]+)", log.read_text(errors="replace"))
            if found:
                break
            if process.poll() is not None:
                raise SystemExit(f"{label} exited early; see {log}")
            time.sleep(0.2)
        else:
            raise SystemExit(f"{label} did not finish; see {log}")
        rss = peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    records = asyncio.run(changelog_records(broker.bootstrap, app_id))
    return Result(label, expect, float(found.group(2)), records, rss)
