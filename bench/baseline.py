"""What the plain-Faust baselines share: the app, Tally's codec, and the timing line."""

from __future__ import annotations

import os
import time
from pathlib import Path

import faust

from tally.codecs.avro import AvroCodec, load_schema
from tally.codecs.registry import FileSchemaRegistry

EXPECT = int(os.environ["BENCH_EXPECT"])


def baseline_app() -> faust.App:
    """A Faust app configured from BENCH_* variables, as bench.common.run_faust_baseline sets."""
    return faust.App(
        os.environ["BENCH_APP_ID"],
        broker=os.environ["BENCH_BROKER"],
        store="rocksdb://",
        datadir=os.environ["BENCH_DATA_DIR"],
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "4")),
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
    )


def baseline_codec(subject: str, schema: str) -> AvroCodec:
    registry = FileSchemaRegistry(Path(os.environ["BENCH_DATA_DIR"]) / "registry")
    return AvroCodec(registry, subject, load_schema(schema))


class Timing:
    """Counts events; prints `BENCH done <n> <seconds>` once `EXPECT` are done, then says stop
    (so the changelog holds exactly EXPECT events' writes)."""

    def __init__(self) -> None:
        self.seen = 0
        self.started = 0.0

    def done(self) -> bool:
        return self.seen >= EXPECT

    def count(self) -> None:
        if not self.seen:
            self.started = time.monotonic()
        self.seen += 1
        if self.seen == EXPECT:
            print(f"BENCH done {EXPECT} {time.monotonic() - self.started:.4f}", flush=True)
