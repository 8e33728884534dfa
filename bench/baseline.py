"""What the baseline processes (Faust's and Quix Streams' own windows) share: settings from the
BENCH_* variables `bench.common.run_baseline` sets, Tally's Avro codec (the same decoding for
every system), and the lines they report with:

    BENCH done <events> <seconds>      timed from the first event to the last
    BENCH answer <json>                {"answer", "state_writes" (or null), "peak_rss_mb"}
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from tally.codecs.avro import AvroCodec, load_schema
from tally.codecs.registry import FileSchemaRegistry
from tally.core.topk import rank_key

EXPECT = int(os.environ.get("BENCH_EXPECT", "0"))
APP_ID = os.environ.get("BENCH_APP_ID", "bench")
BROKER = os.environ.get("BENCH_BROKER", "tansu://127.0.0.1:9092")
DATA_DIR = os.environ.get("BENCH_DATA_DIR", "bench-data")
TOPIC = os.environ.get("BENCH_TOPIC", "")
#: The window whose answer a hopping/tumbling baseline reports (epoch ms of its start).
WINDOW_START_MS = int(os.environ.get("BENCH_WINDOW_START_MS", "0"))
#: Keys whose rollups a tumbling baseline reports (a prefix of "<server>|<metric>").
KEY_PREFIXES = tuple(p for p in os.environ.get("BENCH_KEY_PREFIXES", "").split(",") if p)


def baseline_codec(subject: str, schema: str) -> AvroCodec:
    registry = FileSchemaRegistry(Path(DATA_DIR) / "registry")
    return AvroCodec(registry, subject, load_schema(schema))


class Timing:
    """Counts events; prints the done line once `EXPECT` are done (the process stops taking
    events then, so its changelog holds exactly EXPECT events' writes)."""

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


def report_answer(answer: object, state_writes: int | None = None) -> None:
    """The answer, state writes if counted, and this process's peak RSS (it may exit before
    the benchmark can read /proc; getrusage would report the forking parent's peak)."""
    status = Path("/proc/self/status").read_text()
    peak_rss_mb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    reported = {"answer": answer, "state_writes": state_writes, "peak_rss_mb": peak_rss_mb}
    print("BENCH answer " + json.dumps(reported), flush=True)


def top_items(totals: dict[str, int], k: int = 10) -> list[list[object]]:
    """Quantity descending, then item id: the order Tally's top-K uses."""
    return [[item, qty] for item, qty in sorted(totals.items(), key=rank_key)[:k]]
