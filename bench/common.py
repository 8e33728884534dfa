"""What the benchmarks share: producing input, running a Tally worker until it has counted
everything, reading changelog sizes and peak memory, and printing the table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from faust.types import TP
from prometheus_client.parser import text_string_to_metric_families

from bench.query import QueryLoad
from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker, die_with_parent, stop_process
from tally.broker.shim import FETCH_MAX_WAIT_MS, fetched_high_watermarks
from tally.codecs.avro import AvroCodec, load_schema, validate_metric_batch, validate_purchase
from tally.codecs.registry import FileSchemaRegistry
from tally.settings import current_settings
from tests.harness import ACCESS, Worker, bearer

PARTITIONS = 4

T = TypeVar("T")

#: (partition or None, key, value, timestamp ms), and headers when it has some
Headers = list[tuple[str, bytes]]
Message = tuple[int | None, bytes, bytes, int] | tuple[int | None, bytes, bytes, int, Headers]


#: A load generator sends every request with one token: no per-token limit on benchmark
#: workers (the limit is a policy between tenants, not a cost being measured).
UNLIMITED = {"TALLY_AUTH_RATE": "0"}


def bench_worker(
    broker: LocalBroker,
    workdir: Path,
    app_id: str,
    name: str,
    tree: Path | None = None,
    **env: str,
) -> Worker:
    """A worker (not started) of `app_id` on `broker`, its data and log under `workdir`, the
    registry shared by the run; `env` adds or overrides settings (no standbys by default);
    `tree`: another commit's tree, whose `tally` it runs."""
    return Worker(
        env={
            "TALLY_BROKER": broker.url,
            "TALLY_APP_ID": app_id,
            "TALLY_DATA_DIR": str(workdir / app_id / name),
            "TALLY_SCHEMA_REGISTRY": (workdir / "registry").resolve().as_uri(),
            "TALLY_PARTITIONS": str(PARTITIONS),
            "TALLY_STANDBY_REPLICAS": "0",
            **UNLIMITED,
            **env,
        },
        log_path=workdir / f"{app_id}-{name}.log",
        cwd=tree,
    )


def codec_in(workdir: Path, subject: str, schema: str, validate: Any) -> AvroCodec:
    """A codec registering in the run's file registry."""
    return AvroCodec(
        FileSchemaRegistry(workdir / "registry"), subject, load_schema(schema), validate
    )


def purchase_codec(workdir: Path) -> AvroCodec:
    return codec_in(workdir, "purchases-value", "purchase", validate_purchase)


def purchase_batch_codec(workdir: Path) -> AvroCodec:
    """Envelopes of purchases (`PurchaseBatch`), as `tally feed --envelope` sends them."""
    return codec_in(workdir, "tally.sales.PurchaseBatch", "purchase_batch", None)


def metric_batch_codec(workdir: Path) -> AvroCodec:
    return codec_in(workdir, "metric-samples-value", "metric_batch", validate_metric_batch)


@dataclass
class Result:
    system: str
    events: int
    seconds: float
    changelog_records: float
    peak_rss_mb: float
    #: Table writes when they differ from changelog records (None: one record per write).
    state_writes: float | None = None
    #: Event produced → visible in a query, (p50, p99) ms (None: the system has no query).
    latency_ms: tuple[float, float] | None = None
    #: Query loads run against the loaded worker.
    queries: list[QueryLoad] = field(default_factory=list)
    #: Tally: from the first count to the group's commit of every input offset, the wait for
    #: the commit timer included (run_tally; None for the others).
    committed_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def committed_rate(self) -> float | None:
        return None if self.committed_seconds is None else self.events / self.committed_seconds

    @property
    def records_per_event(self) -> float:
        return self.changelog_records / self.events

    @property
    def writes_per_event(self) -> float:
        writes = self.changelog_records if self.state_writes is None else self.state_writes
        return writes / self.events


#: Quix Streams reads a source topic's retention from the broker; the local broker describes
#: only the settings a topic was created with, so the peers' topics name theirs.
KEEP_ALL = {"retention.ms": "-1", "retention.bytes": "-1"}


async def produce(
    bootstrap: str, topic: str, messages: list[Message], configs: dict[str, str] | None = None
) -> None:
    await ensure_topics([bootstrap], [topic], partitions=PARTITIONS, replication=1, configs=configs)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 << 20,
    )
    await producer.start()
    try:
        for partition, key, value, ts, *headers in messages:
            await producer.send(
                topic,
                value,
                key=key,
                partition=partition,
                timestamp_ms=ts,
                headers=headers[0] if headers else None,
            )
        await producer.flush()
    finally:
        await producer.stop()


def on_workers_loop(work: Coroutine[Any, Any, T]) -> T:
    """`work` run on the event loop Tally's workers run on: the raw ceiling is measured on
    the loop Tally is (as the Faust peers are, `run_baseline`)."""
    if current_settings().event_loop == "uvloop":
        import uvloop

        return uvloop.run(work)
    return asyncio.run(work)


async def raw_ceiling(
    bootstrap: str,
    topic: str,
    events: int,
    label: str,
    codec: AvroCodec,
    events_in: Callable[[Any], int] = lambda _: 1,
) -> Result:
    """Consume and decode every message with no state: what any pipeline could reach.
    `events_in` says how many events a decoded message holds (an envelope: its samples)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, started = 0, time.monotonic()
        while seen < events:
            for records in (await consumer.getmany(timeout_ms=500, max_records=2000)).values():
                for record in records:
                    seen += events_in(codec.loads(record.value))
        return Result(label, seen, time.monotonic() - started, 0, 0)
    finally:
        await consumer.stop()


async def changelog_records(bootstrap: str, app_id: str) -> int:
    """Records written to the app's changelog topics (high watermarks read through a Fetch):
    Faust names them `<app id>-<table>-changelog`, Quix `changelog__<group>--...`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        topics = [
            t
            for t in await consumer.topics()
            if (t.startswith(app_id) and t.endswith("-changelog"))
            or t.startswith(f"changelog__{app_id}--")
        ]
        tps = [TP(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        listed = await consumer.end_offsets(tps)
        return sum((await fetched_high_watermarks(consumer._client, listed)).values())
    finally:
        await consumer.stop()


async def committed_to_end(
    bootstrap: str, group: str, topics: tuple[str, ...], deadline: float
) -> None:
    """Return once `group` has committed the end of every partition of `topics`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata for partitions_for_topic
        tps = [TP(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        ends = await fetched_high_watermarks(consumer._client, await consumer.end_offsets(tps))
        while time.monotonic() < deadline:
            committed = [await consumer.committed(tp) or 0 for tp in tps]
            if all(offset >= ends[tp] for offset, tp in zip(committed, tps, strict=True)):
                return
            await asyncio.sleep(0.1)
        raise SystemExit(f"group {group} did not commit the end of {', '.join(topics)}")
    finally:
        await consumer.stop()


def record_batches(raw: bytes | None) -> Iterator[Any]:
    """The record batches of one partition's Fetch answer (none for an empty one)."""
    fetched = MemoryRecords(raw) if raw else None
    while fetched is not None and (batch := fetched.next_batch()) is not None:
        yield batch


#: How long a Fetch that counts a changelog's batches may wait for the broker's answer.
CHANGELOG_READ_WAIT_MS = 10_000


async def changelog_batches(bootstrap: str, app_id: str) -> tuple[int, int]:
    """(records, record batches) in the app's changelog topics: a restore reads them a batch
    at a time, and the local broker's cost is per batch (see docs/performance.md)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    records = batches = 0
    try:
        client = consumer._client
        for topic in [t for t in await consumer.topics() if t.startswith(app_id)]:
            if not topic.endswith("-changelog"):
                continue
            for partition in consumer.partitions_for_topic(topic) or ():
                leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
                offset, end = 0, 1
                while offset < end:
                    request = FetchRequest(
                        # The local broker gives up on a Fetch once its wait has passed, and
                        # finding an offset takes it longer the more batches a partition
                        # holds (docs/operations.md): with 10 ms it read nothing of 20,000.
                        max_wait_time=CHANGELOG_READ_WAIT_MS,
                        min_bytes=0,
                        max_bytes=8 << 20,
                        isolation_level=0,
                        topics=[(topic, [(partition, offset, 8 << 20)])],
                    )
                    response = await client.send(leader, request)
                    [(_, [(_, _, end, *_, raw)])] = response.topics
                    before = offset
                    for batch in record_batches(raw):
                        batches += 1
                        records += batch.last_offset_delta + 1
                        offset = batch.next_offset
                    if offset == before and offset < end:
                        raise SystemExit(
                            f"{topic}[{partition}]: the broker returned nothing from offset "
                            f"{offset} (its end is {end}): the batches cannot be counted"
                        )
    finally:
        await consumer.stop()
    return records, batches


def caught_up(worker: Worker, timeout_s: float, behind: int = 0) -> int:
    """Wait until at most `behind` messages wait on the worker's inputs (its /api/health
    lag), for up to `timeout_s`: the messages still waiting (at most `behind`: caught up)."""
    deadline = time.monotonic() + timeout_s
    while (waiting := sum(worker.get("/api/health")["lag"].values())) > behind:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return waiting


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process and its descendants (a worker's offload process,
    runtime.offload) have used so far, those that ended and were waited for included
    (/proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = sum(int(tick) for tick in fields[11:15])
    family, used = [pid], 0
    while family:
        member = family.pop()
        used += ticks.get(member, 0)
        family.extend(child for child, parent in parents.items() if parent == member)
    return used / os.sysconf("SC_CLK_TCK")


def cpu_shares(pids: Mapping[str, int | None], run: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """What `run()` returns, and the share of a core each process (with its descendants) used
    while it ran."""
    known = {name: pid for name, pid in pids.items() if pid is not None}
    before, began = {name: cpu_seconds(pid) for name, pid in known.items()}, time.monotonic()
    result = run()
    elapsed = time.monotonic() - began
    return result, {
        name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in known.items()
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass(frozen=True)
class Pauses:
    """The worker's garbage collector pauses so far: full collections, and every generation's."""

    full: int
    full_s: float
    all_s: float
    over_100ms: int

    def since(self, before: Pauses) -> Pauses:
        return Pauses(
            self.full - before.full,
            self.full_s - before.full_s,
            self.all_s - before.all_s,
            self.over_100ms - before.over_100ms,
        )


def collector_pauses(worker: Worker) -> Pauses:
    """The worker's tally_gc_pause_seconds, summed up (from one scrape)."""
    full = full_s = all_s = short = total = 0.0
    for family in text_string_to_metric_families(worker.text("/metrics")):
        if family.name != "tally_gc_pause_seconds":
            continue
        for sample in family.samples:
            full_collection = sample.labels.get("generation") == "2"
            if sample.name.endswith("_count") and full_collection:
                full += sample.value
            elif sample.name.endswith("_sum"):
                all_s += sample.value
                full_s += sample.value if full_collection else 0
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 0.1:
                short += sample.value
            elif sample.name.endswith("_bucket") and sample.labels["le"] == "+Inf":
                total += sample.value
    return Pauses(int(full), full_s, all_s, int(total - short))


def scraped(worker: Worker, sample: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named `sample` the worker's /metrics shows now (the
    page restricted to it: the benches poll it ten times a second)."""
    text = worker.text(f"/metrics?{urlencode({'name[]': sample})}")
    return [
        (found.labels, found.value)
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == sample
    ]


def counted(worker: Worker, topic: str) -> int:
    """Events the worker has counted from `topic`, from its Prometheus counters."""
    return int(
        sum(
            value
            for labels, value in scraped(worker, "tally_events_total")
            if labels == {"topic": topic, "outcome": "counted"}
        )
    )


def write_out_seconds(worker: Worker) -> float:
    """Seconds the worker's write-outs of its cell cache (before commits or on their own)
    have taken so far."""
    return sum(value for _labels, value in scraped(worker, "tally_write_out_seconds_sum"))


def query_answers(worker: Worker) -> Counter[str]:
    """Query answers the worker has sent so far, by HTTP status."""
    answers = Counter[str]()
    for labels, value in scraped(worker, "tally_query_answers_total"):
        answers[labels["status"]] += int(value)
    return answers


#: The variant that writes table cells after every batch: the cell cache's baseline.
WRITE_THROUGH = "cells written every batch"
WRITE_THROUGH_SETTINGS = {"TALLY_CELL_CACHE_CELLS": "0"}


#: How often a long run says how far it is.
PROGRESS_EVERY_S = 30.0


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
    afterwards: Callable[[Worker, Result], None] = lambda _worker, _result: None,
    settings: Mapping[str, str] | None = None,
    counts: str | None = None,
    timeout_s: float = 600.0,
) -> Result:
    """One ready worker, then the input: the rate counts what is counted after the first
    observation (polled every 100 ms: scraping /metrics more often costs the worker), over the
    time from then until every event is counted from `topic` and from each downstream topic in
    `then` (later stages count the same events), plus the time the write-outs after that took
    until the group's commit of every input offset (`tally_write_out_seconds`: the cell cache
    written out before the commit or on its own): the table writes the cache put off are
    timed, the wait for the commit timer is not, as the peers' clocks stop at their last event
    with their own put-off writes (Quix's checkpoint) after it. A write-out under way when the
    last count is seen counts whole (a little against Tally). The time to the commit is kept
    beside (`committed_seconds`). `beside` is entered once the worker is ready and left after
    the count (e.g. clients); `afterwards` measures more on the loaded worker
    (latency, queries) once its peak RSS is read; `settings`: more of the worker's environment;
    `counts`: the topic whose counted events are timed, when not `topic` (a pipeline that
    re-keys its input first); `timeout_s`: how long everything may take to be counted.
    Changelog records are counted once the worker has stopped (its cell cache written out)."""
    app_id = f"bench{uuid.uuid4().hex[:8]}"
    worker = Worker(
        env={
            "TALLY_BROKER": broker.url,
            "TALLY_APP_ID": app_id,
            "TALLY_DATA_DIR": str(workdir / app_id),
            "TALLY_SCHEMA_REGISTRY": (workdir / "registry").resolve().as_uri(),
            "TALLY_PARTITIONS": str(PARTITIONS),
            "TALLY_STANDBY_REPLICAS": "0",
            **UNLIMITED,
            **(settings or {}),
        },
        log_path=workdir / f"{app_id}.log",
    )
    worker.start()
    timed = counts or topic
    then = (*then, timed) if counts else then
    try:
        with beside(worker):
            asyncio.run(produce(broker.bootstrap, topic, messages))
            first: tuple[float, int] | None = None
            deadline = time.monotonic() + timeout_s
            reported = time.monotonic()
            while time.monotonic() < deadline:
                done = counted(worker, timed)
                now = time.monotonic()
                if done and first is None:
                    first = (now, done)
                if now - reported >= PROGRESS_EVERY_S:  # a long backlog shows it is moving
                    print(f"  {label}: {done:,} of {total:,} counted", flush=True)
                    reported = now
                if done >= total and all(counted(worker, t) >= total for t in then):
                    break
                time.sleep(0.1)
            else:
                progress = ", ".join(f"{t}: {counted(worker, t)}" for t in (timed, *then))
                raise SystemExit(f"{label}: not all of {total} counted ({progress})")
            assert first is not None
            counted_at, flushed_before = time.monotonic(), write_out_seconds(worker)
            # Tally writes its cell cache out before each commit: once the group committed
            # every input offset, the write-outs since the last count hold what it put off.
            asyncio.run(committed_to_end(broker.bootstrap, app_id, (topic, *then), deadline))
            committed = time.monotonic() - first[0]
            flushed = write_out_seconds(worker) - flushed_before
            measured, elapsed = total - first[1], counted_at - first[0] + flushed
            print(
                f"  {label}: {measured:,} counted in {counted_at - first[0]:.2f} s, then "
                f"write-outs of {flushed:.2f} s; all committed {committed:.2f} s after the first",
                flush=True,
            )
            if measured < total // 2:
                raise SystemExit(f"{label}: the run was too short to time; raise --count")
        check(worker)
        rss = peak_rss_mb(worker.process.pid)  # type: ignore[union-attr]
        result = Result(label, measured, elapsed, 0, rss, committed_seconds=committed)
        afterwards(worker, result)
    finally:
        worker.stop()
    records = asyncio.run(changelog_records(broker.bootstrap, app_id))
    result.changelog_records = records * measured / total
    return result


#: Whether marker n is visible yet (polled back to back after it was sent).
Visible = Callable[[int], Awaitable[bool]]


async def _latencies(
    bootstrap: str, topic: str, markers: list[Message], visible: Visible, timeout_s: float
) -> tuple[float, float]:
    """Event produced → visible (p50, p99 ms): each marker sent on its own, acknowledged, then
    `visible` polled until it says so."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    found = []
    try:
        for n, (partition, key, value, ts, *_) in enumerate(markers):
            started = time.perf_counter()
            await producer.send_and_wait(
                topic, value, key=key, partition=partition, timestamp_ms=ts
            )
            while not await visible(n):
                if time.perf_counter() - started > timeout_s:
                    raise SystemExit(f"marker {n} not visible within {timeout_s} s")
            found.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()
    cuts = statistics.quantiles(found, n=100, method="inclusive")
    return median(found), cuts[98]


def latency_ms(
    bootstrap: str,
    topic: str,
    markers: list[Message],
    url_of: Callable[[int], str],
    shows: Callable[[int, Any], bool],
    timeout_s: float = 30.0,
) -> tuple[float, float]:
    """Event produced → visible in a query: the marker's query answers with it."""

    async def measure() -> tuple[float, float]:
        async with aiohttp.ClientSession(headers=bearer(ACCESS.operator_token)) as session:

            async def visible(n: int) -> bool:
                async with session.get(url_of(n)) as response:
                    body = await response.json() if response.status == 200 else None
                return body is not None and shows(n, body)

            return await _latencies(bootstrap, topic, markers, visible, timeout_s)

    return asyncio.run(measure())


def consumed_latency_ms(
    bootstrap: str, topic: str, markers: list[Message], timeout_s: float = 30.0
) -> tuple[float, float]:
    """Event produced → received by a plain aiokafka consumer that waits on a Fetch as long as
    the workers' do: the broker's own floor under any pipeline's latency."""

    async def measure() -> tuple[float, float]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, fetch_max_wait_ms=FETCH_MAX_WAIT_MS
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            wanted = {marker[2] for marker in markers}
            arrived: set[bytes] = set()

            async def visible(n: int) -> bool:
                for records in (await consumer.getmany(timeout_ms=5)).values():
                    arrived.update(r.value for r in records if r.value in wanted)
                return markers[n][2] in arrived

            return await _latencies(bootstrap, topic, markers, visible, timeout_s)
        finally:
            await consumer.stop()

    return asyncio.run(measure())


def ratio(results: dict[str, list[Result]], label: str, baseline: str) -> float:
    """The median of `label`'s rate over `baseline`'s, run by run (runs share a broker and an
    hour, so their ratio drifts less than either rate)."""
    pairs = zip(results[label], results[baseline], strict=True)
    return median(r.rate / b.rate for r, b in pairs)


def committed_ratio(results: dict[str, list[Result]], label: str, baseline: str) -> float | None:
    """`ratio` with `label` timed to its group's commit instead (results before 2026-12-06
    were timed so); None for a result without that timing."""
    pairs = zip(results[label], results[baseline], strict=True)
    ratios = [rate / b.rate for r, b in pairs if (rate := r.committed_rate) is not None]
    return median(ratios) if ratios and len(ratios) == len(results[label]) else None


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def report(workload: str, results: dict[str, list[Result]], unit: str, baselines: list[str]) -> str:
    """The workload's table (medians over the runs), each Tally result's run-by-run ratio to
    each baseline, and the query loads; printed, and returned as Markdown."""
    lines = [
        f"### {workload}",
        "",
        f"| system | {unit}/s (median) | runs | p50 / p99 ms produced→visible | peak RSS MB "
        "| state writes / event | changelog records / event |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, runs in results.items():
        rates = [r.rate for r in runs]
        latencies = [r.latency_ms for r in runs if r.latency_ms is not None]
        latency = (
            f"{_ms(median([p50 for p50, _ in latencies]))} / "
            f"{_ms(median([p99 for _, p99 in latencies]))}"
            if latencies
            else "—"
        )
        stateful = not label.startswith("raw")
        rss = f"{median([r.peak_rss_mb for r in runs]):,.0f}" if stateful else "—"
        writes = f"{median([r.writes_per_event for r in runs]):.3f}" if stateful else "0"
        records = f"{median([r.records_per_event for r in runs]):.3f}" if stateful else "0"
        spread = f"{len(runs)}: {min(rates):,.0f} to {max(rates):,.0f}"
        lines.append(
            f"| {label} | {median(rates):,.0f} | {spread} | {latency} | {rss} | {writes} "
            f"| {records} |"
        )
    lines.append("")
    for label in results:
        if not label.startswith("tally"):
            continue
        for baseline in baselines:
            if baseline == label:
                continue
            times = ratio(results, label, baseline)
            lines.append(f"- {label} / {baseline}: **{times:,.2f}x** (run by run, median)")
        to_commit = [rate for r in results[label] if (rate := r.committed_rate) is not None]
        if to_commit:
            against = ", ".join(
                f"{times:,.2f}x {baseline}"
                for baseline in baselines
                if (times := committed_ratio(results, label, baseline)) is not None
            )
            lines.append(
                f"- {label}, timed to the group's commit of every input offset instead (the "
                f"wait for the commit timer included, as before 2026-12-06): "
                f"{median(to_commit):,.0f} {unit}/s ({against})"
            )
    loads = [(label, q) for label, runs in results.items() for r in runs for q in r.queries]
    if loads:
        lines += [
            "",
            "| queried worker | clients | requests/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, clients in sorted({(label, q.connections) for label, q in loads}):
            same = [q for name, q in loads if name == label and q.connections == clients]
            lines.append(
                f"| {label} | {clients} | {median([q.requests_per_s for q in same]):,.0f} | "
                f"{_ms(median([q.p50_ms for q in same]))} | "
                f"{_ms(median([q.p99_ms for q in same]))} |"
            )
    text = "\n".join(lines) + "\n"
    print("\n" + text, flush=True)
    return text


def peer_arguments(
    parser: argparse.ArgumentParser, events: str, faust_count: int, quix_count: int
) -> argparse.ArgumentParser:
    """The options every peer comparison takes: how much each peer reads, and the runs."""
    parser.add_argument(
        "--faust-count", type=int, default=faust_count, help=f"{events} Faust's table reads"
    )
    parser.add_argument(
        "--quix-count", type=int, default=quix_count, help=f"{events} Quix's window reads"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each system; medians quoted")
    return parser


def run_baseline(
    argv: list[str], label: str, broker: LocalBroker, workdir: Path, expect: int, **env: str
) -> tuple[Result, object]:
    """A baseline process (`python -m <argv>`) over the same broker: it times itself from its
    first event, prints `BENCH done <n> <seconds>` after `expect` events and then
    `BENCH answer <json>` (bench.baseline). Returns its result and its answer."""
    app_id = f"benchpeer{uuid.uuid4().hex[:8]}"
    full_env = {
        **os.environ,
        "BENCH_APP_ID": app_id,
        "BENCH_BROKER": broker.url,
        "BENCH_DATA_DIR": str(workdir / app_id),
        "BENCH_EXPECT": str(expect),
        "FAUST_LOOP": current_settings().faust_loop,  # the loop Tally's workers run on
        **env,
    }
    log = workdir / f"{app_id}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *argv],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            done = re.search(r"BENCH done (\d+) ([0-9.]+)", text)
            answered = re.search(r"BENCH answer (.*)", text)
            if done and answered:
                break
            if process.poll() is not None:
                raise SystemExit(f"{label} exited early; see {log}")
            time.sleep(0.2)
        else:
            raise SystemExit(f"{label} did not finish; see {log}")
    finally:
        stop_process(process)
    reported = json.loads(answered.group(1))
    records = asyncio.run(changelog_records(broker.bootstrap, app_id))
    writes = reported["state_writes"]
    rss = reported["peak_rss_mb"]
    result = Result(label, expect, float(done.group(2)), records, rss, writes)
    return result, reported["answer"]


def run_in_scratch(
    parser: argparse.ArgumentParser,
    prefix: str,
    run: Callable[[argparse.Namespace, Path], None],
) -> None:
    """Parse the command line, then `run` with a scratch directory removed afterwards."""
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        run(args, Path(scratch))
