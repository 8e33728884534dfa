"""`/metrics` (Prometheus text format): Faust's own sensors, Tally's counters, and gauges read
at scrape time: consumer lag per source partition and table sizes per table.

Faust's `PrometheusMonitor` serves the page and counts messages, events, sends, commits,
rebalances and web requests (`faust_*`; not table reads and writes, see below);
`tally.telemetry` counts outcomes, rejects by rule and ingest (`tally_*`); the gauges
below are computed when scraped, so nothing runs per event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from faust.sensors.prometheus import PrometheusMonitor, setup_prometheus_sensors
from faust.types import CollectionT
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tally.app import app
from tally.runtime.faust_compat import monitor_metrics, open_partition_dbs
from tally.runtime.progress import consumer_lag


class PrometheusMonitorWithoutKeyCounts(PrometheusMonitor):
    """Faust's Prometheus sensors without its counters of table reads and writes: a labelled
    counter increment on every table get and set was ~5 % of a busy sales worker's time
    (py-spy); table sizes are exported at scrape time instead (`tally_table_*`)."""

    def on_table_get(self, table: CollectionT, key: Any) -> None:
        pass

    def on_table_set(self, table: CollectionT, key: Any, value: Any) -> None:
        pass

    def on_table_del(self, table: CollectionT, key: Any) -> None:
        pass


setup_prometheus_sensors(app, pattern="/metrics", name_prefix="faust")
# The metrics Faust just registered, kept; only the monitor that feeds them is swapped (the
# app adds its monitor to its sensors when it starts).
app.monitor = PrometheusMonitorWithoutKeyCounts(
    metrics=monitor_metrics(cast(PrometheusMonitor, app.monitor))
)


class WorkerGauges(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "tally_consumer_lag",
            "Messages waiting on a source partition this worker owns: its high watermark "
            "minus the next offset to process.",
            labels=["topic", "partition"],
        )
        for tp, waiting in consumer_lag().items():
            lag.add_metric([tp.topic, str(tp.partition)], waiting)
        yield lag
        keys = GaugeMetricFamily(
            "tally_table_keys",
            "Keys in a table's local RocksDB partitions (RocksDB's estimate), actives and "
            "standbys.",
            labels=["table"],
        )
        size = GaugeMetricFamily(
            "tally_table_bytes",
            "Bytes of a table's local RocksDB partitions: SST files plus memtables.",
            labels=["table"],
        )
        for name, table in sorted(app.tables.items()):
            counted = stored = 0
            for db in open_partition_dbs(table):
                counted += db.property_int_value("rocksdb.estimate-num-keys") or 0
                stored += db.property_int_value("rocksdb.total-sst-files-size") or 0
                stored += db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
            keys.add_metric([name], counted)
            size.add_metric([name], stored)
        yield keys
        yield size


REGISTRY.register(WorkerGauges())
