"""The Prometheus monitor that counts per message in plain numbers and publishes when scraped:
the page must show what Faust's own monitor would have counted."""

from __future__ import annotations

import gc
from collections import Counter
from typing import Any

import pytest
from faust.sensors.prometheus import FaustMetrics
from faust.types import TP
from prometheus_client import REGISTRY, CollectorRegistry

from tally.web import prometheus
from tally.web.prometheus import PrometheusMonitorFedWhenScraped


class FakeStream:
    """What the monitor reads of a stream: its label and the task that owns it."""

    shortlabel = "Stream: Topic: purchases"

    def __init__(self, name: str = "stream") -> None:
        self.name = name
        self.task_owner = self  # any object a weak reference can point at

    def __str__(self) -> str:
        return self.name


class FakeMessage:
    time_in: float | None = None
    time_out: float | None = None
    time_total: float | None = None


def consumed(monitor: PrometheusMonitorFedWhenScraped, stream: FakeStream, tp: TP, n: int) -> None:
    """`n` messages of `tp` through the hooks Faust calls, each one event of `stream`."""
    for offset in range(n):
        message: Any = FakeMessage()
        monitor.on_message_in(tp, offset, message)
        state = monitor.on_stream_event_in(tp, offset, stream, message)  # type: ignore[arg-type]
        monitor.on_stream_event_out(tp, offset, stream, message, state)  # type: ignore[arg-type]
        monitor.on_message_out(tp, offset, message)


def test_counts_reach_the_page_when_published_and_grow_by_what_came_since() -> None:
    registry = CollectorRegistry()
    monitor = PrometheusMonitorFedWhenScraped(FaustMetrics.create(registry, "t"))
    stream, purchases, ticks = FakeStream(), TP("purchases", 1), TP("ticks", 0)
    consumed(monitor, stream, purchases, 3)
    monitor.track_tp_end_offset(purchases, 7)
    assert registry.get_sample_value("t_messages_received_total") == 0  # not yet published

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    monitor.publish()
    assert value("t_messages_received_total") == 3
    assert value("t_messages_received_per_topic_total", topic="purchases") == 3
    assert value("t_messages_received_per_topics_partition", topic="purchases", partition="1") == 2
    assert value("t_total_events_total") == 3
    assert value("t_topic_partition_end_offset", topic="purchases", partition="1") == 7
    assert value("t_active_messages") == value("t_total_active_events") == 0
    per_stream = "t_total_events_per_stream_total"
    assert value(per_stream, stream="stream.topic_purchases.events") == 3

    consumed(monitor, stream, purchases, 2)
    consumed(monitor, stream, ticks, 4)
    monitor.on_message_in(ticks, 4, FakeMessage())  # type: ignore[arg-type]  # still in flight
    monitor.publish()
    monitor.publish()  # a second scrape adds nothing
    assert value("t_messages_received_total") == 10
    assert value("t_messages_received_per_topic_total", topic="purchases") == 5
    assert value("t_messages_received_per_topic_total", topic="ticks") == 5
    assert value("t_active_messages") == 1
    assert value("t_total_events_total") == 9
    assert value(per_stream, stream="stream.topic_purchases.events") == 9

    # A stream that goes (Faust's lookup holds streams weakly) after a scrape saw it still
    # has the events it took since then counted.
    going = FakeStream("going")
    consumed(monitor, going, purchases, 2)
    monitor.publish()
    consumed(monitor, going, purchases, 3)
    del going
    gc.collect()
    monitor.publish()
    assert value(per_stream, stream="stream.topic_purchases.events") == 14


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.status = status


def test_web_answers_reach_the_page_by_status_when_published() -> None:
    registry = CollectorRegistry()
    monitor = PrometheusMonitorFedWhenScraped(FaustMetrics.create(registry, "t"))

    def answered(*statuses: int | None) -> None:
        """Requests through the hooks Faust's views call (None: the view raised)."""
        for status in statuses:
            state = monitor.on_web_request_start(None, None)  # type: ignore[arg-type]
            response: Any = None if status is None else FakeResponse(status)
            monitor.on_web_request_end(None, None, response, state)  # type: ignore[arg-type]

    def count(status: str) -> float | None:
        return registry.get_sample_value("t_http_status_codes_total", {"status_code": status})

    answered(200, 200, 304, None)
    assert count("200") is None  # not yet published
    monitor.publish()
    monitor.publish()  # a second scrape adds nothing
    assert (count("200"), count("304"), count("500")) == (2, 1, 1)
    answered(200, 503)
    monitor.publish()
    assert (count("200"), count("503")) == (3, 1)


def test_query_answers_reach_the_page_when_published(monkeypatch: pytest.MonkeyPatch) -> None:
    query_answers: Counter[tuple[str, int]] = Counter()  # none counted by earlier tests
    monkeypatch.setattr(prometheus, "query_answers", query_answers)
    monitor = PrometheusMonitorFedWhenScraped(FaustMetrics.create(CollectorRegistry(), "t"))

    def count(pipeline: str, status: str) -> float:
        sample = "tally_query_answers_total"
        labels = {"pipeline": pipeline, "status": status}
        return REGISTRY.get_sample_value(sample, labels) or 0.0

    before = count("sales", "200"), count("sales", "304"), count("metrics", "200")
    query_answers[("sales", 200)] += 3
    query_answers[("sales", 304)] += 1
    assert count("sales", "200") == before[0]  # not yet published
    monitor.publish()
    monitor.publish()  # a second scrape adds nothing
    query_answers[("metrics", 200)] += 2
    monitor.publish()
    after = count("sales", "200"), count("sales", "304"), count("metrics", "200")
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1, 2]
