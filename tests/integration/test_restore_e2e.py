"""Rebuilding tables from their changelogs through the real broker: the bulk reader on its own,
and workers that start with empty tables (bulk restore, and Faust's own as the fallback)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tally.runtime.restore import RestoreProgress, read_spans, stop_quietly
from tests.conftest import WorkerFactory
from tests.harness import produce, wait_until
from tests.integration.test_metrics_e2e import iso

MINUTE = 60_000
#: Whole minutes, two days back from now: inside the metrics' hot retention.
T0 = (int(time.time() * 1000) - 48 * 3_600_000) // MINUTE * MINUTE


async def read(
    bootstrap: str, spans: dict[TP, tuple[int, int]], deadline_s: float
) -> tuple[dict[int, list[int]], RestoreProgress]:
    applied: dict[int, list[int]] = {}

    def apply(tp: TP, records: Sequence[ConsumerRecord]) -> None:
        applied.setdefault(tp.partition, []).extend(r.offset for r in records)

    progress = RestoreProgress(sum(max(b - a + 1, 0) for a, b in spans.values()))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await read_spans(consumer, spans, apply, progress, time.monotonic() + deadline_s)
    finally:
        await stop_quietly(consumer)  # aiokafka's stop right after assign raises CancelledError
    return applied, progress


def test_the_bulk_reader_hands_over_exactly_each_span_in_order(broker: LocalBroker) -> None:
    produce(broker.bootstrap, "spans", [(None, b"%d" % n, 0) for n in range(30_000)])
    produce(broker.bootstrap, "spans", [(None, b"%d" % n, 1) for n in range(5)])
    produce(broker.bootstrap, "spans", [(None, b"x", 2)])
    spans = {TP("spans", 0): (100, 24_000), TP("spans", 1): (0, 4), TP("spans", 2): (1, 0)}

    applied, progress = asyncio.run(read(broker.bootstrap, spans, 60))

    assert applied == {0: list(range(100, 24_001)), 1: list(range(5))}
    assert progress.done == progress.total == 23_906
    # A deadline already passed: nothing is read, and the caller's fallback reads it all.
    applied, progress = asyncio.run(read(broker.bootstrap, spans, -1))
    assert applied == {} and progress.done == 0


def samples(servers: int, minutes: int) -> list[tuple[str, int, float]]:
    rng = random.Random(11)
    return [
        (f"srv-{s:03d}", T0 + m * MINUTE, round(rng.uniform(0, 100), 2))
        for m in range(minutes)
        for s in range(servers)
    ]


def envelope(codec: AvroCodec, server: str, ts: int, value: float) -> tuple[bytes, bytes]:
    """One server's sample of a minute (in minute order, none is late)."""
    samples = [{"metric_id": "cpu", "ts_ms": ts, "value": value}]
    return server.encode(), codec.dumps({"server_id": server, "sent_at_ms": ts, "samples": samples})


def series(worker, server: str) -> list[tuple[str, float, float, int]]:  # type: ignore[no-untyped-def]
    window = f"from={iso(T0)}&to={iso(T0 + 3 * 3_600_000)}"
    points = worker.get(f"/api/servers/{server}/metrics?{window}")["metrics"].get("cpu", [])
    return [(p["t"], p["min"], p["max"], p["count"]) for p in points]


def test_a_worker_with_empty_tables_restores_them_in_bulk_and_answers_the_same(
    broker: LocalBroker, make_worker: WorkerFactory, metric_batch_codec: AvroCodec
) -> None:
    data = samples(servers=120, minutes=100)  # 12,000 (server, minute) records, and the index
    produce(broker.bootstrap, "metric-samples", [envelope(metric_batch_codec, *s) for s in data])
    checked = ["srv-000", "srv-057", "srv-119"]
    truth = {
        server: [(iso(ts), value, value, 1) for s, ts, value in data if s == server]
        for server in checked
    }
    answers = lambda worker: {s: series(worker, s) for s in checked}  # noqa: E731

    # Without the archive sink: its partial batch (up to a minute) would hold the stop back.
    pipelines = {"TALLY_PIPELINES": "sales,metrics"}
    first = make_worker("w1", **pipelines).start()
    wait_until(lambda: answers(first) == truth, 90, what="the samples folded")
    assert first.stop() == 0

    # A new worker of the same app (its own, empty data dir) takes every partition over.
    second = make_worker("w2", **pipelines).start()
    bulk = second.get("/api/health")["recovery"]["bulk_restore"]
    assert bulk["running"] is False
    assert bulk["records_restored"] == bulk["records_to_restore"] >= 12_000
    assert answers(second) == truth
    assert "restoring tables from changelogs" in second.log()
    # It goes on folding new samples into the restored tables.
    next_minute = T0 + 100 * MINUTE
    produce(
        broker.bootstrap,
        "metric-samples",
        [envelope(metric_batch_codec, "srv-000", next_minute, 1.5)],
    )
    truth["srv-000"].append((iso(next_minute), 1.5, 1.5, 1))
    wait_until(lambda: answers(second) == truth, 60, what="a sample after the restore")
    assert second.stop() == 0

    # Faust's own recovery, the fallback, restores the same tables.
    third = make_worker("w3", TALLY_RESTORE="faust", **pipelines).start()
    assert third.get("/api/health")["recovery"]["bulk_restore"] is None
    assert answers(third) == truth
