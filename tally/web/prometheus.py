"""`/metrics` (Prometheus text format): Faust's own sensors, Tally's counters, and gauges read
at scrape time: consumer lag per source partition and table sizes per table.

Faust's `PrometheusMonitor` metrics count messages, events, sends, commits, rebalances and web
requests by status (`faust_*`; not table reads and writes, nor the latency of web requests;
the message, event and request counts are moved into them when scraped, see below);
`tally.telemetry` counts outcomes, rejects by rule and ingest (`tally_*`); the gauges below are
computed when scraped, so nothing runs per event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator
from http import HTTPStatus
from typing import Any, cast

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import AppT, CollectionT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tally.app import app
from tally.runtime.faust_compat import open_partition_dbs
from tally.runtime.progress import consumer_lag
from tally.telemetry import QUERY_ANSWERS, query_answers


class PrometheusMonitorFedWhenScraped(PrometheusMonitor):
    """Faust's Prometheus sensors, with what they count per message and per event kept as
    plain numbers (Faust's base `Monitor`) and moved into the Prometheus metrics when the page
    is scraped (`publish`): the labelled updates on every message, record and event were ~15 %
    of a single-purchase worker (py-spy, `bench.profile_sales`). The page shows the same counters
    and gauges. Web requests are counted the same way (their labelled updates were ~3 % of a
    worker answering the top-10). Not kept: counts of table reads and writes (~5 % more;
    table sizes are exported at scrape time instead, `tally_table_*`), the per-event runtime
    histogram, which is not on the page (Tally's agents take events in batches: an event's
    time in the stream is not its processing time), and the web latency histogram (Faust
    observes the time since a request ended, ~0 ms, not how long it took)."""

    on_message_in = Monitor.on_message_in
    on_stream_event_in = Monitor.on_stream_event_in
    on_stream_event_out = Monitor.on_stream_event_out
    on_message_out = Monitor.on_message_out
    track_tp_end_offset = Monitor.track_tp_end_offset  # called for every record fetched

    def on_web_request_start(
        self, app: AppT, request: Request, *, view: View | None = None
    ) -> dict[str, Any]:
        return {}  # (no latency kept)

    def on_web_request_end(
        self,
        app: AppT,
        request: Request,
        response: Response | None,
        state: dict[str, Any],
        *,
        view: View | None = None,
    ) -> None:
        # Faust's made an HTTPStatus and kept the latency too: ~3 % of the top-10 answered.
        status = response.status if response is not None else 500
        self.http_response_codes[cast(HTTPStatus, status)] += 1  # (equal keys; publish: int())

    def __init__(self, metrics: FaustMetrics) -> None:
        super().__init__(metrics=metrics)
        #: What each counter held at the last scrape (the counters only grow).
        self.published: Counter[Hashable] = Counter()
        #: Each stream's label, kept once seen (Faust's lookup of streams holds them weakly).
        self.stream_labels: dict[str, str] = {}

    def on_table_get(self, table: CollectionT, key: Any) -> None:
        pass

    def on_table_set(self, table: CollectionT, key: Any, value: Any) -> None:
        pass

    def on_table_del(self, table: CollectionT, key: Any) -> None:
        pass

    def take_growth(self, counter: Hashable, total: int) -> int:
        """How much `counter` grew since the last scrape (now `total`); recorded as published."""
        grown = total - self.published[counter]
        self.published[counter] = total
        return grown

    def publish(self) -> None:
        """The counts since the last scrape, into the Prometheus metrics."""
        metrics = self._metrics
        metrics.messages_received.inc(self.take_growth("messages", self.messages_received_total))
        metrics.active_messages.set(self.messages_active)
        for topic, received in list(self.messages_received_by_topic.items()):
            metrics.messages_received_per_topics.labels(topic=topic).inc(
                self.take_growth(("topic", topic), received)
            )
        for tp, offset in list(self.tp_read_offsets.items()):
            metrics.messages_received_per_topics_partition.labels(
                topic=tp.topic, partition=tp.partition
            ).set(offset)
        for tp, offset in list(self.tp_end_offsets.items()):
            metrics.topic_partition_end_offset.labels(topic=tp.topic, partition=tp.partition).set(
                offset
            )
        for status, answered in list(self.http_response_codes.items()):
            metrics.http_status_codes.labels(status_code=int(status)).inc(
                self.take_growth(("http", status), answered)
            )
        for (pipeline, code), answered in list(query_answers.items()):
            QUERY_ANSWERS.labels(pipeline, str(code)).inc(
                self.take_growth(("answers", pipeline, code), answered)
            )
        metrics.total_events.inc(self.take_growth("events", self.events_total))
        metrics.total_active_events.set(self.events_active)
        for stream, name in list(self.stream_lookup.items()):
            self.stream_labels[name] = f"stream.{self._stream_label(stream)}.events"
        for name, events in list(self.events_by_stream.items()):
            label = self.stream_labels.get(name)
            if label is not None:  # else a stream that came and went between two scrapes
                metrics.total_events_per_stream.labels(stream=label).inc(
                    self.take_growth(("stream", name), events)
                )


faust_metrics = FaustMetrics.create(REGISTRY, "faust")
for unfed in (faust_metrics.events_runtime_latency, faust_metrics.http_latency):
    REGISTRY.unregister(unfed)  # (the monitor's docstring)
# The app adds its monitor to its sensors when it starts.
app.monitor = monitor = PrometheusMonitorFedWhenScraped(faust_metrics)


@app.page("/metrics")
class Metrics(View):
    """The Prometheus page: what Faust's sensors counted since the last scrape is moved into
    their metrics first. `?name[]=<sample>` (repeatable) restricts it to those samples, as
    prometheus_client's own exposition does: a client polling one counter (the benches, ten
    times a second) then costs the worker that counter, not every table's RocksDB
    statistics."""

    async def get(self, request: Request) -> Response:
        monitor.publish()
        names = [value for key, value in request.query.items() if key == "name[]"]
        registry = REGISTRY.restricted_registry(names) if names else REGISTRY
        # the type names a charset, which aiohttp takes only as a header
        return self.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


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
