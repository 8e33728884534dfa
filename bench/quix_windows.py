"""The Quix Streams baselines: its own windows with RocksDB state, used straightforwardly.

    python -m bench.quix_windows sales     hopping_window(24 h, 1 h).sum() of quantity per item
    python -m bench.quix_windows metrics   tumbling_window(1 min).agg(min, max, sum, count) of
                                           one sample per message, per "<server>|<metric>" key

Run by bench/sales.py and bench/metrics.py with the BENCH_* variables (bench.baseline); the
same Avro messages, decoded with Tally's codec; windows by the record's Kafka timestamp (= the
event time). `.current()` emits every update, which the script keeps as the answer it reports
(the window at BENCH_WINDOW_START_MS, or the minutes of BENCH_KEY_PREFIXES). State writes are
counted at Quix's windowed transaction (`update_window`); changelog records are read from the
broker afterwards.
"""

from __future__ import annotations

import sys
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Max, Min, Sum
from quixstreams.models.serializers import Deserializer
from quixstreams.state.rocksdb.windowed.transaction import (
    WindowedRocksDBPartitionTransaction as WindowTransaction,
)

from bench.baseline import (
    APP_ID,
    BROKER,
    DATA_DIR,
    KEY_PREFIXES,
    TOPIC,
    WINDOW_START_MS,
    Timing,
    baseline_codec,
    report_answer,
    top_items,
)
from tally.codecs.avro import AvroCodec

HOUR_MS, DAY_MS, MINUTE_MS = 3_600_000, 86_400_000, 60_000
#: The purchases are out of order by up to ±10 minutes; Quix drops a record older than its
#: window's grace, so the grace covers that (every system counts every event).
GRACE_MS = 20 * MINUTE_MS


class AvroValue(Deserializer):
    def __init__(self, codec: AvroCodec) -> None:
        super().__init__()
        self.codec = codec

    def __call__(self, value: bytes, ctx: Any) -> Any:
        return self.codec.loads(value)


def count_state_writes() -> list[int]:
    """Counts Quix's window state updates (one per window an event lands in) in the list's
    one element."""
    writes = [0]
    update = WindowTransaction.update_window

    def counted(transaction: WindowTransaction, *args: Any, **kwargs: Any) -> Any:
        writes[0] += 1
        return update(transaction, *args, **kwargs)

    WindowTransaction.update_window = counted  # type: ignore[method-assign]
    return writes


def main() -> None:
    job = sys.argv[1]
    writes = count_state_writes()
    timing = Timing()
    app = Application(
        broker_address=BROKER.split("://", 1)[-1],
        consumer_group=APP_ID,
        auto_offset_reset="earliest",
        state_dir=f"{DATA_DIR}/quix-state",
        loglevel="WARNING",
    )
    outputs: dict[tuple[str, int], Any] = {}

    def count_input(_: Any) -> None:
        timing.count()

    def keep(value: dict[str, Any], key: bytes, _timestamp: int, _headers: Any) -> None:
        outputs[(key.decode(), value["start"])] = value
        if timing.done():
            app.stop()

    if job == "sales":
        codec = baseline_codec("purchases-value", "purchase")
        sdf = app.dataframe(app.topic(TOPIC, value_deserializer=AvroValue(codec)))
        sdf = sdf.update(count_input).apply(lambda purchase: purchase["quantity"])
        sdf = sdf.hopping_window(DAY_MS, HOUR_MS, grace_ms=GRACE_MS).sum().current()
    else:
        codec = baseline_codec("metric-samples-value", "metric_batch")
        sdf = app.dataframe(app.topic(TOPIC, value_deserializer=AvroValue(codec)))
        sdf = sdf.update(count_input).apply(lambda batch: batch["samples"][0]["value"])
        sdf = (
            sdf.tumbling_window(MINUTE_MS, grace_ms=GRACE_MS)
            .agg(min=Min(), max=Max(), sum=Sum(), count=Count())
            .current()
        )
    sdf.update(keep, metadata=True)
    app.run(sdf)
    if job == "sales":
        answer: object = top_items(
            {key: out["value"] for (key, start), out in outputs.items() if start == WINDOW_START_MS}
        )
    else:
        answer = {
            f"{key}|{start}": [out["min"], out["max"], out["sum"], out["count"]]
            for (key, start), out in outputs.items()
            if key.startswith(KEY_PREFIXES)
        }
    report_answer(answer, writes[0])


if __name__ == "__main__":
    main()
