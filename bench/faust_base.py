"""The plain-Faust baselines' app, configured from the BENCH_* variables."""

from __future__ import annotations

import faust

from bench.baseline import APP_ID, BROKER, DATA_DIR


def baseline_app() -> faust.App:
    return faust.App(
        APP_ID,
        broker=BROKER,
        store="rocksdb://",
        datadir=DATA_DIR,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=4,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
    )
